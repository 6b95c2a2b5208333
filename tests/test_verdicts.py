"""The verdict rules on synthetic study results: supported, refuted, no difference, partly supported."""

import math

import pytest

from cifar_mlp import verdicts
from cifar_mlp.verdicts import PARTLY, REFUTED, SUPPORTED, UNTESTABLE, Run


def history(val_losses, val_accs=None, **columns) -> list[dict]:
    val_accs = val_accs or [0.5] * len(val_losses)
    return [{"epoch": i + 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": loss, "val_acc": acc, "lr": 1e-3,
             "epoch_time_s": 1.0, "samples_per_s": 1.0, **{k: v[i] for k, v in columns.items()}}
            for i, (loss, acc) in enumerate(zip(val_losses, val_accs, strict=True))]


def runs(point, test_accs, val_accs=None, hist=None, robustness=None, metrics=None, seconds=10.0) -> list[Run]:
    val_accs = val_accs or test_accs
    return [Run(point, seed, val, test, seconds, hist or history([1.0]), metrics or {}, robustness)
            for seed, (test, val) in enumerate(zip(test_accs, val_accs, strict=True))]


def test_compare_uses_two_standard_errors_and_a_fallback_spread_for_single_runs():
    c = verdicts.compare([0.60, 0.62, 0.61], [0.50, 0.51, 0.49])
    assert c.diff == pytest.approx(0.11)
    assert c.se == pytest.approx(math.sqrt(0.01 ** 2 / 3 + 0.01 ** 2 / 3))
    assert c.outcome == "higher"
    assert verdicts.compare([0.50, 0.51, 0.49], [0.60, 0.62, 0.61]).outcome == "lower"
    single = verdicts.compare([0.60], [0.595])
    assert single.se == pytest.approx(math.sqrt(2) * verdicts.FALLBACK_STD)
    assert single.outcome == "no difference"
    assert verdicts.compare([0.60], [0.58]).outcome == "higher"  # 2 points > 2 x 0.71 points
    assert c.text() == "+11.0 ± 0.8 points (higher)"
    assert verdicts.Comparison(-0.0004, 0.003).text() == "+0.0 ± 0.3 points (no difference)"


def test_combine_ignores_untestable_parts():
    assert verdicts.combine([SUPPORTED, SUPPORTED, UNTESTABLE]) == SUPPORTED
    assert verdicts.combine([REFUTED, REFUTED]) == REFUTED
    assert verdicts.combine([SUPPORTED, REFUTED]) == PARTLY
    assert verdicts.combine([UNTESTABLE]) == UNTESTABLE


def test_claim_1_cnn_better_than_every_mlp_is_supported_equal_is_refuted():
    mlps = {"seed": runs("seed", [0.40, 0.41, 0.40]), "fast": runs("fast", [0.65, 0.66, 0.65])}
    assert verdicts.claim_mlp_vs_cnn({**mlps, "cnn": runs("cnn", [0.89, 0.90, 0.89])}).verdict == SUPPORTED
    assert verdicts.claim_mlp_vs_cnn({**mlps, "cnn": runs("cnn", [0.655, 0.65, 0.66])}).verdict == PARTLY
    assert verdicts.claim_mlp_vs_cnn({"fast": mlps["fast"], "cnn": runs("cnn", [0.655])}).verdict == REFUTED
    assert verdicts.claim_mlp_vs_cnn(mlps).verdict == UNTESTABLE


def depth_runs(acc, ratio=1.0, depth=8):
    norms = {f"grad_norm_{i}": [1.0] for i in range(1, depth + 2)}
    norms["grad_norm_2"] = [ratio]
    return runs("x", [acc, acc + 0.002], hist=history([1.0], **norms))


def test_claim_2_deeper_better_refutes_and_a_vanishing_gradient_supports_the_explanation():
    shallow = {"blocks-d3": depth_runs(0.50, depth=3)}
    better = verdicts.claim_depth({**shallow, "blocks-d8": depth_runs(0.55, ratio=0.01)})
    assert [p.verdict for p in better.parts] == [REFUTED, SUPPORTED]
    worse = verdicts.claim_depth({**shallow, "blocks-d8": depth_runs(0.45, ratio=0.5)})
    assert [p.verdict for p in worse.parts] == [SUPPORTED, REFUTED]
    same = verdicts.claim_depth({**shallow, "blocks-d8": depth_runs(0.501, ratio=0.05)})
    assert same.verdict == SUPPORTED
    assert "0.05 times" in same.parts[1].text


def lr_runs(accs):
    return runs("lr", [accs[-1]], hist=history([1.0] * len(accs), accs))


def test_claim_3_a_learning_rate_that_beats_more_epochs_refutes():
    slow = lr_runs([0.1 + 0.001 * e for e in range(1, 161)])  # 0.26 at 160 epochs
    refuted = verdicts.claim_epochs({"lr-1e-6": slow, "lr-1e-3": lr_runs([0.5] * 20)}, {})
    assert [p.verdict for p in refuted.parts] == [SUPPORTED, REFUTED]
    assert "lr 0.001 after 1 epochs" in refuted.parts[1].text
    supported = verdicts.claim_epochs({"lr-1e-6": slow, "lr-1e-3": lr_runs([0.2] * 20)}, {})
    assert supported.verdict == SUPPORTED
    table = supported.tables[0][2]
    assert table[0][0] == "1e-06" and table[0][1] == "11.0"  # 10 epochs: 0.1 + 0.01


def test_claim_3_ablation_a_step_with_a_gain_refutes():
    flat = {"seed": runs("seed", [0.40, 0.41]), "optimiser": runs("optimiser", [0.405, 0.40])}
    assert verdicts.claim_epochs({}, flat).verdict == SUPPORTED
    gained = {**flat, "width": runs("width", [0.45, 0.46])}
    finding = verdicts.claim_epochs({}, gained)
    assert finding.verdict == REFUTED and "width add" in finding.parts[0].text


def test_claim_4_overfitting_onset_from_the_validation_loss():
    falling = runs("seed", [0.4], hist=history([2 - 0.01 * e for e in range(80)]))
    never = runs("lr-1e-6", [0.5], hist=history([2 - 0.001 * e for e in range(640)]))
    late = runs("lr-1e-6", [0.5], hist=history([2 - 0.001 * e for e in range(300)] + [1.8] * 340))
    early = runs("lr-1e-6", [0.5], hist=history([2 - 0.01 * e for e in range(50)] + [2.0] * 590))
    assert verdicts.claim_overfitting(falling, never).verdict == SUPPORTED
    partly = verdicts.claim_overfitting(falling, late)
    assert partly.parts[1].verdict == PARTLY and "from epoch 300" in partly.parts[1].text
    assert verdicts.claim_overfitting(falling, early).parts[1].verdict == REFUTED
    rising = runs("seed", [0.4], hist=history([2 - 0.01 * e for e in range(40)] + [2.0] * 40))
    assert verdicts.claim_overfitting(rising, []).verdict == REFUTED


def robust(clean, rotated):
    return {"transforms": [{"transform": "rotation", "strength": s, "accuracy": a}
                           for s, a in zip((0, 15, 30), (clean, *rotated), strict=True)], "summary": {}}


def test_claim_5_the_cnn_keeping_more_under_rotation_supports():
    seed = runs("seed", [0.40], robustness=robust(0.40, (0.30, 0.20)))
    cnn = runs("cnn-noaug", [0.80], robustness=robust(0.80, (0.75, 0.70)))
    finding = verdicts.claim_robustness({"seed": seed, "cnn-noaug": cnn})
    assert finding.verdict == SUPPORTED
    fragile = runs("cnn-noaug", [0.80], robustness=robust(0.80, (0.40, 0.20)))
    assert [p.verdict for p in verdicts.claim_robustness({"seed": seed, "cnn-noaug": fragile}).parts] == [
        SUPPORTED, REFUTED]
    assert verdicts.retained(seed[0]) == pytest.approx((0.75 + 0.5) / 2)
    noisy = {"transform": "gaussian_noise", "strength": 0.1, "accuracy": 0.08}  # the CNN collapses under noise
    cnn[0].robustness["transforms"] += [{**noisy, "strength": 0, "accuracy": 0.80}, noisy]
    seed[0].robustness["transforms"] += [{**noisy, "strength": 0, "accuracy": 0.40}, {**noisy, "accuracy": 0.38}]
    both = verdicts.claim_robustness({"seed": seed, "cnn-noaug": cnn})
    assert [p.verdict for p in both.parts] == [SUPPORTED, SUPPORTED, REFUTED] and both.verdict == PARTLY
    assert verdicts.retained(cnn[0]) == pytest.approx(((0.75 + 0.70) / 1.6 + 0.1) / 2)


def test_claim_6_compares_the_seeds_figures():
    def metrics(acc, recalls, f1s, precisions):
        return {"splits": {"test": {"accuracy": acc, "per_class": {
            str(i): {"recall": r, "f1-score": f, "precision": p}
            for i, (r, f, p) in enumerate(zip(recalls, f1s, precisions, strict=True))}}}}

    like_seed = runs("seed", [0.5], metrics=metrics(0.51, [0.33, 0.64], [0.37, 0.62], [0.5, 0.6]))
    assert verdicts.claim_figures(like_seed).verdict == SUPPORTED
    weaker = runs("seed", [0.4], metrics=metrics(0.40, [0.20, 0.60], [0.25, 0.55], [0.5, 0.7]))
    assert verdicts.claim_figures(weaker).verdict == REFUTED

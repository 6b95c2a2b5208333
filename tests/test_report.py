import base64
import json
import re
import shutil
import subprocess

import pytest

from cifar_mlp import UserError, config
from cifar_mlp.report import (
    augmentations,
    compare,
    diagnose,
    input_map,
    preprocessing,
    pretraining_sentence,
    write_report,
)
from cifar_mlp.rundir import read_history


def history(val_losses, train_losses=None):
    train_losses = train_losses or [v - 0.1 for v in val_losses]
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v, "train_acc": 0.5, "val_acc": 0.45}
            for i, (t, v) in enumerate(zip(train_losses, val_losses, strict=True))]


def test_rising_validation_loss_is_overfitting():
    val = [2.0 - 0.1 * i for i in range(10)] + [1.1 + 0.05 * i for i in range(10)]
    train = [2.0 - 0.08 * i for i in range(20)]
    d = diagnose(history(val, train))
    assert d.verdict == "overfitting" and d.best_epoch == 10
    assert "risen since epoch 10" in d.sentence


def test_still_falling_validation_loss_is_underfitting():
    d = diagnose(history([2.3 * 0.97**i for i in range(80)]))
    assert d.verdict == "underfitting" and d.best_epoch == 80 and d.relative_slope < -0.01


def test_still_falling_under_a_decaying_schedule_does_not_promise_more_epochs():
    d = diagnose(history([2.3 * 0.97**i for i in range(20)]), schedule="onecycle")
    assert d.verdict == "underfitting" and "decay of the learning rate" in d.sentence
    assert "more epochs or a larger learning rate would help" not in d.sentence


def test_flat_validation_loss_has_converged():
    d = diagnose(history([2.0 * 0.8**i for i in range(10)] + [0.27] * 30))
    assert d.verdict == "converged"


def test_set_up_names_the_fixed_input_map():
    assert input_map(config.load("seed")) == ""
    assert input_map(config.load("best")) == "a projection onto the top 512 principal components (not whitened)"
    assert input_map(config.load("seed", ['model.whitening="zca"'])) == "ZCA whitening"
    assert preprocessing(config.load("seed")) == "normalised per channel with the train split's mean and std"
    assert preprocessing(config.load("fast", ["model.image_norm=true"])) == (
        "normalised per channel with the train split's mean and std, then each image standardised over its 3,072 "
        "values (in the model), then a projection onto the top 256 principal components (not whitened), fitted on "
        "the train split and fixed")


def test_set_up_says_whether_the_first_layer_was_pretrained():
    assert pretraining_sentence(config.load("best-noaug")) == ""
    assert pretraining_sentence(config.load("fast")) == (
        " Before training, the network's first hidden layer took the weights of a zero-bias autoencoder trained for "
        "20 epochs on the train images as that layer sees them (threshold 0.5; model.pretrain_epochs); its time is "
        "counted in the first epoch's.")
    assert "each network's first hidden layer" in pretraining_sentence(
        config.load("best-noaug", ["model.pretrain_epochs=3"]))


@pytest.fixture(scope="module")
def reported(evaluated_run, tmp_path_factory):
    run_dir, _, metrics = evaluated_run
    copy = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(run_dir, copy)
    (copy / "robustness.json").unlink(missing_ok=True)  # this report answers without robustness figures
    md, page = write_report(copy)
    return copy, metrics, md.read_text(), page.read_text()


def test_every_section_is_present(reported):
    _, _, md, page = reported
    for heading in ("## Set-up", "## Training", "## Results", "## Test set per class", "## Conclusions",
                    "## Comparison with the seed's reported figures"):
        assert heading in md
    for question in ("How does the model solve the problem?", "Is there overfitting, underfitting",
                     "How can the model be improved?", "How will it generalise to new data?"):
        assert question in md and question in page
    for image in ("loss_plot.png", "confusion_matrix_test.png", "metrics_test.png", "calibration_test.png",
                  "misclassified_test.png"):
        assert f"]({image})" in md
    assert "parameters" in md and "Thresholds:" in md


def test_report_numbers_come_from_the_run_files(reported):
    run_dir, metrics, md, _ = reported
    rows = read_history(run_dir)
    for split, values in metrics["splits"].items():
        assert f"| {split} | {values['n']} | {values['accuracy']:.4f} | {values['top2_accuracy']:.4f} | " \
               f"{values['nll']:.4f} | {values['ece']:.4f} |" in md
    assert f"{rows[-1]['train_loss']:.4f} / {rows[-1]['val_loss']:.4f}" in md
    best = min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert f"| epoch of lowest validation loss | {best} of {len(rows)} |" in md
    test = metrics["splits"]["test"]
    assert f"{100 * test['accuracy']:.1f}% of the {test['n']:,} test images" in md
    for name, values in test["per_class"].items():
        assert f"| {name} | {values['precision']:.4f} | {values['recall']:.4f} | {values['f1-score']:.4f} |" in md


def test_html_embeds_all_images(reported):
    run_dir, _, md, page = reported
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == md.count("![")
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert 'src="loss_plot.png"' not in page
    # Python-Markdown renders the report's markdown: tables, bold and code spans, nothing left as raw syntax
    assert page.count("<table>") == md.count("\n|---")
    assert "<strong>How does the model solve the problem?</strong>" in page
    assert "**" not in page and "<code>" in page


def test_html_renders_in_a_real_browser(reported, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if __import__("os").environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("chromium is not installed")
    _, _, _, page = reported
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.title = 'loaded ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length"
             " + ' of ' + imgs.length; });</script></body>")
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", probe))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                             "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>loaded (\d+) of (\d+)</title>", result.stdout)
    assert title, result.stderr[-2000:]
    loaded, total = map(int, title.groups())
    assert total == page.count("<img") and loaded == total > 5


def test_report_of_an_unevaluated_run(trained_run):
    run_dir, _ = trained_run
    with pytest.raises(UserError, match="metrics.json is missing; write it with `cifar-mlp evaluate"):
        write_report(run_dir)


def test_compare_two_runs(reported, trained_run, tmp_path):
    run_dir, metrics, _, _ = reported
    text = compare([run_dir, trained_run[0]], tmp_path)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and f"{100 * metrics['splits']['test']['accuracy']:.1f}%" in lines[1]
    assert "not evaluated" in lines[2]
    with pytest.raises(UserError, match="history.csv is missing"):
        compare([tmp_path], tmp_path)


def test_metrics_json_has_robustness(reported):
    run_dir, _, _, _ = reported
    test = json.loads((run_dir / "metrics.json").read_text())["splits"]["test"]
    assert 0 <= test["robustness"]["hflip_accuracy"] <= 1 and test["robustness"]["shift_pixels"] == 2


def fake_split(accuracy):
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1-score": 0.4 + 0.01 * i, "support": 100}
                 for i, c in enumerate(["airplane", "automobile", "bird"])}
    return {"n": 1000, "accuracy": accuracy, "top2_accuracy": 0.8, "ece": 0.02, "per_class": per_class,
            "confused_pairs": [{"true": "bird", "predicted": "airplane", "count": 40}]}


@pytest.mark.parametrize(("train_acc", "memorised"), [(0.90, True), (0.62, False)])
def test_conclusions_flag_a_large_generalisation_gap(train_acc, memorised):
    from cifar_mlp.config import Config
    from cifar_mlp.report import conclusions, to_markdown

    splits = {"train": fake_split(train_acc), "validation": fake_split(0.61), "test": fake_split(0.60)}
    text = to_markdown(conclusions(diagnose(history([2.0 - 0.01 * i for i in range(30)])), splits, Config()))
    assert ("memorised part of the training images" in text) == memorised
    assert f"train accuracy is {100 * train_acc:.1f}% against 60.0% on test" in text
    assert "60.0% ± 3.0 points" in text and "F1 from 0.400 (airplane) to 0.420 (bird)" in text


def test_each_conclusion_quotes_the_claims_studys_verdict_on_the_seeds_answer(tmp_path):
    from cifar_mlp.config import Config
    from cifar_mlp.report import conclusions, published_claims, to_markdown

    splits = {"validation": fake_split(0.61), "test": fake_split(0.60)}
    diag = diagnose(history([2.0 - 0.01 * i for i in range(30)]))
    assert "docs/claims/claims.md" in to_markdown(conclusions(diag, splits, Config()))
    assert published_claims(tmp_path) is None
    claims = {str(n): {"verdict": verdict} for n, verdict in
              zip(range(1, 7), ["supported", "partly supported", "refuted", "partly supported", "supported",
                                "refuted"], strict=True)}
    (tmp_path / "verdicts.json").write_text(json.dumps({"budget": "full", "claims": claims}))
    text = to_markdown(conclusions(diag, splits, Config(), published=published_claims(tmp_path)))
    answers = [p for p in text.split("\n\n") if p.startswith("**")]
    assert len(answers) == 4
    for answer, numbers in zip(answers, ([1], [4], [3, 2], [5]), strict=True):
        for n in numbers:
            assert f"**{claims[str(n)]['verdict']}** (claim {n})" in answer
    (tmp_path / "verdicts.json").write_text("{")
    with pytest.raises(UserError, match="verdicts.json is damaged"):
        published_claims(tmp_path)


def test_the_set_up_names_each_augmentation_with_its_bounds():
    cfg = config.from_dict({"data": {"augment": ["affine", "flip", "crop"], "rotate": 5.0, "zoom": 0.05, "translate": 3,
                                     "mix": "mixup", "mix_alpha": 0.2}})
    assert augmentations(cfg) == ["rotations by up to 5 degrees and changes of scale by up to 5%", "flip",
                                  "translations by up to 3 pixels", "mixup (alpha 0.2)"]
    cfg.data.clean_epochs = 6
    assert augmentations(cfg)[-1] == "none in the last 6 epochs"
    assert augmentations(config.from_dict({"data": {"clean_epochs": 6}})) == []


@pytest.mark.parametrize(("mutual_weight", "how"), [(0.0, "trained independently"),
                                                    (1.0, "each also learning from the others' predictions")])
def test_the_ensemble_sentence_says_how_its_members_were_trained(mutual_weight, how):
    from cifar_mlp.report import ensemble_gain

    held_out = {"accuracy": 0.63, "member_accuracy": [0.61, 0.62, 0.60]}
    text = ensemble_gain(held_out, "test", mutual_weight)
    assert f"It is an ensemble of 3 networks {how}, which alone classify 60.0% to 62.0%" in text
    assert "adds 2.0 points to their mean" in text

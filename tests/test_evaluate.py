import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_mlp import UserError, rundir
from cifar_mlp.data import CLASSES, SPLIT_NAMES
from cifar_mlp.evaluate import calibration_bins, evaluate_run, split_metrics

LABELS = list(range(10))


def random_predictions(n=400, seed=0, never_predicted=None, absent=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % 10
    logits = rng.normal(size=(n, 10)) + 2.5 * np.eye(10)[y]
    if never_predicted is not None:
        logits[:, never_predicted] = -50
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def reference_ece(y, probs, n_bins=15):
    """Independent ECE: |accuracy - confidence| per equal-width bin, weighted by the bin's share."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


@pytest.mark.parametrize("case", [{}, {"never_predicted": 4}, {"absent": 7}])
def test_split_metrics_match_scikit_learn(case):
    y, probs = random_predictions(**case)
    pred = probs.argmax(1)
    result = split_metrics(y, probs, CLASSES)
    s = result["scalars"]
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=LABELS, zero_division=0)
    for i, name in enumerate(CLASSES):
        row = result["report"][name]
        assert (row["precision"], row["recall"], row["f1-score"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], support[i]))
    for avg in ("macro", "weighted"):
        ref = precision_recall_fscore_support(y, pred, labels=LABELS, average=avg, zero_division=0)[:3]
        assert (s[f"{avg}_precision"], s[f"{avg}_recall"], s[f"{avg}_f1-score"]) == pytest.approx(ref)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert s["top2_accuracy"] == pytest.approx(top_k_accuracy_score(y, probs, k=2, labels=LABELS))
    assert s["nll"] == pytest.approx(log_loss(y, probs, labels=LABELS))
    assert s["ece"] == pytest.approx(reference_ece(y, probs), abs=1e-9)
    reference = multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(y), num_classes=10, n_bins=15,
                                             norm="l1")
    assert s["ece"] == pytest.approx(reference.item(), abs=1e-6)
    assert np.array_equal(result["confusion"], confusion_matrix(y, pred, labels=LABELS))
    if "never_predicted" in case:
        assert result["report"][CLASSES[4]]["precision"] == 0.0
    if "absent" in case:
        assert result["report"][CLASSES[7]]["support"] == 0 and result["report"][CLASSES[7]]["recall"] == 0.0


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    y, probs = random_predictions(seed=3)
    result = split_metrics(y, probs, CLASSES)
    cm = result["confusion"].copy()
    np.fill_diagonal(cm, 0)
    counts = [p["count"] for p in result["confused_pairs"]]
    assert counts == sorted(np.sort(cm.ravel())[::-1][:10].tolist(), reverse=True)
    top = result["confused_pairs"][0]
    assert cm[CLASSES.index(top["true"]), CLASSES.index(top["predicted"])] == top["count"]


def test_calibration_bins_count_every_prediction():
    y, probs = random_predictions(seed=5)
    bins = calibration_bins(y, probs)
    assert sum(bins["count"]) == len(y) and len(bins["edges"]) == 16
    weighted = sum(c * a for c, a in zip(bins["count"], bins["accuracy"], strict=True)) / len(y)
    assert weighted == pytest.approx((probs.argmax(1) == y).mean())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    run_dir, root = trained_run
    out = tmp_path_factory.mktemp("eval")
    metrics = evaluate_run(run_dir, out=out, data_dir=root, device="cpu", allow_download=False, quiet=True)
    return out, metrics


def test_files_agree_with_scikit_learn_on_the_same_predictions(evaluated):
    out, metrics = evaluated
    assert json.loads((out / "metrics.json").read_text())["splits"] == json.loads(json.dumps(metrics["splits"]))
    for split in ("train", "validation", "test"):
        rows = read_csv(out / f"predictions_{split}.csv")
        header, body = rows[0], rows[1:]
        assert header[:4] == ["index", "source_index", "true", "predicted"] and len(header) == 14
        y = np.array([int(r[2]) for r in body])
        pred = np.array([int(r[3]) for r in body])
        probs = np.array([[float(v) for v in r[4:]] for r in body])
        np.testing.assert_array_equal(pred, probs.argmax(1))
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
        s = metrics["splits"][split]
        assert s["n"] == len(y) and s["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert s["top2_accuracy"] == pytest.approx(top_k_accuracy_score(y, probs, k=2, labels=LABELS), abs=1e-3)
        assert s["nll"] == pytest.approx(log_loss(y, probs / probs.sum(1, keepdims=True), labels=LABELS), abs=1e-4)

        table = read_csv(out / f"metrics_{split}.csv")
        assert table[0] == ["class", "precision", "recall", "f1-score", "support"]
        assert [r[0] for r in table[1:]] == [*CLASSES, "accuracy", "macro avg", "weighted avg"]
        p, r, f, support = precision_recall_fscore_support(y, pred, labels=LABELS, zero_division=0)
        got = np.array([[float(v) for v in row[1:]] for row in table[1:11]])
        np.testing.assert_allclose(got, np.stack([p, r, f, support], 1), atol=1e-12)
        assert float(table[11][3]) == pytest.approx(accuracy_score(y, pred)) and int(float(table[11][4])) == len(y)

        cm = read_csv(out / f"confusion_matrix_{split}.csv")
        assert cm[0][1:] == list(CLASSES) and [row[0] for row in cm[1:]] == list(CLASSES)
        np.testing.assert_array_equal(np.array([[int(v) for v in row[1:]] for row in cm[1:]]),
                                      confusion_matrix(y, pred, labels=LABELS))


def test_read_predictions_gives_what_evaluate_wrote(evaluated):
    out, metrics = evaluated
    labels, probs = rundir.read_predictions(out, "test")
    rows = read_csv(out / "predictions_test.csv")[1:]
    assert labels == [int(r[2]) for r in rows] and np.array(probs).shape == (len(rows), len(CLASSES))
    assert accuracy_score(labels, np.array(probs).argmax(1)) == pytest.approx(metrics["splits"]["test"]["accuracy"])


def test_images_exist_with_sensible_sizes(evaluated):
    out, _ = evaluated
    names = [f"{kind}_{split}.png" for kind in ("metrics", "confusion_matrix", "calibration")
             for split in ("train", "validation", "test")] + ["misclassified_test.png"]
    for name in names:
        with Image.open(out / name) as image:
            width, height = image.size
            assert 300 <= width <= 4000 and 150 <= height <= 4000, (name, image.size)
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, name  # not a blank canvas


def test_tta_and_split_subset(trained_run, tmp_path):
    run_dir, root = trained_run
    metrics = evaluate_run(run_dir, "last", ["test"], tmp_path, root, "cpu", False, tta_flip=True, quiet=True)
    assert list(metrics["splits"]) == ["test"] and metrics["tta_flip"]
    assert (tmp_path / "misclassified_test.png").is_file() and not (tmp_path / "metrics_train.csv").exists()


def test_bad_inputs(trained_run, tmp_path):
    run_dir, root = trained_run
    with pytest.raises(UserError, match="does not exist"):
        evaluate_run(tmp_path / "nope", data_dir=root)
    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(UserError, match="has no best checkpoint"):
        evaluate_run(empty, data_dir=root)
    with pytest.raises(UserError, match="--splits accepts"):
        evaluate_run(run_dir, splits=["tset"], data_dir=root)
    with pytest.raises(UserError, match="--recalibrate-norm must be 0 .off. or at least 2 train images, got 1"):
        evaluate_run(run_dir, data_dir=root, recalibrate_norm=1)


def test_mismatched_architecture_keeps_earlier_results(trained_run, tmp_path):
    run_dir, root = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    evaluate_run(copy, splits=["validation"], data_dir=root, device="cpu", allow_download=False, quiet=True)
    before = (copy / "metrics.json").read_bytes()
    config = json.loads((copy / "config.json").read_text())
    config["model"]["widths"] = [128]
    (copy / "config.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "cifar_mlp.evaluate", str(copy), "--data-dir", str(root),
                             "--no-download", "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 2 and "different architecture" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (copy / "metrics.json").read_bytes() == before


def test_probabilities_are_softmax_of_logits(trained_run):
    from cifar_mlp import checkpoint
    from cifar_mlp.evaluate import predict_probs

    run_dir, _ = trained_run
    path = run_dir / "checkpoints" / "best.pt"
    model = checkpoint.build_model(checkpoint.load(path), path).eval()
    x = torch.randn(7, 3, 32, 32)
    np.testing.assert_allclose(predict_probs(model, x), torch.softmax(model(x).double(), 1).detach().numpy(),
                               atol=1e-6)


def test_an_ensemble_run_records_each_members_accuracy(tiny_config, synthetic_root, tmp_path):
    import dataclasses

    from cifar_mlp import checkpoint
    from cifar_mlp.data import load_cifar10, make_splits
    from cifar_mlp.evaluate import predict_probs
    from cifar_mlp.report import build, to_markdown
    from cifar_mlp.train import train

    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, members=2))
    train(cfg, tmp_path / "run", synthetic_root, allow_download=False, quiet=True)
    metrics = evaluate_run(tmp_path / "run", "last", data_dir=synthetic_root, device="cpu", quiet=True)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path)
    ensemble = checkpoint.build_model(ckpt, path)
    test = make_splits(load_cifar10(synthetic_root, False), 5, 0, "cpu", ckpt["mean"], ckpt["std"]).test
    expected = [(predict_probs(m, test.images).argmax(1) == test.labels.numpy()).mean() for m in ensemble]
    assert metrics["splits"]["test"]["member_accuracy"] == pytest.approx(expected)
    ensemble_probs = predict_probs(ensemble, test.images)  # the ensemble's own forward pass
    assert metrics["splits"]["test"]["accuracy"] == (ensemble_probs.argmax(1) == test.labels.numpy()).mean()
    written = np.loadtxt(tmp_path / "run" / "predictions_test.csv", delimiter=",", skiprows=1)[:, 4:]
    np.testing.assert_allclose(written, ensemble_probs, atol=1e-5)
    report = to_markdown(build(tmp_path / "run"))
    assert "It is an ensemble of 2 networks trained independently" in report
    assert "an ensemble of 2 fully connected networks, each with" in report
    assert "blocks.0.0: Linear" in report and "1.blocks" not in report  # the layers of one member, once


def test_recalibrated_evaluation_equals_the_run_that_recalibrates_and_leaves_the_checkpoint(tiny_config,
                                                                                          synthetic_root, tmp_path):
    import dataclasses

    from cifar_mlp.cli import main
    from cifar_mlp.report import build, to_markdown
    from cifar_mlp.train import train

    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.5))
    train(cfg, tmp_path / "plain", synthetic_root, allow_download=False, quiet=True)
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, recalibrate_norm=120)),
          tmp_path / "recalibrated", synthetic_root, allow_download=False, quiet=True)
    checkpoint_bytes = (tmp_path / "plain" / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "as-trained").mkdir()
    as_trained = evaluate_run(tmp_path / "plain", "last", out=tmp_path / "as-trained", data_dir=synthetic_root,
                              device="cpu", allow_download=False, quiet=True)
    main(["evaluate", str(tmp_path / "plain"), "--checkpoint", "last", "--recalibrate-norm", "120", "--data-dir",
          str(synthetic_root), "--no-download", "--device", "cpu"])
    recalibrated = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    by_the_run = evaluate_run(tmp_path / "recalibrated", "last", data_dir=synthetic_root, device="cpu",
                              allow_download=False, quiet=True)

    assert (recalibrated["recalibrate_norm"], by_the_run["recalibrate_norm"], as_trained["recalibrate_norm"]) == (
        120, 0, 0)
    for split in SPLIT_NAMES:
        for name in ("accuracy", "nll", "ece"):
            assert recalibrated["splits"][split][name] == by_the_run["splits"][split][name], (split, name)
        assert recalibrated["splits"][split]["nll"] != as_trained["splits"][split]["nll"], split
    assert (tmp_path / "plain" / "checkpoints" / "last.pt").read_bytes() == checkpoint_bytes
    assert "with its BatchNorm statistics recomputed from 120 train images." in to_markdown(build(tmp_path / "plain"))


def test_recalibrating_a_model_without_batch_norm_is_refused(tiny_config, synthetic_root, tmp_path):
    import dataclasses

    from cifar_mlp.train import train

    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, norm="layer"),
                              train=dataclasses.replace(tiny_config.train, epochs=1))
    train(cfg, tmp_path / "run", synthetic_root, allow_download=False, quiet=True)
    with pytest.raises(UserError, match="has no BatchNorm layer; drop the option"):
        evaluate_run(tmp_path / "run", "last", data_dir=synthetic_root, device="cpu", allow_download=False,
                     recalibrate_norm=100)

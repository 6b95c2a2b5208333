"""Evaluate a trained run on the train, validation and test splits: metrics, CSV files and PNG images.

Metrics come from scikit-learn, except the expected calibration error, which scikit-learn lacks (see
expected_calibration_error). Zero division: a class that is never predicted gets precision 0, and a class
absent from the labels gets recall 0 and support 0 (scikit-learn's zero_division=0); both pull the macro
averages down, as they should. Run as `cifar-mlp evaluate DIR` or `python -m cifar_mlp.evaluate DIR`.
"""

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix, log_loss, top_k_accuracy_score

from cifar_mlp import UserError, checkpoint, plots, rundir
from cifar_mlp.config import from_dict
from cifar_mlp.data import SPLIT_NAMES, Cifar10, load_cifar10, make_splits, resolve_device
from cifar_mlp.model import Ensemble, predict_logits
from cifar_mlp.rundir import write_csv
from cifar_mlp.train import batch_norms, recalibrate_batch_norm

ECE_BINS = 15
GALLERY_SIZE = 32
REPORT_FIELDS = ("precision", "recall", "f1-score", "support")


def split_metrics(y_true: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Every metric of one split from its labels and predicted probabilities (N x C, rows summing to 1)."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(1)
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(classes), output_dict=True,
                                   zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    calibration = calibration_bins(y_true, probs)
    ece = expected_calibration_error(calibration)
    off_diagonal = [(int(cm[i, j]), i, j) for i in labels for j in labels if i != j and cm[i, j]]
    pairs = [{"true": classes[i], "predicted": classes[j], "count": n}
             for n, i, j in sorted(off_diagonal, key=lambda t: (-t[0], t[1], t[2]))[:10]]
    scalars = {
        "n": len(y_true),
        "accuracy": report["accuracy"],
        "top2_accuracy": top_k_accuracy_score(y_true, probs, k=2, labels=labels),
        "nll": log_loss(y_true, probs, labels=labels),
        "ece": ece,
        **{f"{avg}_{m}": report[f"{avg} avg"][m] for avg in ("macro", "weighted")
           for m in ("precision", "recall", "f1-score")},
    }
    return {"scalars": scalars, "report": report, "confusion": cm, "confused_pairs": pairs,
            "calibration": calibration}


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per-bin accuracy, mean confidence and count of the top-1 predictions, for the reliability diagram."""
    confidence, correct = probs.max(1), probs.argmax(1) == y_true
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        accuracy = np.nan_to_num(np.bincount(which, weights=correct, minlength=n_bins) / count)
        mean_conf = np.nan_to_num(np.bincount(which, weights=confidence, minlength=n_bins) / count)
    return {"edges": edges.tolist(), "accuracy": accuracy.tolist(), "confidence": mean_conf.tolist(),
            "count": count.tolist()}


def expected_calibration_error(bins: dict) -> float:
    """ECE: the bins' |accuracy - mean confidence|, weighted by their share of the images. scikit-learn has no
    ECE; this equals torchmetrics' multiclass_calibration_error (norm "l1"), which the tests check, without
    the 2 s that importing torchmetrics adds to every evaluation."""
    count = np.asarray(bins["count"])
    gaps = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float(count @ gaps / count.sum())


def predict_probs(model, images: torch.Tensor, tta_flip: bool = False) -> np.ndarray:
    """Softmax probabilities in float64; with tta_flip, averaged with those of the horizontally flipped images."""
    probs = predict_logits(model, images).double().softmax(1)
    if tta_flip:
        probs = (probs + predict_logits(model, images.flip(3)).double().softmax(1)) / 2
    return probs.cpu().numpy()


def split_probabilities(model, images: torch.Tensor, tta_flip: bool = False) -> tuple[np.ndarray, list]:
    """(probabilities, each member's probabilities): an ensemble's are its members' mean, computed from theirs
    rather than by a second forward pass; a single network has no members ([])."""
    members = list(model) if isinstance(model, Ensemble) else []
    member_probs = [predict_probs(member, images, tta_flip) for member in members]
    return (np.mean(member_probs, 0) if member_probs else predict_probs(model, images, tta_flip)), member_probs


def robustness(model, images: torch.Tensor, labels: torch.Tensor, shift: int = 2) -> dict:
    """Accuracy on mirrored images and on images shifted right and down by `shift` pixels (edges zero-filled,
    i.e. the mean colour): an MLP has no built-in invariance to either, so this measures what it learned."""
    shifted = torch.nn.functional.pad(images, (shift, 0, shift, 0))[:, :, :32, :32]

    def accuracy(x):
        return (predict_logits(model, x).argmax(1) == labels).float().mean().item()

    return {"hflip_accuracy": accuracy(images.flip(3)), "shift_pixels": shift, "shift_accuracy": accuracy(shifted)}


def report_rows(report: dict, classes) -> list[list]:
    """classification_report's layout: classes, then accuracy, macro avg, weighted avg."""
    def row(name):
        return [name, *(report[name][f] for f in REPORT_FIELDS[:3]), int(report[name]["support"])]

    rows = [row(name) for name in classes]
    rows.append(["accuracy", "", "", report["accuracy"], int(report["macro avg"]["support"])])
    return rows + [row("macro avg"), row("weighted avg")]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_split(out: Path, split: str, result: dict, y_true, probs, indices, classes) -> None:
    """metrics_S.csv/.png, confusion_matrix_S.csv/.png, calibration_S.png and predictions_S.csv."""
    rows = report_rows(result["report"], classes)
    write_csv(out / f"metrics_{split}.csv", ["class", *REPORT_FIELDS], rows)
    plots.plot_table(["class", *REPORT_FIELDS], [[_fmt(v) for v in row] for row in rows], out / f"metrics_{split}.png",
                     f"{split}: per-class metrics (accuracy {result['scalars']['accuracy']:.4f})")
    cm = result["confusion"]
    write_csv(out / f"confusion_matrix_{split}.csv", ["true \\ predicted", *classes],
              [[name, *cm[i].tolist()] for i, name in enumerate(classes)])
    plots.plot_confusion(cm, classes, out / f"confusion_matrix_{split}.png", f"{split}: confusion matrix")
    plots.plot_calibration(result["calibration"], result["scalars"]["ece"], out / f"calibration_{split}.png",
                           f"{split}: reliability")
    y_pred = probs.argmax(1)
    write_csv(out / f"predictions_{split}.csv",
              ["index", "source_index", "true", "predicted", *(f"p_{c}" for c in classes)],
              [[i, int(src), int(t), int(p), *(f"{q:.6g}" for q in row)]
               for i, (src, t, p, row) in enumerate(zip(indices, y_true, y_pred, probs, strict=True))])


def write_gallery(out: Path, data: Cifar10, y_true, probs, indices, classes) -> None:
    """The most confidently wrong test images."""
    y_pred = probs.argmax(1)
    wrong = np.flatnonzero(y_pred != y_true)
    worst = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:GALLERY_SIZE]
    captions = [f"true {classes[y_true[i]]}\npred {classes[y_pred[i]]} ({probs[i, y_pred[i]]:.2f})" for i in worst]
    plots.plot_gallery(data.test_images[indices[worst]], captions, out / "misclassified_test.png",
                       "Most confidently wrong test images")


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    if which in ("best", "last"):
        path = run_dir / "checkpoints" / f"{which}.pt"
        if not path.is_file():
            raise UserError(f"run {run_dir} has no {which} checkpoint ({path}); train it first with cifar-mlp train "
                            f"--run-dir {run_dir}")
        return path
    return Path(which)


def evaluate_run(run_dir, which: str = "best", splits=SPLIT_NAMES, out=None, data_dir=None, device: str = "auto",
                 allow_download: bool = True, tta_flip: bool = False, data: Cifar10 | None = None,
                 quiet: bool = False, recalibrate_norm: int = 0) -> dict:
    """Evaluate a run directory; writes every file into out (default: the run directory) and returns metrics.json.

    With recalibrate_norm = N, the checkpoint's BatchNorm statistics are first recomputed from the first N train
    images (train.recalibrate_batch_norm), which is what a run with train.recalibrate_norm = N ends with: so one
    trained run measures both, and the checkpoint file is left as it is."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give the --run-dir of a cifar-mlp train run")
    unknown = set(splits) - set(SPLIT_NAMES)
    if unknown or not splits:
        raise UserError(f"--splits accepts a comma-separated subset of {','.join(SPLIT_NAMES)}, got {list(splits)}")
    if recalibrate_norm < 0 or recalibrate_norm == 1:
        raise UserError(f"--recalibrate-norm must be 0 (off) or at least 2 train images, got {recalibrate_norm}")
    out = Path(out) if out else run_dir
    with rundir.locked(out):  # not while a training process writes the same folder
        cfg = from_dict(rundir.read_config(run_dir))
        path = resolve_checkpoint(run_dir, which)
        ckpt = checkpoint.load(path)
        torch_device = resolve_device(device)
        model = checkpoint.build_model(ckpt, path, cfg.model).to(torch_device)
        data = data or load_cifar10(data_dir, allow_download)
        split_data = make_splits(data, cfg.data.val_per_class, cfg.data.split_seed, torch_device, ckpt["mean"],
                                 ckpt["std"])
        if split_data.info["fingerprint"] != ckpt["split"]["fingerprint"]:
            raise UserError(f"the train/validation split rebuilt from {run_dir}/config.json differs from the one "
                            f"{path} was trained on (fingerprint {ckpt['split']['fingerprint']}); use the same "
                            "dataset")
        if recalibrate_norm:
            if not batch_norms(model):
                raise UserError(f"--recalibrate-norm recomputes BatchNorm statistics, and the model of {path} has "
                                "no BatchNorm layer; drop the option")
            recalibrate_batch_norm(model, split_data.train.images[:recalibrate_norm])
        classes = list(ckpt["classes"])
        results, predictions = {}, {}
        for split in splits:
            y_true, images = split_data[split].labels.cpu().numpy(), split_data[split].images
            probs, member_probs = split_probabilities(model, images, tta_flip)
            results[split], predictions[split] = split_metrics(y_true, probs, classes), (y_true, probs)
            if member_probs:
                results[split]["scalars"]["member_accuracy"] = [(p.argmax(1) == y_true).mean().item()
                                                                for p in member_probs]
            if split != "train":
                results[split]["scalars"]["robustness"] = robustness(model, split_data[split].images,
                                                                     split_data[split].labels)

        for split in splits:
            write_split(out, split, results[split], *predictions[split], split_data[split].indices, classes)
        if "test" in splits:
            write_gallery(out, data, *predictions["test"], split_data.test.indices, classes)
        summary = {
            "checkpoint": str(path), "epoch": ckpt["epoch"], "tta_flip": tta_flip,
            "recalibrate_norm": min(recalibrate_norm, len(split_data.train.labels)), "config": cfg.to_dict(),
            "split": ckpt["split"], "classes": classes,
            "splits": {s: {**r["scalars"], "confused_pairs": r["confused_pairs"],
                           "per_class": {c: r["report"][c] for c in classes}} for s, r in results.items()},
            "seconds": time.perf_counter() - start,
        }
        rundir.write_json(summary, out / rundir.METRICS)
        if not quiet:
            print(summary_table(summary))
        return summary


def summary_table(summary: dict) -> str:
    columns = ("n", "accuracy", "top2_accuracy", "nll", "ece", "macro_f1-score")
    lines = [f"{'split':<11}" + "".join(f"{c:>15}" for c in columns)]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<11}" + "".join(f"{_fmt(s[c]):>15}" for c in columns))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from cifar_mlp.cli import main

    main(["evaluate", *sys.argv[1:]])

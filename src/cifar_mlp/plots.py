"""Every figure the project draws, each a function from plain data to a PNG file (no computation of metrics here)."""

import io
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifar_mlp import rundir  # noqa: E402

DPI = 120


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    rundir.write_bytes(path, buffer.getbuffer())


def plot_history(history: list[dict], path: Path, title: str = "Training history") -> None:
    """Loss (left) and accuracy (right) per epoch, train and validation."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train", marker="." if len(epochs) < 30 else None)
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation",
                marker="." if len(epochs) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    best = min(history, key=lambda r: r["val_loss"])
    ax_loss.axvline(best["epoch"], color="grey", ls=":", lw=1)
    ax_loss.set_title(f"loss (lowest validation loss at epoch {best['epoch']})")
    ax_acc.set_title("accuracy (train: running, in train mode)")
    fig.suptitle(title)
    _save(fig, path)


def plot_confusion(cm: np.ndarray, classes, path: Path, title: str) -> None:
    """Counts (left) and row-normalised recall (right), class names on both axes, a colour bar each."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), layout="constrained")
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    for ax, matrix, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], recall, "row-normalised (recall)", ".2f")):
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(name)
        threshold = matrix.max() / 2 if matrix.max() else 1
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.suptitle(title)
    _save(fig, path)


def plot_table(header: list[str], rows: list[list[str]], path: Path, title: str) -> None:
    """A table rendered as an image (for the per-class metrics)."""
    fig, ax = plt.subplots(figsize=(1.6 * len(header), 0.32 * (len(rows) + 2)), layout="constrained")
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 1.3)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor("#dbe6f4")
            cell.set_text_props(weight="bold")
        elif r % 2 == 0:
            cell.set_facecolor("#f5f5f5")
    ax.set_title(title, pad=4)
    _save(fig, path)


def plot_calibration(bins: dict, ece: float, path: Path, title: str) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin sizes below."""
    edges, acc, conf, count = (np.asarray(bins[k]) for k in ("edges", "accuracy", "confidence", "count"))
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6, 6.5), height_ratios=[3, 1], sharex=True, layout="constrained")
    filled = count > 0
    ax.bar(centers[filled], acc[filled], width=width[filled], color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], facecolor="none",
           edgecolor="red", hatch="//", label="gap to mean confidence")
    ax.plot(conf[filled], conf[filled], "r.", label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(f"{title} (ECE {ece:.4f}, {len(centers)} bins)")
    ax_count.bar(centers, count, width=width, color="grey")
    ax_count.set_xlabel("confidence (top-1 probability)")
    ax_count.set_ylabel("images")
    _save(fig, path)


def plot_gallery(images: np.ndarray, captions: list[str], path: Path, title: str, columns: int = 8) -> None:
    """uint8 images N x 3 x 32 x 32 in a grid, each with a caption."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(caption, fontsize=7, y=1.0)  # placed, not searched for: the same pixels in half the time
    fig.suptitle(title)
    _save(fig, path)


def plot_compare(histories: dict[str, list[dict]], path: Path) -> None:
    """Validation (solid) and train (dotted) loss and validation accuracy of several runs, overlaid, with one
    legend of run names below the axes, which grows with the number of runs instead of covering the curves."""
    columns = min(4, len(histories))
    legend_rows = -(-len(histories) // columns)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5 + 0.22 * legend_rows), layout="constrained")
    colors = plt.get_cmap("tab20" if len(histories) > 10 else "tab10").colors
    for (name, history), color in zip(histories.items(), itertools.cycle(colors)):
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["val_loss"] for r in history], color=color, label=name)
        ax_loss.plot(epochs, [r["train_loss"] for r in history], ls=":", color=color)
        ax_acc.plot(epochs, [r["val_acc"] for r in history], color=color)
    for ax, label in ((ax_loss, "cross-entropy loss (solid: validation, dotted: train)"),
                      (ax_acc, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=columns, fontsize=8)
    fig.suptitle("Run comparison")
    _save(fig, path)


def plot_effects(effects: dict[str, list[tuple[str, float, float, int]]], objective: str, path: Path) -> None:
    """One panel per swept key: the objective's mean over trials at each value, with ± one standard deviation
    (over seeds and the other keys' values) as error bars."""
    fig, axes = plt.subplots(1, len(effects), figsize=(4.2 * len(effects), 3.8), layout="constrained",
                             squeeze=False)
    for ax, (key, rows) in zip(axes[0], effects.items(), strict=True):
        labels, means, stds, _ = zip(*rows, strict=True)
        ax.errorbar(range(len(rows)), means, yerr=[0 if np.isnan(s) else s for s in stds], fmt="o-", capsize=4)
        ax.set_xticks(range(len(rows)), labels, rotation=30 if max(map(len, labels)) > 8 else 0, ha="right"
                      if max(map(len, labels)) > 8 else "center", fontsize=8)
        ax.set_title(key)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Effect of each swept key on {objective} (mean ± std)")
    _save(fig, path)


def save_axes(ax, path: Path) -> None:
    """Save the figure of a matplotlib Axes that another library drew (Optuna's visualisations)."""
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(8, 4.5)
    _save(fig, path)


def plot_robustness(rows: list[dict], path: Path) -> None:
    """One panel per transform family, one curve per run: test accuracy against the transform's strength."""
    families = list(dict.fromkeys(r["transform"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    columns = min(4, len(families))
    fig, axes = plt.subplots(-(-len(families) // columns), columns, figsize=(3.6 * columns, 3.0 * -(-len(families)
                             // columns) + 0.4 + 0.22 * len(runs)), layout="constrained", squeeze=False)
    for ax, family in zip(axes.flat, families, strict=False):
        for run in runs:
            points = [(r["strength"], r["accuracy"]) for r in rows if r["run"] == run and r["transform"] == family]
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=run if ax is axes.flat[0] else None)
        ax.set_title(family.replace("_", " "))
        ax.set_xlabel("strength")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    fig.legend(loc="outside lower center", ncols=min(3, len(runs)), fontsize=8)
    fig.suptitle("Accuracy under transformed test images")
    _save(fig, path)


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _finish_lines(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, log: str = "") -> None:
    """Labels, log axes ("x", "y" or both), grid and legend of a one-panel line chart, then save it."""
    if "x" in log:
        ax.set_xscale("log")
    if "y" in log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_accuracy_time(points: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """One marker per run: test accuracy against training seconds, a colour per preset."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, runs in points.items():
        seconds, accuracy = zip(*runs, strict=True)
        ax.scatter(seconds, accuracy, label=name, s=30)
    _finish_lines(fig, ax, path, "training seconds (log scale)", "test accuracy",
                  "Test accuracy against training time, every run", log="x")


def plot_depth(curves: dict[str, dict[int, list[float]]], path: Path) -> None:
    """Test accuracy (mean ± std over seeds) against the number of hidden layers, one line per variant."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for variant, by_depth in curves.items():
        depths = sorted(by_depth)
        means, stds = zip(*(_mean_std(by_depth[d]) for d in depths), strict=True)
        ax.errorbar(depths, means, yerr=stds, marker="o", capsize=3, label=variant)
    _finish_lines(fig, ax, path, "hidden layers", "test accuracy", "Depth (mean ± std over seeds)")


def plot_gradient_norms(norms: dict[str, list[float]], path: Path) -> None:
    """Each weight layer's gradient norm (log scale), from the input layer to the head, one line per run group."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for label, values in norms.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    _finish_lines(fig, ax, path, "weight layer (1 = first hidden layer; the last is the output layer)",
                  "gradient norm, mean over the epochs' steps", "Gradient norm per layer", log="y")


def plot_learning_rates(curves: dict[str, list[list[float]]], path: Path) -> None:
    """Validation accuracy per epoch (log scale), mean over seeds, one line per learning rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for label, runs in curves.items():
        length = min(map(len, runs))
        ax.plot(range(1, length + 1), np.mean([r[:length] for r in runs], axis=0), label=label)
    _finish_lines(fig, ax, path, "epoch (log scale)", "validation accuracy",
                  "The seed's recipe at constant learning rates", log="x")


def plot_ablation(points: dict[str, list[float]], path: Path) -> None:
    """Test accuracy (mean ± std over seeds) of each point of the ablation, in order."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    means, stds = zip(*(_mean_std(v) for v in points.values()), strict=True)
    ax.bar(range(len(points)), means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(points)), list(points), rotation=20, ha="right")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("One change at a time, from the seed's recipe")
    _save(fig, path)

"""Robustness curves: test-split accuracy of trained runs under transforms of increasing strength.

Each transform is applied to the uint8 test images, on the device, in batches, before the run's own
normalisation, with torchvision.transforms.v2.functional wherever it has the operation:
- rotation by 0-30 degrees, each image rotated both ways and the two accuracies averaged, bilinear, the
  uncovered corners filled with the train split's mean colour;
- translation by 0-8 pixels in a random direction per image (seeded), filled the same way (by hand:
  torchvision shifts a whole batch one way);
- the CIFAR-10-C families (Hendrycks & Dietterich 2019) that torchvision can apply, at their 5 severities:
  Gaussian noise, Gaussian blur, brightness, contrast and JPEG compression; and the horizontal mirror.
Strength 0 is the untouched test split, so it reproduces the run's test accuracy in metrics.json exactly.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cifar_mlp import UserError, checkpoint, rundir
from cifar_mlp.data import load_cifar10, normalise, resolve_device
from cifar_mlp.evaluate import split_probabilities

SEED = 0
BATCH = 1000
# CIFAR-10-C's five severities of each family (its make_cifar_c.py), as torchvision's operations take them.
STRENGTHS = {
    "rotation": [0, 5, 10, 15, 20, 25, 30],  # degrees
    "translation": [0, 1, 2, 3, 4, 5, 6, 7, 8],  # pixels
    "gaussian_noise": [0, 0.04, 0.06, 0.08, 0.09, 0.10],  # sigma, images in [0, 1]
    "gaussian_blur": [0, 0.4, 0.6, 0.7, 0.8, 1.0],  # sigma in pixels
    "brightness": [0, 0.05, 0.1, 0.15, 0.2, 0.3],  # added to each pixel's HSV value
    "contrast": [0, 0.25, 0.5, 0.6, 0.7, 0.85],  # 1 - CIFAR-10-C's factor (.75 ... .15), so that 0 is clean
    "jpeg": [0, 20, 35, 42, 50, 60],  # 100 - quality (CIFAR-10-C: 80, 65, 58, 50, 40), so that 0 is clean
    "mirror": [0, 1],
}


def translate(images: torch.Tensor, pixels: int, fill: list[int], generator: torch.Generator) -> torch.Tensor:
    """Shift each image by `pixels` in its own random direction (rounded to whole pixels), filling with fill."""
    if pixels == 0:
        return images
    n, device = len(images), images.device
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    dy, dx = (pixels * angle.sin()).round().long(), (pixels * angle.cos()).round().long()
    size = 32 + 2 * pixels
    padded = torch.tensor(fill, dtype=torch.uint8, device=device).view(1, 3, 1, 1).repeat(n, 1, size, size)
    padded[:, :, pixels:pixels + 32, pixels:pixels + 32] = images
    rows = (torch.arange(32) + pixels - dy[:, None]).to(device)  # n x 32: the source row of each output row
    cols = (torch.arange(32) + pixels - dx[:, None]).to(device)
    index = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(3, device=device)[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]


def apply(name: str, images: torch.Tensor, strength: float, fill: list[int], generator: torch.Generator
          ) -> list[torch.Tensor]:
    """The transformed uint8 images (two versions for rotation: each way); strength 0 leaves them untouched."""
    if strength == 0:
        return [images]
    if name == "rotation":
        return [F.rotate(images, sign * strength, InterpolationMode.BILINEAR, fill=fill) for sign in (1, -1)]
    if name == "translation":
        return [translate(images, int(strength), fill, generator)]
    if name == "mirror":
        return [F.horizontal_flip(images)]
    if name == "jpeg":
        with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; jpeg still works
            warnings.simplefilter("ignore", DeprecationWarning)
            return [F.jpeg(images.cpu(), 100 - int(strength)).to(images.device)]
    x = images.float() / 255
    if name == "gaussian_noise":  # by hand, for a seeded generator: torchvision's draws from the global one
        x = x + strength * torch.randn(x.shape, generator=generator).to(x.device)
    elif name == "gaussian_blur":
        x = F.gaussian_blur(x, 2 * math.ceil(3 * strength) + 1, strength)
    elif name == "brightness":  # by hand: CIFAR-10-C adds to the HSV value; torchvision only multiplies RGB
        value = x.amax(1, keepdim=True)
        x = torch.where(value > 0, x * (value + strength).clamp(max=1) / value.clamp(min=1e-12), strength)
    elif name == "contrast":  # by hand: CIFAR-10-C scales around each channel's mean; torchvision around the grey
        mean = x.mean((2, 3), keepdim=True)
        x = (x - mean) * (1 - strength) + mean
    return [(x.clamp(0, 1) * 255).round().to(torch.uint8)]


def curves(model, mean, std, images: torch.Tensor, labels: np.ndarray, transforms: list[str],
           tta_flip: bool = False) -> list[dict]:
    """Rows (transform, strength, accuracy, n) of one model on uint8 images (on the model's device)."""
    fill = [round(255 * m) for m in mean]  # the train split's mean colour fills uncovered pixels
    rows = []
    for name in transforms:
        generator = torch.Generator().manual_seed(SEED)
        for strength in STRENGTHS[name]:
            correct = []
            for start in range(0, len(images), BATCH):
                versions = apply(name, images[start:start + BATCH], strength, fill, generator)
                truth = labels[start:start + BATCH]
                predicted = [split_probabilities(model, normalise(v, mean, std, v.device), tta_flip)[0].argmax(1)
                             for v in versions]
                correct.append(np.mean([p == truth for p in predicted], axis=0))
            rows.append({"transform": name, "strength": strength,
                         "accuracy": float(np.concatenate(correct).mean()), "n": len(labels)})
    return rows


def run_curves(run_dir: Path, data, transforms: list[str], device) -> list[dict]:
    """The curves of one evaluated run, with the checkpoint and test-time augmentation its metrics.json records."""
    metrics = rundir.read_metrics(run_dir)
    if "test" not in metrics["splits"]:
        raise UserError(f"{run_dir} was not evaluated on the test split; run cifar-mlp evaluate {run_dir}")
    recorded = Path(metrics["checkpoint"])  # as evaluate was given it; the run directory may have moved since
    moved = Path(run_dir) / "checkpoints" / recorded.name
    path = moved if moved.is_file() else recorded
    ckpt = checkpoint.load(path)
    model = checkpoint.build_model(ckpt, path).to(device).eval()
    return curves(model, ckpt["mean"], ckpt["std"], torch.from_numpy(data.test_images).to(device), data.test_labels,
                  transforms, metrics.get("tta_flip", False))


def summarise(rows: list[dict]) -> dict:
    """Clean accuracy, the mean over every transform at strength > 0 (each family weighted equally), and the
    costliest transform at its strongest."""
    clean = next(r["accuracy"] for r in rows if r["strength"] == 0)
    families = {}
    for r in rows:
        if r["strength"]:
            families.setdefault(r["transform"], []).append(r["accuracy"])
    strongest = {name: accs[-1] for name, accs in families.items()}
    worst = min(strongest, key=strongest.get) if strongest else None
    return {"clean": clean, "mean_corrupted": float(np.mean([np.mean(a) for a in families.values()])),
            "worst": worst, "worst_accuracy": strongest.get(worst),
            "worst_strength": max(r["strength"] for r in rows if r["transform"] == worst) if worst else None,
            "strongest": strongest}


def measure(run_dir, data, transforms: list[str], device) -> tuple[list[dict], dict]:
    """One run's curves and summary, also written to its robustness.json (which its report quotes)."""
    curves = run_curves(Path(run_dir), data, transforms, device)
    summary = summarise(curves)
    rundir.write_json({"transforms": curves, "summary": summary}, Path(run_dir) / rundir.ROBUSTNESS)
    return curves, summary


def robustness(run_dirs: list, out, transforms: list[str] | None = None, data_dir=None, device: str = "auto",
               allow_download: bool = True) -> tuple[list[dict], dict]:
    """Every run's curves into out/robustness.csv, .png and .md, and each run's own figures into its
    robustness.json (which its report then uses)."""
    from cifar_mlp import plots

    transforms = transforms or list(STRENGTHS)
    unknown = [t for t in transforms if t not in STRENGTHS]
    if unknown:
        raise UserError(f"unknown transform {unknown[0]!r}; choose from {', '.join(STRENGTHS)}")
    for run_dir in run_dirs:
        if not (Path(run_dir) / rundir.METRICS).is_file():
            raise UserError(f"{run_dir} has no metrics.json: it is not an evaluated run directory; train and "
                            f"evaluate it first (cifar-mlp run, or cifar-mlp evaluate {run_dir})")
    device = resolve_device(device)
    data = load_cifar10(data_dir, allow_download)
    rows, summaries = [], {}
    for run_dir in run_dirs:
        curves, summaries[str(run_dir)] = measure(run_dir, data, transforms, device)
        rows += [{"run": str(run_dir), **r} for r in curves]
    out = Path(out)
    rundir.write_csv(out / "robustness.csv", ["run", "transform", "strength", "accuracy", "n"],
                     [[r["run"], r["transform"], r["strength"], f"{r['accuracy']:.4f}", r["n"]] for r in rows])
    plots.plot_robustness(rows, out / "robustness.png")
    rundir.write_text(out / "robustness.md", markdown(summaries))
    return rows, summaries


def markdown(summaries: dict) -> str:
    from cifar_mlp.report import pct, table, to_markdown

    return to_markdown([
        ("h1", "Robustness on the test split"),
        table(["run", "clean", "mean over the transforms", "drop", "costliest transform (at its strongest)"],
              [[run, pct(s["clean"]), pct(s["mean_corrupted"]), f"{100 * (s['clean'] - s['mean_corrupted']):.1f} "
                "points", f"{s['worst']} {s['worst_strength']:g}: {pct(s['worst_accuracy'])}"]
               for run, s in summaries.items()]),
        ("p", "The mean weights every transform family equally (rotation, translation, Gaussian noise, Gaussian "
              "blur, brightness, contrast, JPEG, mirror), each averaged over its strengths above 0."),
        ("img", "robustness.png", "accuracy against strength, one panel per transform"),
    ])

"""CIFAR-10 on disk -> validated arrays -> a stratified train/validation split -> normalised tensors on the device.

The data folder may be read-only and is never written to, except by a download the user asked for. Each split
is held once as a tensor on the device, normalised once; training batches are drawn by indexing it.
"""

import functools
import hashlib
import io
import math
import os
import pickle
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifar_mlp import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
# md5 and byte size of the official files, as torchvision's CIFAR10 lists them.
OFFICIAL = {
    "data_batch_1": ("c99cafc152244af753f735de768cd75f", 31035704),
    "data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec", 31035320),
    "data_batch_3": ("54ebc095f3ab1f0389bbae665268c751", 31035999),
    "data_batch_4": ("634d18415352ddfa80567beed471001a", 31035696),
    "data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb", 31035623),
    "test_batch": ("40351d587109b95175f43aff81a1287e", 31035526),
}
DOWNLOAD_HINT = "point --data-dir or CIFAR10_DIR at a folder holding cifar-10-batches-py, or download it again"


def resolve_data_dir(flag: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $CIFAR10_DIR, else ./data."""
    return Path(flag or os.environ.get("CIFAR10_DIR") or "data")


def batch_folder(root: Path) -> Path:
    """The folder holding the batch files: root/cifar-10-batches-py, or root itself if it holds them."""
    return root if (root / TEST_FILE).exists() and not (root / BATCH_FOLDER).exists() else root / BATCH_FOLDER


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch format (dicts, lists, numpy arrays) and refuses anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images N x 3 x 32 x 32, int64 labels N), with a one-line error for bad files."""
    if not path.exists():
        raise UserError(f"CIFAR-10 batch file {path} is missing; {DOWNLOAD_HINT}")
    raw = path.read_bytes()
    md5, size = OFFICIAL.get(path.name, (None, None))
    if len(raw) == size and hashlib.md5(raw).hexdigest() != md5:
        raise UserError(f"CIFAR-10 batch file {path} is corrupt (md5 checksum mismatch); {DOWNLOAD_HINT}")
    try:
        entry = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
    except Exception as e:
        raise UserError(f"CIFAR-10 batch file {path} cannot be read, truncated or corrupt ({type(e).__name__}: "
                        f"{e}); {DOWNLOAD_HINT}") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"CIFAR-10 batch file {path} holds images of shape {shape}, expected N x 3072 uint8; "
                        f"{DOWNLOAD_HINT}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise UserError(f"CIFAR-10 batch file {path} has {labels.size} labels for {len(data)} images; {DOWNLOAD_HINT}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserError(f"CIFAR-10 batch file {path} has labels outside 0..9 (found {labels.min()}..{labels.max()}); "
                        f"{DOWNLOAD_HINT}")
    return data.reshape(-1, 3, 32, 32), labels


def download(root: Path) -> None:
    """Fetch and verify the official archive with torchvision; a clear error when offline."""
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise UserError(f"CIFAR-10 is not in {root} and downloading it failed ({e}); connect to the internet, or "
                        "point --data-dir or CIFAR10_DIR at a folder holding cifar-10-batches-py") from None


@dataclass
class Cifar10:
    """The raw dataset as uint8 arrays in the official order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path
    load_seconds: float


def load_cifar10(root: str | os.PathLike | None = None, allow_download: bool = True) -> Cifar10:
    start = time.perf_counter()
    root = resolve_data_dir(root)
    folder = batch_folder(root)
    if not folder.is_dir():
        if not allow_download:
            raise UserError(f"CIFAR-10 not found: {folder} does not exist; set --data-dir or CIFAR10_DIR to the "
                            "folder that holds cifar-10-batches-py, or drop --no-download to fetch it (163 MB)")
        download(root)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = read_batch(folder / TEST_FILE)
    return Cifar10(
        train_images=np.concatenate([p[0] for p in parts]),
        train_labels=np.concatenate([p[1] for p in parts]),
        test_images=test_images,
        test_labels=test_labels,
        folder=folder,
        load_seconds=time.perf_counter() - start,
    )


def split_indices(labels: np.ndarray, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of the official training images: val_per_class of each class go to validation."""
    rng = np.random.default_rng(seed)
    val = []
    for c in range(len(CLASSES)):
        members = np.flatnonzero(labels == c)
        if len(members) <= val_per_class:
            raise UserError(f"class {CLASSES[c]} has {len(members)} training images, too few for "
                            f"data.val_per_class={val_per_class}; lower it with --set data.val_per_class=N")
        val.append(rng.choice(members, size=val_per_class, replace=False))
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def split_fingerprint(val_idx: np.ndarray, n_train_images: int) -> str:
    """A short hash that identifies which images went to validation, recorded with every run."""
    digest = hashlib.sha256(np.asarray(val_idx, dtype=np.int64).tobytes() + str(n_train_images).encode())
    return digest.hexdigest()[:16]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], exact, from a histogram of the 256 values."""
    values = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(3):
        counts = torch.from_numpy(images[:, c]).flatten().bincount(minlength=256).numpy()
        m = counts @ values / counts.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(counts @ (values - m) ** 2 / counts.sum())))
    return mean, std


def normalise(images, mean, std, device="cpu") -> torch.Tensor:
    """uint8 images (N x 3 x 32 x 32, numpy or tensor) -> float32 normalised tensor on the device."""
    x = torch.as_tensor(images).to(device)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x.float().div_(255) - m).div_(s)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Split:
    images: torch.Tensor  # float32 N x 3 x 32 x 32, normalised, on the device
    labels: torch.Tensor  # int64 N, on the device
    indices: np.ndarray  # positions in the official train (or test) order
    mean: list[float]  # the per-channel normalisation of the images (colour jitter undoes it)
    std: list[float]


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split
    info: dict  # split seed, sizes, fingerprint: recorded with the run

    @property
    def mean(self) -> list[float]:
        """The train split's per-channel mean, which every split is normalised by."""
        return self.train.mean

    @property
    def std(self) -> list[float]:
        return self.train.std

    def __getitem__(self, name: str) -> Split:
        return getattr(self, name)


SPLIT_NAMES = ("train", "validation", "test")


def make_splits(data: Cifar10, val_per_class: int, split_seed: int, device, mean=None, std=None) -> Splits:
    """Split, compute normalisation on the train split (unless given, e.g. from a checkpoint), move to device."""
    train_idx, val_idx = split_indices(data.train_labels, val_per_class, split_seed)
    if mean is None or std is None:
        mean, std = channel_stats(data.train_images[train_idx])

    def build(images, labels, idx):
        return Split(normalise(images[idx], mean, std, device), torch.as_tensor(labels[idx]).to(device), idx,
                     list(mean), list(std))

    test_idx = np.arange(len(data.test_labels))
    info = {
        "split_seed": split_seed,
        "val_per_class": val_per_class,
        "sizes": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
        "fingerprint": split_fingerprint(val_idx, len(data.train_labels)),
    }
    return Splits(
        train=build(data.train_images, data.train_labels, train_idx),
        validation=build(data.train_images, data.train_labels, val_idx),
        test=build(data.test_images, data.test_labels, test_idx),
        info=info,
    )


def batch_count(n: int, batch_size: int) -> int:
    """Batches per epoch: a last batch of a single image is folded into the one before it (BatchNorm cannot
    normalise one sample), so no batch holds fewer than 2 images when n >= 2."""
    return max(1, n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size))


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """A seeded permutation of range(n), cut into batch_count(n, batch_size) batches: the last may be smaller,
    or one image larger (a lone remaining image joins it)."""
    batches = list(torch.randperm(n, generator=generator).to(device).split(batch_size))
    if len(batches) > batch_count(n, batch_size):
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


@functools.cache
def augment_table(flip: bool, crop: bool, device: torch.device, pad: int) -> torch.Tensor:
    """Source index (into a flat image with one zero appended) of every output pixel, for each combination of
    mirror and shift: K x 3072, K = 2 x (2 pad + 1)^2 with both. One gather per batch then applies any of them."""
    c, i, j = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    shifts = range(-pad, pad + 1) if crop else (0,)
    tables = []
    for mirrored in ((False, True) if flip else (False,)):
        for dy in shifts:
            for dx in shifts:
                src_i, src_j = i + dy, (31 - j if mirrored else j) + dx
                inside = (src_i >= 0) & (src_i < 32) & (src_j >= 0) & (src_j < 32)
                tables.append(torch.where(inside, c * 1024 + src_i * 32 + src_j, 3 * 1024).flatten())
    return torch.stack(tables).to(device)


def rotate_and_zoom(x: torch.Tensor, angles: torch.Tensor, zooms: torch.Tensor) -> torch.Tensor:
    """Each image rotated by its angle (radians) and scaled by its zoom about its centre, bilinear, uncovered
    pixels zero (the train split's mean colour once normalised): one affine_grid and grid_sample for the batch."""
    cos, sin, zero = torch.cos(angles) / zooms, torch.sin(angles) / zooms, torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


LUMA = (0.2989, 0.587, 0.114)  # the grey level's weights of R, G, B: torchvision's rgb_to_grayscale (ITU-R 601-2)


def jitter_colour(x: torch.Tensor, strength: float, mean: list[float], std: list[float]) -> torch.Tensor:
    """torchvision's colour adjustments with a factor per image (its batched ColorJitter draws one for the whole
    batch), in a fixed order where ColorJitter shuffles it: brightness, contrast, then saturation, each scaled by
    a factor drawn from [1 - strength, 1 + strength], on the pixels in [0, 1]. Each adjustment is linear in an
    image's colours, so the three (and the normalisation, undone and redone) compose into one 3 x 3 matrix and
    offset per image, applied in one pass over the batch and clamped to [0, 1] once at the end, where torchvision
    clamps after each: the same images wherever no adjustment pushes a pixel out of range, at about half the cost
    of the dozen passes of three adjustments in a row (benchmarks/augment_cost.py)."""
    m, s, luma = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in (mean, std, LUMA))
    brightness, contrast, saturation = 1 + (torch.rand(3, len(x), 1, 1, device=x.device) * 2 - 1) * strength
    saturate = saturation * torch.eye(3, dtype=x.dtype, device=x.device) + (1 - saturation) * luma  # blend with grey
    grey_mean = (x.mean((2, 3)) * s + m) @ luma  # each image's mean grey level, which contrast blends towards
    colours = brightness * contrast * saturate
    offsets = saturate.sum(2) * ((1 - contrast) * brightness).view(-1, 1) * grey_mean.view(-1, 1)
    matrices, biases = colours * s / s.view(3, 1), (colours @ m + offsets - m) / s  # on the normalised images
    low, high = (-m / s).view(1, 3, 1), ((1 - m) / s).view(1, 3, 1)
    return torch.baddbmm(biases.unsqueeze(2), matrices, x.flatten(2)).clamp_(low, high).view_as(x)


def augment(x: torch.Tensor, kinds: list[str], translate: int, rotate: float = 0.0, zoom: float = 0.0,
            colour: float = 0.0, normalisation: tuple[list[float], list[float]] | None = None) -> torch.Tensor:
    """Batched augmentation on the device: random colour jitter of up to `colour` each way ("colour", given the
    images' (mean, std) normalisation), a random rotation by up to `rotate` degrees and change of scale by up
    to `zoom` each way ("affine", Lin et al. 2015's deformations), then a random horizontal flip ("flip") and a
    random translation by up to `translate` pixels each way with zero fill, i.e. a random crop of the padded
    image ("crop"), in one gather."""
    if "colour" in kinds:
        x = jitter_colour(x, colour, *normalisation)
    if "affine" in kinds:
        uniform = torch.rand(2, len(x), device=x.device) * 2 - 1
        x = rotate_and_zoom(x, uniform[0] * math.radians(rotate), 1 + uniform[1] * zoom)
    if "flip" not in kinds and "crop" not in kinds:
        return x
    table = augment_table("flip" in kinds, "crop" in kinds, x.device, translate)
    choice = torch.randint(len(table), (len(x),), device=x.device)
    flat = torch.nn.functional.pad(x.flatten(1), (0, 1))
    return flat.gather(1, table[choice]).view_as(x)


@functools.cache
def _mixer(kind: str, alpha: float):
    from torchvision.transforms import v2

    return (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=alpha, num_classes=len(CLASSES))


def mix(x: torch.Tensor, labels: torch.Tensor, kind: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (a blend of two images) or CutMix (a box of one image pasted into another) on the whole batch,
    the labels blended in the same proportion: torchvision's batched transforms, which pair each image with its
    neighbour in the (already shuffled) batch. Returns the images and soft targets, N x 10."""
    return _mixer(kind, alpha)(x, labels)


def class_counts(labels) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=len(CLASSES)).tolist()

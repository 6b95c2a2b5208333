"""Classify new images with a trained model: the seed's inference phase, from Python and from the command line.

Preprocessing policy, identical for every input: EXIF rotation applied; any mode converted to 8-bit RGB
(16-bit and float images rescaled, transparency composited onto white, CMYK and palettes converted by Pillow);
the largest centred square cropped (CIFAR-10 images are square and centred on the object); resized to 32x32
with Pillow's antialiased bicubic filter (an image already 32x32 is left untouched); then normalised with the
mean and std stored in the checkpoint, exactly as in training and evaluation.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_mlp import UserError, checkpoint
from cifar_mlp.data import normalise, resolve_device
from cifar_mlp.model import predict_logits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 64_000_000  # larger images are refused as possible decompression bombs
SIZE = 32


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file, or raise a one-line UserError that names it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise UserError(f"{path}: {image.width}x{image.height} pixels exceeds the {max_pixels:,}-pixel limit "
                                "(possible decompression bomb); shrink the image first")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_cifar(image: Image.Image) -> np.ndarray:
    """A PIL image -> uint8 array 3 x 32 x 32 (RGB, centre-square crop, antialiased resize)."""
    image = to_rgb(image)
    side = min(image.size)
    if image.size != (side, side):
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def as_image(item) -> Image.Image:
    """A path, a PIL image, or a numpy array (H x W, H x W x 3/4; uint8, or float in [0, 1]) -> PIL image."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, str | os.PathLike):
        return load_image(item)
    if isinstance(item, np.ndarray):
        array = item
        if array.dtype.kind == "f":
            array = np.clip(array * 255 + 0.5, 0, 255).astype(np.uint8)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise UserError(f"array of shape {array.shape} and dtype {item.dtype} is not an image; pass H x W, "
                            "H x W x 3 or H x W x 4, uint8 or float in [0, 1]")
        return Image.fromarray(array)
    raise UserError(f"cannot classify an object of type {type(item).__name__}; pass paths, PIL images or arrays")


@dataclass
class Prediction:
    labels: np.ndarray  # predicted class index per image
    probabilities: np.ndarray  # N x 10 softmax probabilities


class Classifier:
    """A trained model with its preprocessing: `Classifier.from_checkpoint(path).predict(images)`."""

    def __init__(self, model, mean, std, classes, device="cpu", batch_size: int = 1024):
        self.model, self.mean, self.std = model.to(device).eval(), list(mean), list(std)
        self.classes, self.device, self.batch_size = list(classes), torch.device(device), batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> "Classifier":
        """A checkpoint file, or a run directory (its checkpoints/best.pt)."""
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoints" / "best.pt"
        ckpt = checkpoint.load(path)
        return cls(checkpoint.build_model(ckpt, path), ckpt["mean"], ckpt["std"], ckpt["classes"],
                   resolve_device(device))

    def predict(self, images) -> Prediction:
        """Classify a list of images (paths, PIL images or arrays) in batches."""
        return self.predict_pixels([to_cifar(as_image(item)) for item in images])

    def predict_pixels(self, pixels: list[np.ndarray]) -> Prediction:
        """Classify preprocessed uint8 images (3 x 32 x 32 each)."""
        batch = np.stack(pixels) if len(pixels) else np.zeros((0, 3, SIZE, SIZE), np.uint8)
        x = normalise(batch, self.mean, self.std, self.device)
        probs = predict_logits(self.model, x, self.batch_size).double().softmax(1).cpu().numpy()
        return Prediction(probs.argmax(1), probs)


def collect_paths(inputs: list[str]) -> list[Path]:
    """Files as given, folders walked (sorted) for files with an image suffix."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        else:
            paths.append(item)
    return paths


def classify_files(classifier: Classifier, inputs: list[str], top_k: int = 3) -> tuple[list[dict], list[dict]]:
    """(results, errors): the top-k classes of every readable image; one error line for every other file."""
    images, good, errors = [], [], []
    for path in collect_paths(inputs):
        try:
            images.append(to_cifar(load_image(path)))
            good.append(path)
        except UserError as e:
            errors.append({"path": str(path), "error": str(e)})
    results = []
    if good:
        probs = classifier.predict_pixels(images).probabilities
        for path, p in zip(good, probs, strict=True):
            order = np.argsort(-p, kind="stable")[:top_k]
            results.append({"path": str(path),
                            "top": [{"class": classifier.classes[i], "probability": float(p[i])} for i in order]})
    return results, errors

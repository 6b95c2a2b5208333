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
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_mlp import UserError

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
    """A trained model with its preprocessing: `Classifier.from_checkpoint(path).predict(images)`.

    `probabilities` maps a batch of uint8 images (N x 3 x 32 x 32) to their N x 10 softmax probabilities: a
    PyTorch model with the checkpoint's normalisation, or an ONNX Runtime session whose graph holds it (then
    torch is not imported at all)."""

    def __init__(self, probabilities, classes, batch_size: int = 1024):
        self.probabilities, self.classes, self.batch_size = probabilities, list(classes), batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> "Classifier":
        """A checkpoint file, a run directory (its checkpoints/best.pt), or an ONNX file (`cifar-mlp export`)."""
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path)
        return cls.from_torch_checkpoint(path, device)

    @classmethod
    def from_torch_checkpoint(cls, path: Path, device: str = "cpu") -> "Classifier":
        import torch

        from cifar_mlp import checkpoint
        from cifar_mlp.data import normalise, resolve_device
        from cifar_mlp.model import predict_logits

        path, _ = checkpoint.locate(path)
        ckpt = checkpoint.load(path)
        device = resolve_device(device)
        model = checkpoint.build_model(ckpt, path).to(device).eval()

        def probabilities(batch: np.ndarray) -> np.ndarray:
            x = normalise(torch.from_numpy(batch), ckpt["mean"], ckpt["std"], device)
            return predict_logits(model, x).double().softmax(1).cpu().numpy()

        return cls(probabilities, ckpt["classes"])

    @classmethod
    def from_onnx(cls, path: Path) -> "Classifier":
        """An ONNX file written by `cifar-mlp export`, run by ONNX Runtime on the CPU."""
        import json

        try:
            import onnxruntime
        except ImportError:
            raise UserError("predicting from an ONNX file needs ONNX Runtime: pip install 'cifar-mlp[onnx]'") from None
        if not path.is_file():
            raise UserError(f"ONNX file {path} not found; write one with cifar-mlp export RUN --out {path}")
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable or foreign files
            raise UserError(f"{path} is not an ONNX model written by cifar-mlp export ({type(e).__name__}); "
                            "export it again with cifar-mlp export") from None

        def probabilities(batch: np.ndarray) -> np.ndarray:
            return session.run(["probabilities"], {"images": np.ascontiguousarray(batch)})[0].astype(np.float64)

        return cls(probabilities, classes)

    def predict(self, images) -> Prediction:
        """Classify a list of images (paths, PIL images or arrays) in batches."""
        return self.predict_pixels([to_cifar(as_image(item)) for item in images])

    def predict_pixels(self, pixels: list[np.ndarray]) -> Prediction:
        """Classify preprocessed uint8 images (3 x 32 x 32 each)."""
        batch = np.stack(pixels) if len(pixels) else np.zeros((0, 3, SIZE, SIZE), np.uint8)
        probs = np.concatenate([self.probabilities(batch[i: i + self.batch_size])
                                for i in range(0, len(batch), self.batch_size)] or [np.zeros((0, len(self.classes)))])
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

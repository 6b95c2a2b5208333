"""Checkpoints: written atomically, read as untrusted input (weights_only), checked against the architecture."""

import io
import os
from pathlib import Path

import torch

from cifar_mlp import UserError, rundir
from cifar_mlp.config import ModelConfig, from_dict
from cifar_mlp.networks import build as build_architecture

REQUIRED_KEYS = {"model", "config", "epoch", "mean", "std", "classes", "split"}


def save_atomic(obj, path: Path) -> None:
    """Serialise in memory, then write atomically (rundir.write_bytes): a kill at any moment leaves a loadable
    file, and a full disk a one-line error that states the size needed."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    rundir.write_bytes(path, buffer.getbuffer())


def locate(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None): a run directory stands for its checkpoints/best.pt."""
    path = Path(path)
    if path.is_dir():
        return path / "checkpoints" / "best.pt", path
    return path, path.parent.parent if path.parent.name == "checkpoints" else None


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train a model first (cifar-mlp train) or give another path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}); "
                        "use another checkpoint or retrain") from None
    if not isinstance(ckpt, dict) or not ckpt.keys() >= REQUIRED_KEYS:
        raise UserError(f"checkpoint {path} is not a cifar-mlp checkpoint (missing keys); use one written by "
                        "cifar-mlp train")
    return ckpt


def build_model(ckpt: dict, path, model_cfg: ModelConfig | None = None):
    """The checkpoint's model, built from model_cfg (default: the checkpoint's own config) and its weights."""
    cfg = model_cfg or from_dict(ckpt["config"]).model
    model = build_architecture(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"checkpoint {path} holds a different architecture than the config ({cfg.architecture}, "
                        f"members {cfg.members}, widths {cfg.widths}, norm {cfg.norm}): {detail}; use the run's own "
                        "config or retrain") from None
    return model

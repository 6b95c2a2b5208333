"""Export a trained model to ONNX: one graph from uint8 images to logits and probabilities.

The graph takes `images`, uint8 N x 3 x 32 x 32 (RGB, the CIFAR-10 batch layout) and does everything the
checkpoint's model needs: scaling to [0, 1], the train split's normalisation, any fixed projection, the network
and, for an ensemble, the mean of the members' probabilities. Its metadata_props carry the class names, the
normalisation, the run's test accuracy, the cifar-mlp version and the git commit.
"""

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cifar_mlp import UserError, __version__, checkpoint, environment, rundir

OPSET = 18


class ImageClassifier(nn.Module):
    """The model with its preprocessing, as the ONNX graph holds it: uint8 images in, (logits, probabilities)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((images.float() / 255 - self.mean) / self.std)
        return logits, logits.softmax(1)


def metadata(ckpt: dict, run_dir: Path | None) -> dict[str, str]:
    """What a deployment needs to know about the model, as ONNX metadata_props (strings)."""
    test = None
    if run_dir is not None and (run_dir / rundir.METRICS).is_file():
        test = rundir.read_metrics(run_dir)["splits"].get("test", {}).get("accuracy")
    commit = rundir.read_environment(run_dir).get("git_commit") if run_dir and (
        run_dir / rundir.ENVIRONMENT).is_file() else environment.git_commit()
    return {
        "classes": json.dumps(list(ckpt["classes"])),
        "normalisation": json.dumps({"mean": list(ckpt["mean"]), "std": list(ckpt["std"]),
                                     "input": "uint8 RGB N x 3 x 32 x 32, scaled to [0, 1] inside the graph"}),
        "test_accuracy": "not evaluated" if test is None else f"{test:.6f}",
        "epoch": str(ckpt["epoch"]),
        "cifar_mlp_version": __version__,
        "git_commit": commit or "unknown",
    }


def export_onnx(source, out) -> Path:
    """Write the ONNX file of a run directory or checkpoint, checked by onnx.checker; returns its path."""
    try:
        import onnx
    except ImportError:
        raise UserError("export to ONNX needs the onnx packages: pip install 'cifar-mlp[onnx]'") from None
    path, run_dir = checkpoint.locate(source)
    ckpt = checkpoint.load(path)
    wrapped = ImageClassifier(checkpoint.build_model(ckpt, path), ckpt["mean"], ckpt["std"]).eval()
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (example,), input_names=["images"],
                                    output_names=["logits", "probabilities"], opset_version=OPSET,
                                    dynamic_shapes=({0: torch.export.Dim("N")},), dynamo=True, verbose=False)
        program.save(buffer)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, metadata(ckpt, run_dir))
    onnx.checker.check_model(model, full_check=True)
    out = Path(out)
    rundir.write_bytes(out, model.SerializeToString())
    return out

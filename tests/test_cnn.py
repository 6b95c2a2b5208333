"""The comparator CNN: its fixed whitening layer, its config rules, and the same pipeline as the MLP (train,
exact resume, evaluate, report, predict, export)."""

import dataclasses

import numpy as np
import pytest
import torch

from cifar_mlp import UserError, checkpoint, config
from cifar_mlp.cnn import CNN
from cifar_mlp.evaluate import evaluate_run
from cifar_mlp.export import export_onnx
from cifar_mlp.predict import Classifier
from cifar_mlp.report import write_report
from cifar_mlp.rundir import read_history
from cifar_mlp.train import train


def cnn_config(tiny_config, **train_changes):
    return dataclasses.replace(
        tiny_config, model=config.ModelConfig(architecture="cnn", widths=[8, 16, 16], dropout=0.0),
        data=dataclasses.replace(tiny_config.data, augment=["flip", "crop"]),
        train=dataclasses.replace(tiny_config.train, **train_changes))


def test_the_first_layer_whitens_2x2_patches():
    model = CNN(config.ModelConfig(architecture="cnn", widths=[8, 8, 8]))
    images = torch.randn(400, 3, 32, 32) @ torch.randn(32, 32) * 0.3 + 0.1  # correlated pixels
    model.fit_input_map(images)
    half = model.whiten_weight[:12].flatten(1)
    patches = torch.nn.functional.unfold(images, 2).transpose(1, 2).reshape(-1, 12)
    features = patches @ half.T + model.whiten_bias[:12]
    covariance = torch.cov(features.T)
    assert torch.allclose(features.mean(0), torch.zeros(12), atol=0.05)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)
    assert torch.equal(model.whiten_weight[12:], -model.whiten_weight[:12])


def test_the_cnn_trains_resumes_exactly_evaluates_and_reports(tiny_config, synthetic_root, tmp_path):
    cfg = cnn_config(tiny_config)
    full = train(cfg, tmp_path / "full", synthetic_root, allow_download=False, quiet=True)
    assert full[-1]["val_loss"] < full[0]["val_loss"]
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2)), tmp_path / "cut", synthetic_root,
          allow_download=False, quiet=True)
    train(cfg, tmp_path / "cut", synthetic_root, allow_download=False, quiet=True, resume=True)
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and a["whiten_weight"].abs().sum() > 0
    assert [r["val_loss"] for r in read_history(tmp_path / "cut")] == [r["val_loss"] for r in full]
    metrics = evaluate_run(tmp_path / "full", data_dir=synthetic_root, device="cpu", quiet=True, allow_download=False)
    assert 0 <= metrics["splits"]["test"]["accuracy"] <= 1
    text = write_report(tmp_path / "full")[0].read_text()
    assert "the comparator, a small convolutional network" in text and "blocks.0.0: Conv2d" in text
    images = [np.full((32, 32, 3), v, np.uint8) for v in (20, 200)]
    by_torch = Classifier.from_checkpoint(tmp_path / "full").predict(images).probabilities
    by_onnx = Classifier.from_checkpoint(export_onnx(tmp_path / "full", tmp_path / "cnn.onnx")).predict(images)
    np.testing.assert_allclose(by_onnx.probabilities, by_torch, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"widths": [8, 16]}, "takes three model.widths"),
    ({"whitening": "project"}, "model.whitening is an MLP option"),
    ({"members": 2}, "model.members is an MLP option"),
    ({"residual": True}, "model.residual is an MLP option"),
])
def test_mlp_options_are_refused_for_the_cnn(changes, message):
    raw = {"model": {"architecture": "cnn", "widths": [8, 16, 16], **changes}}
    with pytest.raises(UserError, match=message):
        config.from_dict(raw)


def test_the_preset_is_valid_and_named_a_comparator():
    cfg = config.load("cnn")
    assert cfg.model.architecture == "cnn" and "comparator" in (config.PRESET_DIR / "cnn.toml").read_text()

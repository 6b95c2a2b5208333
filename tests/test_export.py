"""ONNX export: a checked graph from uint8 images, its metadata, parity with PyTorch on a whole test split, and
prediction through ONNX Runtime without torch."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from cifar_mlp import UserError, checkpoint
from cifar_mlp.cli import main
from cifar_mlp.data import load_cifar10, make_splits
from cifar_mlp.evaluate import predict_probs
from cifar_mlp.export import export_onnx
from cifar_mlp.predict import Classifier
from cifar_mlp.train import train


def parity(run_dir, root, onnx_path, val_per_class=5):
    """ONNX Runtime's and PyTorch's probabilities on the whole test split, from the same uint8 images."""
    path = run_dir / "checkpoints" / "best.pt"
    ckpt = checkpoint.load(path)
    data = load_cifar10(root, allow_download=False)
    splits = make_splits(data, val_per_class, 0, "cpu", ckpt["mean"], ckpt["std"])
    expected = predict_probs(checkpoint.build_model(ckpt, path), splits.test.images)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["probabilities"], {"images": data.test_images[i: i + 1000]})[0]
                          for i in range(0, len(data.test_images), 1000)])
    return expected, got


@pytest.fixture
def evaluated(evaluated_run):
    return evaluated_run


def test_the_graph_is_checked_and_carries_its_metadata(evaluated, tmp_path):
    run_dir, _, metrics = evaluated
    out = export_onnx(run_dir, tmp_path / "model.onnx")
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    (images,), outputs = model.graph.input, model.graph.output
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in outputs] == ["logits", "probabilities"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"])[3] == "cat"
    assert json.loads(props["normalisation"])["mean"] == checkpoint.load(run_dir / "checkpoints/best.pt")["mean"]
    assert float(props["test_accuracy"]) == pytest.approx(metrics["splits"]["test"]["accuracy"], abs=1e-6)
    assert props["cifar_mlp_version"] and props["git_commit"]


def test_parity_on_the_whole_test_split(evaluated, tmp_path):
    run_dir, root, _ = evaluated
    expected, got = parity(run_dir, root, export_onnx(run_dir / "checkpoints" / "last.pt", tmp_path / "m.onnx"))
    assert np.abs(got - expected).max() < 1e-5 and (got.argmax(1) == expected.argmax(1)).all()
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    one = session.run(None, {"images": np.zeros((1, 3, 32, 32), np.uint8)})
    assert one[0].shape == one[1].shape == (1, 10) and abs(one[1].sum() - 1) < 1e-5


def test_an_ensemble_behind_a_projection_exports_as_one_graph(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(
        tiny_config.model, members=3, whitening="project", whitening_dims=40, input_dropout=0.2))
    train(cfg, tmp_path / "run", synthetic_root, allow_download=False, quiet=True)
    expected, got = parity(tmp_path / "run", synthetic_root, export_onnx(tmp_path / "run", tmp_path / "e.onnx"))
    assert np.abs(got - expected).max() < 1e-5 and (got.argmax(1) == expected.argmax(1)).all()


def test_parity_on_the_real_test_split(real_root, tmp_path):
    main(["train", "--config", "seed", "--epochs", "1", "--lr", "1e-3", "--run-dir", str(tmp_path / "run"),
          "--data-dir", str(real_root), "--no-download", "--device", "cpu", "--quiet"])
    expected, got = parity(tmp_path / "run", real_root, export_onnx(tmp_path / "run", tmp_path / "r.onnx"), 500)
    assert len(got) == 10_000
    assert np.abs(got - expected).max() < 1e-5 and (got.argmax(1) == expected.argmax(1)).all()


BLOCK_TORCH = """
import json, sys
sys.modules["torch"] = None  # any import of torch now fails
from cifar_mlp.predict import Classifier, classify_files
results, errors = classify_files(Classifier.from_checkpoint(sys.argv[1]), sys.argv[2:], 3)
print(json.dumps({"results": results, "errors": errors}))
"""


def test_predict_from_onnx_needs_no_torch_and_matches_the_checkpoint(evaluated, tmp_path, capsys):
    run_dir, root, _ = evaluated
    out = export_onnx(run_dir, tmp_path / "model.onnx")
    data = load_cifar10(root, allow_download=False)
    files = []
    for i in range(5):
        files.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(data.test_images[i].transpose(1, 2, 0)).save(files[-1])
    (tmp_path / "broken.png").write_text("not an image")
    files.append(str(tmp_path / "broken.png"))
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(out), *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    onnx_result = json.loads(done.stdout)
    torch_probs = Classifier.from_checkpoint(run_dir).predict(files[:5]).probabilities
    onnx_probs = Classifier.from_checkpoint(out).predict(files[:5]).probabilities
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)
    assert [r["top"][0]["class"] for r in onnx_result["results"]] == [
        Classifier.from_checkpoint(run_dir).classes[i] for i in torch_probs.argmax(1)]
    assert len(onnx_result["errors"]) == 1 and "broken.png" in onnx_result["errors"][0]["error"]
    with pytest.raises(SystemExit) as info:
        main(["predict", "--checkpoint", str(out), *files])
    captured = capsys.readouterr()
    assert info.value.code == 1 and captured.out.count("\n") == 5 and "broken.png" in captured.err


def test_export_and_onnx_errors(evaluated, tmp_path, capsys):
    run_dir, _, _ = evaluated
    with pytest.raises(UserError, match="not found"):
        export_onnx(tmp_path / "nothing", tmp_path / "x.onnx")
    (tmp_path / "fake.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="is not an ONNX model written by cifar-mlp export"):
        Classifier.from_checkpoint(tmp_path / "fake.onnx")
    with pytest.raises(UserError, match="ONNX file .* not found"):
        Classifier.from_checkpoint(tmp_path / "missing.onnx")
    main(["export", str(run_dir), "--out", str(tmp_path / "new-folder" / "m.onnx")])
    assert "exported" in capsys.readouterr().out and (tmp_path / "new-folder" / "m.onnx").stat().st_size > 1000


def test_without_the_onnx_packages_one_line_errors(evaluated, tmp_path, monkeypatch):
    run_dir, _, _ = evaluated
    out = export_onnx(run_dir, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"pip install 'cifar-mlp\[onnx\]'"):
        export_onnx(run_dir, tmp_path / "again.onnx")
    with pytest.raises(UserError, match=r"needs ONNX Runtime: pip install 'cifar-mlp\[onnx\]'"):
        Classifier.from_checkpoint(out)


def test_per_image_standardisation_exports_with_the_model(tiny_config, synthetic_root, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(
        tiny_config.model, image_norm=True, whitening="project", whitening_dims=40))
    train(cfg, tmp_path / "run", synthetic_root, allow_download=False, quiet=True)
    expected, got = parity(tmp_path / "run", synthetic_root, export_onnx(tmp_path / "run", tmp_path / "g.onnx"))
    assert np.abs(got - expected).max() < 1e-5 and (got.argmax(1) == expected.argmax(1)).all()

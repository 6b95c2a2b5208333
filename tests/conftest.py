"""Shared fixtures: a small synthetic CIFAR-10 in the official batch format, tiny configs, the real dataset."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifar_mlp.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

REAL_ROOT = os.environ.get("CIFAR10_DIR")


def write_batch(path: Path, images: np.ndarray, labels) -> None:
    entry = {"batch_label": path.name, "labels": [int(v) for v in labels], "data": images.reshape(len(images), -1),
             "filenames": [f"img_{i}.png" for i in range(len(images))]}
    path.write_bytes(pickle.dumps(entry))


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable images: each class has its own colour and a bright stripe at a class-dependent row."""
    images = rng.integers(0, 96, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, c % 3] += 60
        images[i, :, 3 * c : 3 * c + 3, :] = 250
    return images


def write_synthetic_cifar(root: Path, per_class_per_batch: int = 6, test_per_class: int = 10, seed: int = 0) -> Path:
    """root/cifar-10-batches-py with 5 train batches and a test batch; 30 train images per class by default."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = rng.permutation(np.repeat(np.arange(10), per_class_per_batch))
        write_batch(folder / f"data_batch_{b}", synthetic_images(labels, rng), labels)
    labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    write_batch(folder / "test_batch", synthetic_images(labels, rng), labels)
    return root


@pytest.fixture
def synthetic_root(tmp_path) -> Path:
    return write_synthetic_cifar(tmp_path / "cifar")


@pytest.fixture
def tiny_config() -> Config:
    return Config(
        data=DataConfig(val_per_class=5, split_seed=0),
        model=ModelConfig(widths=[64, 32]),
        optim=OptimConfig(lr=3e-3),
        train=TrainConfig(epochs=4, batch_size=64, seed=0, device="cpu"),
    )


@pytest.fixture
def real_root() -> Path:
    if not REAL_ROOT or not Path(REAL_ROOT).exists():
        if os.environ.get("REQUIRE_REAL_DATA"):
            pytest.fail(f"REQUIRE_REAL_DATA is set but CIFAR10_DIR={REAL_ROOT!r} is not a folder")
        pytest.skip("set CIFAR10_DIR to the real CIFAR-10 to run this test")
    return Path(REAL_ROOT)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished tiny run on synthetic data (shared, read-only): (run_dir, data_root)."""
    from cifar_mlp.train import train

    base = tmp_path_factory.mktemp("trained")
    root = write_synthetic_cifar(base / "cifar")
    cfg = Config(data=DataConfig(val_per_class=5), model=ModelConfig(widths=[64, 32]), optim=OptimConfig(lr=3e-3),
                 train=TrainConfig(epochs=3, batch_size=64, device="cpu"))
    train(cfg, base / "run", root, allow_download=False, quiet=True)
    return base / "run", root


@pytest.fixture(scope="session")
def evaluated_run(trained_run, tmp_path_factory):
    """A copy of trained_run, evaluated on the three splits (shared): (run_dir, data_root, metrics)."""
    import shutil

    from cifar_mlp.evaluate import evaluate_run

    run_dir, root = trained_run
    copy = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(run_dir, copy)
    metrics = evaluate_run(copy, data_dir=root, device="cpu", quiet=True, allow_download=False)
    return copy, root, metrics

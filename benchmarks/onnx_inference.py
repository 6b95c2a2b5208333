"""Inference throughput on the CPU: ONNX Runtime against PyTorch, at batch 1 and batch 1024.

    python benchmarks/onnx_inference.py --data-dir ../shared/cifar10 [--config seed] [--run-dir RUN]

Both sides go from uint8 images to probabilities, the preprocessing included (`Classifier.probabilities`: the
checkpoint's normalisation and model in PyTorch, or the exported graph in ONNX Runtime). Without --run-dir it
first trains the preset for one epoch into a temporary folder (speed does not depend on the weights).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifar_mlp import environment
from cifar_mlp.data import load_cifar10, resolve_data_dir
from cifar_mlp.export import export_onnx
from cifar_mlp.predict import Classifier


def images_per_second(classify, images: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    """Classify consecutive batches of the test images for about `seconds`, after a warm-up batch."""
    classify(images[:batch])
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = images[i: i + batch]
        classify(chunk)
        done += len(chunk)
        i = (i + batch) % (len(images) - batch)
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--config", default="seed")
    parser.add_argument("--run-dir", help="an existing run (default: a fresh one-epoch run of --config)")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir).resolve()
    images = load_cifar10(data_dir, allow_download=False).test_images
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        if not args.run_dir:
            subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "train", "--config", args.config, "--epochs", "1",
                            "--set", "optim.warmup_epochs=0.0", "--device", "cpu", "--run-dir", str(run_dir),
                            "--data-dir", str(data_dir), "--no-download", "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
        onnx_path = export_onnx(run_dir, Path(tmp) / "model.onnx")
        backends = {"pytorch": Classifier.from_checkpoint(run_dir).probabilities,
                    "onnxruntime": Classifier.from_checkpoint(onnx_path).probabilities}
        print(f"machine: {environment.machine_line(environment.describe('cpu'))}; onnxruntime "
              f"{__import__('onnxruntime').__version__}, {torch.get_num_threads()} torch threads")
        print(f"model: {args.config} ({'given run' if args.run_dir else 'one-epoch run'}), uint8 images -> "
              "probabilities, preprocessing included")
        for batch in (1, 1024):
            rates = {name: images_per_second(f, images, batch) for name, f in backends.items()}
            print(f"batch {batch:>4}: " + ", ".join(f"{name} {rate:,.0f} images/s ({1e3 * batch / rate:.3f} ms per "
                                                     "batch)" for name, rate in rates.items())
                  + f"; onnxruntime / pytorch = {rates['onnxruntime'] / rates['pytorch']:.2f}x")


if __name__ == "__main__":
    main()

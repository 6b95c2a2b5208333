"""Dataset load time, inference time for all 60,000 images, and the wall time and peak memory of the whole
`cifar-mlp evaluate` command (three splits, every CSV and PNG).

    python benchmarks/evaluate_speed.py --data-dir ../shared/cifar10 [--run-dir RUN]

Without --run-dir it first trains the seed model for one epoch into a temporary folder (the evaluation's cost
does not depend on how well the model is trained).
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar_mlp import checkpoint, environment
from cifar_mlp.data import load_cifar10, make_splits, resolve_data_dir
from cifar_mlp.model import predict_logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--run-dir", help="an existing run to evaluate (default: a fresh one-epoch seed run)")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir).resolve()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        if not args.run_dir:
            subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "train", "--config", "seed", "--epochs", "1",
                            "--device", "cpu", "--run-dir", str(run_dir), "--data-dir", str(data_dir),
                            "--no-download", "--quiet"], check=True, stdout=subprocess.DEVNULL)
        # The command first, from a parent that holds no data, so that nothing else competes with it.
        out = Path(tmp) / "eval"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cifar_mlp.evaluate", str(run_dir), "--out", str(out), "--data-dir",
                        str(data_dir), "--no-download", "--device", "cpu"], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        files = len(list(out.iterdir()))

        data = load_cifar10(data_dir, allow_download=False)
        ckpt = checkpoint.load(run_dir / "checkpoints" / "best.pt")
        model = checkpoint.build_model(ckpt, "best.pt")
        splits = make_splits(data, 500, 0, "cpu", ckpt["mean"], ckpt["std"])
        images = torch.cat([splits.train.images, splits.validation.images, splits.test.images])
        predict_logits(model, images[:8192])
        start = time.perf_counter()
        predict_logits(model, images)
        inference = time.perf_counter() - start

    print(f"machine: {environment.machine_line(environment.describe('cpu'))}")
    print(f"dataset load (60,000 images, 6 batch files): {data.load_seconds:.2f} s")
    print(f"inference, seed model, 60,000 images: {inference:.3f} s ({60000 / inference:,.0f} images/s)")
    print(f"`cifar-mlp evaluate` wall time, 3 splits, {files} files written: {wall:.1f} s; "
          f"peak memory {peak_mb:,.0f} MB (the largest child process)")


if __name__ == "__main__":
    main()

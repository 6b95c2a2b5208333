"""Wall time for a preset to first reach a validation accuracy (default: the fast preset, 55%).

    python benchmarks/time_to_accuracy.py --data-dir ../shared/cifar10 [--config fast] [--target 0.55]

The time counted is training time (the epochs' own timings, validation included), summed up to the first
epoch whose validation accuracy reaches the target.
"""

import argparse
import tempfile
from pathlib import Path

from cifar_mlp import config, environment
from cifar_mlp.data import resolve_device
from cifar_mlp.train import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--config", default="fast")
    parser.add_argument("--target", type=float, default=0.55)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    print(f"machine: {environment.machine_line(environment.describe(device))}")
    for seed in map(int, args.seeds.split(",")):
        cfg = config.load(args.config, [f"train.seed={seed}", f'train.device="{device.type}"'])
        with tempfile.TemporaryDirectory() as tmp:
            history = train(cfg, Path(tmp) / "run", args.data_dir, allow_download=False, quiet=True)
        elapsed = 0.0
        for row in history:
            elapsed += row["epoch_time_s"]
            if row["val_acc"] >= args.target:
                print(f"{args.config} seed {seed}: {100 * args.target:.0f}% validation accuracy at epoch "
                      f"{row['epoch']} after {elapsed:.1f} s of training")
                break
        else:
            print(f"{args.config} seed {seed}: never reached {100 * args.target:.0f}% (best "
                  f"{100 * max(r['val_acc'] for r in history):.1f}%) in {elapsed:.1f} s")


if __name__ == "__main__":
    main()

"""The comparator CNN's target: at least 85% test accuracy within 15 minutes of training, and the time to 80%.

    python benchmarks/cnn_target.py --data-dir ../shared/cifar10 [--seeds 0,1,2] [--out runs/cnn-target]

Runs `cifar-mlp run --config cnn --seed S` for each seed (train, then evaluate the best checkpoint on the three
splits), one after the other, then prints per seed and as mean ± std: test accuracy, training time (the sum of
the epochs' times, per-epoch validation included) and the training time until validation accuracy first
reached 80%. Run directories are kept under --out.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from cifar_mlp import environment, rundir
from cifar_mlp.data import resolve_data_dir

TARGET_ACCURACY, TARGET_SECONDS, MILESTONE = 0.85, 15 * 60, 0.80


def spread(values: list[float], scale: float = 1, digits: int = 1) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/cnn-target")
    parser.add_argument("--config", default="cnn")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir).resolve()
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = Path(args.out) / f"{args.config}-s{seed}"
        if not (run_dir / rundir.METRICS).is_file():
            subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "run", "--config", args.config, "--seed", str(seed),
                            "--run-dir", str(run_dir), "--data-dir", str(data_dir), "--no-download", "--quiet",
                            "--overwrite"], check=True, stdout=subprocess.DEVNULL)
        history = rundir.read_history(run_dir)
        seconds, elapsed, to_milestone = sum(r["epoch_time_s"] for r in history), 0.0, None
        for row in history:
            elapsed += row["epoch_time_s"]
            if to_milestone is None and row["val_acc"] >= MILESTONE:
                to_milestone = elapsed
        test = rundir.read_metrics(run_dir)["splits"]["test"]["accuracy"]
        results.append((seed, test, seconds, to_milestone))
        reached = f"{to_milestone:.0f} s" if to_milestone is not None else "not reached"
        print(f"seed {seed}: test {100 * test:.2f}%, {len(history)} epochs in {seconds:.0f} s, validation 80% after "
              f"{reached} ({run_dir})", flush=True)
    env = rundir.read_environment(Path(args.out) / f"{args.config}-s{results[0][0]}")
    tests, times = [r[1] for r in results], [r[2] for r in results]
    milestones = [r[3] for r in results if r[3] is not None]
    print(f"machine: {environment.machine_line(env)}, bf16 on the CPU: {env['cpu_bf16']}")
    print(f"{args.config} over {len(results)} seeds: test accuracy {spread(tests, 100)}%, training "
          f"{spread(times, 1, 0)} s, time to 80% validation "
          f"{spread(milestones, 1, 0) + ' s' if milestones else 'not reached'}")
    met = min(tests) >= TARGET_ACCURACY and max(times) <= TARGET_SECONDS
    print(f"target (>= {100 * TARGET_ACCURACY:.0f}% test within {TARGET_SECONDS // 60} min, every seed): "
          f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()

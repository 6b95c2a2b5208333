"""The sweep engine's own cost per trial, against the runs it schedules.

    python benchmarks/sweep_overhead.py --data-dir ../shared/cifar10 [--trials 6] [--storage URL]

Runs `cifar-mlp sweep` (a fresh process, as a user would) on a grid of one-epoch seed-recipe trials, then reads
each trial's own time (training, evaluation and report, measured inside the trial) from the storage. The
engine's overhead is the command's wall time minus the trials' own time, per trial: process start-up, imports,
loading the dataset once, the storage's round trips, and writing the summary. Target: under 2 s per trial.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from cifar_mlp import environment
from cifar_mlp.data import resolve_data_dir
from cifar_mlp.sweep import open_storage

SPEC = """
[study]
name = "overhead"
base = "seed"
seeds = [0]
[fixed]
"train.epochs" = 1
"train.device" = "cpu"
[space]
"optim.weight_decay" = {values}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--storage", help="a database URL (default: the embedded journal file)")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(SPEC.format(values=[round(0.01 * (i + 1), 2) for i in range(args.trials)]).replace(
            'name = "overhead"', f'name = "overhead-{time.time_ns()}"'))
        study_dir = Path(tmp) / "study"
        command = [sys.executable, "-m", "cifar_mlp.cli", "sweep", str(spec), "--study-dir", str(study_dir),
                   "--data-dir", str(data_dir), "--no-download", "--quiet",
                   *(["--storage", args.storage] if args.storage else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        storage = open_storage(args.storage, study_dir, 10)
        name = next(n for n in optuna.get_all_study_names(storage) if n.startswith("overhead-"))
        trials = optuna.load_study(study_name=name, storage=storage).trials
        own = [t.user_attrs["trial_seconds"] for t in trials]
        train = [t.user_attrs["train_seconds"] for t in trials]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rerun = time.perf_counter() - start
    overhead = (wall - sum(own)) / len(trials)
    print(f"machine: {environment.machine_line(environment.describe('cpu'))}")
    print(f"storage: {'database ' + args.storage.split('@')[-1] if args.storage else 'embedded journal file'}")
    print(f"{len(trials)} one-epoch seed-recipe trials in {wall:.1f} s of wall time")
    print(f"per trial: {sum(own) / len(own):.2f} s of the run itself ({sum(train) / len(train):.2f} s training, the "
          f"rest evaluation and report)")
    print(f"engine overhead per trial: {overhead:.2f} s (target < 2 s), {100 * overhead * len(trials) / wall:.0f}% of "
          "the wall time")
    print(f"rerunning the finished study (trains nothing, rewrites the summary): {rerun:.1f} s")


if __name__ == "__main__":
    main()

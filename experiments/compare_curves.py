"""How a trial's validation curve went against a baseline run's, epoch by epoch: the figures of docs/round2's
"best's neighbourhood at full length" (each trial against the preset's own seed-0 run).

    python experiments/compare_curves.py BASELINE_RUN TRIAL_RUN [TRIAL_RUN ...] [--from 20]

For each trial, over the epochs both runs have from --from on: at how many the trial's validation accuracy was
higher, the mean difference (points), the mean difference over the last 10 of those epochs, and the last epoch's
train accuracy (train mode, so dropout on) of both. A one-seed trial is within noise of the baseline by these
figures alone; they show where in the schedule a difference arises.
"""

import argparse
import statistics

from cifar_mlp.rundir import read_history


def compare(baseline: list[dict], trial: list[dict], first_epoch: int) -> dict:
    epochs = min(len(baseline), len(trial))
    diffs = [trial[i]["val_acc"] - baseline[i]["val_acc"] for i in range(first_epoch - 1, epochs)]
    return {"epochs": f"{first_epoch}-{epochs}", "higher_at": f"{sum(d > 0 for d in diffs)} of {len(diffs)}",
            "mean_diff": round(100 * statistics.mean(diffs), 2),
            "last10_diff": round(100 * statistics.mean(diffs[-10:]), 2),
            "train_acc": round(100 * trial[epochs - 1]["train_acc"], 1),
            "baseline_train_acc": round(100 * baseline[epochs - 1]["train_acc"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline")
    parser.add_argument("trials", nargs="+")
    parser.add_argument("--from", dest="first_epoch", type=int, default=20)
    args = parser.parse_args()
    baseline = read_history(args.baseline)
    for trial in args.trials:
        print(trial, compare(baseline, read_history(trial), args.first_epoch))


if __name__ == "__main__":
    main()

"""How far averaging goes: the accuracy of the mean of k evaluations' predicted probabilities, over every choice of
k of the evaluations given, for k = 1 to all of them: the figures of docs/round2's "How far averaging goes".

    python experiments/pool_runs.py EVAL_DIR EVAL_DIR [EVAL_DIR ...] [--splits validation,test]

Each EVAL_DIR is a folder that `cifar-mlp evaluate` wrote predictions_SPLIT.csv into (a run directory, or the
folder of its --out), all of the same split of the same dataset. Where each run is an ensemble (model.members),
averaging k runs averages k times its members.
"""

import argparse
import itertools
import statistics

import torch

from cifar_mlp import UserError
from cifar_mlp.rundir import read_predictions


def pooled_accuracies(labels: torch.Tensor, probs: list[torch.Tensor], k: int) -> list[float]:
    """The accuracy of the mean probabilities of each choice of k of probs."""
    return [(torch.stack([probs[i] for i in chosen]).mean(0).argmax(1) == labels).double().mean().item()
            for chosen in itertools.combinations(range(len(probs)), k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--splits", default="validation,test")
    args = parser.parse_args()
    for split in args.splits.split(","):
        try:
            read = [read_predictions(folder, split) for folder in args.folders]
        except UserError as e:
            raise SystemExit(f"pool_runs: {e}") from None
        if any(labels != read[0][0] for labels, _ in read):
            raise SystemExit(f"pool_runs: the folders' predictions_{split}.csv are not of the same images; evaluate "
                             "each run on the same split of the same dataset")
        labels, probs = torch.tensor(read[0][0]), [torch.tensor(p, dtype=torch.float64) for _, p in read]
        print(f"{split}: k, choices, mean accuracy (%), lowest, highest")
        for k in range(1, len(probs) + 1):
            accuracies = [100 * a for a in pooled_accuracies(labels, probs, k)]
            print(f"  {k}  {len(accuracies):3d}  {statistics.mean(accuracies):.2f}  {min(accuracies):.2f}  "
                  f"{max(accuracies):.2f}")


if __name__ == "__main__":
    main()

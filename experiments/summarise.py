"""Mean and spread over seeds of finished runs, grouped by preset: the figures of the README's results table.

    python experiments/summarise.py runs/presets/*

Each run directory needs history.csv and metrics.json (from `cifar-mlp run`). Runs are grouped by the name
before the last "-s<seed>" suffix (e.g. fast-s0, fast-s1 -> fast), which experiments/presets.sh makes the preset's
name, so each row ends with the `cifar-mlp run` command that trains one of its runs.
"""

import json
import re
import statistics
import sys
from pathlib import Path

from cifar_mlp.rundir import read_history


def spread(values: list[float], scale: float = 100, digits: int = 1) -> str:
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def main(paths: list[str]) -> None:
    groups: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            groups.setdefault(re.sub(r"-s\d+$", "", path.name), []).append(path)
    print("| preset | seeds | validation acc % | test acc % | test acc % (flip TTA) | training s | machine | command |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in groups.items():
        metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
        tta = [json.loads((r / "tta" / "metrics.json").read_text())["splits"]["test"]["accuracy"]
               for r in runs if (r / "tta" / "metrics.json").is_file()]
        seconds = [sum(row["epoch_time_s"] for row in read_history(r)) for r in runs]
        env = json.loads((runs[0] / "environment.json").read_text())
        machine = env["gpu"] or f"{env['cpu']}, {env['torch_threads']} threads"
        seeds = ", ".join(str(json.loads((r / "config.json").read_text())["train"]["seed"]) for r in runs)
        command = f"`cifar-mlp run --config {name} --seed S --checkpoint last`, S = {seeds}"
        print(f"| {name} | {len(runs)} | {spread([m['splits']['validation']['accuracy'] for m in metrics])} | "
              f"{spread([m['splits']['test']['accuracy'] for m in metrics])} | "
              f"{spread(tta) if tta else 'not measured'} | {spread(seconds, 1, 0)} | {machine} | {command} |")


if __name__ == "__main__":
    main(sys.argv[1:])

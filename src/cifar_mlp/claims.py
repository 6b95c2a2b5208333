"""`cifar-mlp claims`: the seed's conclusions, each tested by studies run through the sweep engine, and a report
whose verdicts are computed from the numbers (verdicts.py).

The studies are ordinary sweep specs, one folder per budget (studies/claims/small, studies/claims/full), each
run into DIR/<study name> by `cifar-mlp sweep`'s own code: a rerun reuses every finished run and resumes an
interrupted one, and with --storage several machines share the work. The presets' runs are then measured under
transformations (robustness.json, reused when present). Every figure of the report comes from the studies'
trials.csv and the run directories they name.
"""

import csv
import time
from pathlib import Path

from cifar_mlp import UserError, plots, rundir, sweep, verdicts
from cifar_mlp.environment import machine_line
from cifar_mlp.report import table, to_html, to_markdown

SPECS = Path(__file__).resolve().parents[2] / "studies" / "claims"
BUDGETS = ("small", "full")
STUDIES = ("presets", "presets-long", "learning-rate", "depth", "ablation")
ROBUSTNESS = {"small": ["rotation"], "full": None}  # None: every family; the seed names rotations
ROBUST_STUDIES = ("presets", "presets-long")
RECORD = "claims.json"  # the compute time spent by every invocation, summed
PLOTS = {"accuracy_time": plots.plot_accuracy_time, "depth": plots.plot_depth,
         "gradient_norms": plots.plot_gradient_norms, "learning_rate": plots.plot_learning_rates,
         "ablation": plots.plot_ablation, "long_run": lambda history, path: plots.plot_history(
             history, path, "The seed's recipe, trained longer"), "robustness": plots.plot_robustness}
BUDGET_NOTE = {
    "small": "This is the **small budget** (`--budget small`, meant for 30 minutes on 2 CPU cores with native bf16; "
             "its measured time is at the end): one seed per "
             "point, and shorter runs than the full budget: `best-noaug`, `best` and the CNN cut to 4, 20 and 2 "
             "epochs, no CNN without augmentation, the long run at the seed's learning rate to 120 epochs and the "
             "others to 20, the depth study to 5 epochs at 1, 3 and 8 layers, the ablation to 5 epochs, robustness "
             "to rotation (the seed's example). Its verdicts are a preview of the full budget's.",
    "full": "This is the **full budget** (`--budget full`): every preset as committed, the seed's recipe and `fast` "
            "over 3 seeds, 640 epochs of the seed's recipe at its learning rate, the depth study and the ablation over "
            "3 seeds, every robustness family. To fit its time the costlier presets (`best-noaug`, `best`, the CNN) "
            "and the learning-rate grid run one seed each, whose single runs are given the fallback spread (Rules).",
}


def spec_paths(budget: str, specs_dir=None) -> dict[str, Path]:
    if budget not in BUDGETS:
        raise UserError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    folder = Path(specs_dir) if specs_dir else SPECS / budget
    missing = [name for name in STUDIES if not (folder / f"{name}.toml").is_file()]
    if missing:
        raise UserError(f"the claims study specs are missing from {folder} ({', '.join(missing)}.toml); run from a "
                        "checkout of the repository, whose studies/claims holds them")
    return {name: folder / f"{name}.toml" for name in STUDIES}


def load_study(study_dir: Path) -> dict[str, list[verdicts.Run]]:
    """The completed runs of one study, by point, from its trials.csv and the run directories it names."""
    path = study_dir / "trials.csv"
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    except FileNotFoundError:
        raise UserError(f"{path} is missing; run cifar-mlp sweep-report {study_dir}") from None
    except (OSError, KeyError, csv.Error) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}); rebuild it with cifar-mlp sweep-report "
                        f"{study_dir}") from None
    points: dict[str, list[verdicts.Run]] = {}
    for row in rows:
        run_dir = study_dir / "runs" / Path(row["run_dir"]).name  # wherever the study folder has moved
        try:
            run = verdicts.Run(point=run_dir.name.rsplit("-s", 1)[0], seed=int(row["seed"]),
                               val_acc=float(row["val_acc"]), test_acc=float(row["test_acc"]),
                               train_seconds=float(row["train_seconds"]), history=rundir.read_history(run_dir),
                               metrics=rundir.read_metrics(run_dir), robustness=rundir.read_robustness(run_dir),
                               run_dir=run_dir)
        except (KeyError, ValueError):
            raise UserError(f"{path} is damaged (trial {row.get('number')}); rebuild it with cifar-mlp sweep-report "
                            f"{study_dir}") from None
        points.setdefault(run.point, []).append(run)
    return points


def measure_robustness(evidence: dict, budget: str, data_dir, device: str | None,
                       allow_download: bool) -> None:
    """Robustness curves of the presets' runs that lack the budget's transform families."""
    from cifar_mlp import robustness
    from cifar_mlp.data import load_cifar10, resolve_device

    families = ROBUSTNESS[budget] or list(robustness.STRENGTHS)
    data = None
    for study in ROBUST_STUDIES:
        for runs in evidence[study].values():
            for run in runs:
                have = {r["transform"] for r in run.robustness["transforms"]} if run.robustness else set()
                if set(families) <= have:
                    continue
                data = data or load_cifar10(data_dir, allow_download)
                curves, summary = robustness.measure(run.run_dir, data, families, resolve_device(device or "auto"))
                run.robustness = {"transforms": curves, "summary": summary}


def findings(evidence: dict) -> list[verdicts.Finding]:
    presets = {**evidence["presets"], **evidence["presets-long"]}
    return [verdicts.claim_mlp_vs_cnn(presets), verdicts.claim_depth(evidence["depth"]),
            verdicts.claim_epochs(evidence["learning-rate"], evidence["ablation"]),
            verdicts.claim_overfitting(presets.get("seed", []), evidence["learning-rate"].get("lr-1e-6", [])),
            verdicts.claim_robustness(presets), verdicts.claim_figures(presets.get("seed", []))]


def machines(evidence: dict) -> list[str]:
    return sorted({machine_line(rundir.read_environment(r.run_dir))
                   for points in evidence.values() for runs in points.values() for r in runs})


def training_seconds(evidence: dict) -> float:
    return sum(r.train_seconds for points in evidence.values() for runs in points.values() for r in runs)


def build(found: list[verdicts.Finding], budget: str, seconds: float, evidence: dict, machine: list[str],
          command: str) -> list:
    blocks = [("h1", "The seed's claims, tested"),
              ("p", "\"Exercise 5\" (the document this project starts from) ends with conclusions that nothing in it "
                    "measures. Each is quoted below word for word, then tested by the studies of "
                    f"`studies/claims/{budget}/`, with a verdict computed from their numbers by the rules at the end."),
              ("p", BUDGET_NOTE[budget]),
              table(["claim", "verdict"], [[f"{f.number}. {verdicts.TITLES[f.number]}", f.verdict] for f in found])]
    for f in found:
        blocks += [("h2", f"{f.number}. {verdicts.TITLES[f.number]}"),
                   *(("p", f"> \"{quote}\"") for quote in verdicts.QUOTES[f.number]),
                   ("p", f"Verdict: {f.verdict}"),
                   ("p", "\n".join(f"- {p.text} ({p.verdict})" for p in f.parts))]
        for title, header, rows in f.tables:
            blocks += [("p", f"**{title}**"), table(header, [[str(c) for c in row] for row in rows])]
        blocks += [("img", name, alt) for name, _, _, alt in f.figures]
    blocks += [("h2", "Rules"), ("p", "\n".join(f"- {rule}" for rule in verdicts.RULES)),
               ("h2", "Reproduce"),
               ("p", "Machines: " + ("; ".join(machine) or "none recorded") + "."),
               ("p", f"Compute: {training_seconds(evidence) / 60:.0f} minutes of training, summed over the "
                     f"{sum(len(runs) for points in evidence.values() for runs in points.values())} runs (their "
                     f"trials.csv); {seconds / 60:.0f} minutes of wall-clock time in `cifar-mlp claims` itself, "
                     "summed over its invocations on this folder (training, evaluation, reports and robustness "
                     "curves; studies run by `cifar-mlp sweep` alone, or on other machines, are not in it)."),
               ("p", f"Command: `{command}`. A rerun reuses every finished run and trains only what is missing; the "
                     "studies are ordinary sweeps, so `cifar-mlp sweep-report DIR/STUDY` rebuilds any one's summary.")]
    return blocks


def claims(study_dir, budget: str = "small", storage_url: str | None = None, workers: int = 1, out=None,
           data_dir=None, device: str | None = None, allow_download: bool = True, quiet: bool = False,
           specs_dir=None) -> tuple[Path, list[verdicts.Finding]]:
    """Run (or finish) the budget's studies, measure robustness, and write claims.md and claims.html into out
    (default: the study folder). Returns claims.md's path and the findings."""
    specs = spec_paths(budget, specs_dir)
    study_dir, out = Path(study_dir), Path(out or study_dir)
    record = rundir.read_json(study_dir / RECORD, f"cifar-mlp claims --study-dir {study_dir}") if (
        study_dir / RECORD).is_file() else {"seconds": 0.0}
    start = time.perf_counter()
    try:
        for name, path in specs.items():
            sweep.sweep(path, study_dir / name, storage_url, workers, None, data_dir, device, allow_download, quiet)
        evidence = {name: load_study(study_dir / name) for name in specs}
        measure_robustness(evidence, budget, data_dir, device, allow_download)
    finally:
        record["seconds"] += time.perf_counter() - start
        rundir.write_json(record, study_dir / RECORD)
    found = findings(evidence)
    for f in found:
        for name, kind, data, _ in f.figures:
            PLOTS[kind](data, out / name)
    command = (f"cifar-mlp claims --study-dir {study_dir} --budget {budget}"
               + (f" --storage {sweep.masked(storage_url)}" if storage_url else "")
               + (f" --out {out}" if out != study_dir else ""))
    text = to_markdown(build(found, budget, record["seconds"], evidence, machines(evidence), command))
    rundir.write_text(out / "claims.md", text)
    rundir.write_text(out / "claims.html", to_html(text, out, "The seed's claims, tested"))
    rundir.write_json({"budget": budget, "claims": {str(f.number): {
        "title": verdicts.TITLES[f.number], "verdict": f.verdict, "parts": [[p.text, p.verdict] for p in f.parts]}
        for f in found}}, out / "verdicts.json")  # what every run's report quotes (report.published_claims)
    return out / "claims.md", found

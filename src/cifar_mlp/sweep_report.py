"""A sweep's results, rebuilt from its Optuna storage: trials.csv, summary.md and a self-contained summary.html.

Every figure comes from the trials' recorded values; test accuracy is shown, but the points are ranked on the
validation objective, the only figure the sampler saw.
"""

import json
import statistics
import warnings
from pathlib import Path

from cifar_mlp import UserError, plots, rundir
from cifar_mlp.environment import machine_line
from cifar_mlp.report import table, to_html, to_markdown
from cifar_mlp.sweep import JOURNAL, LAST_EPOCH, RECORD, Spec, load_spec, masked, open_storage, parse_spec

FIGURES = ("objective", "val_acc", "val_loss", "test_acc", "last_val_acc", "train_acc", "epochs", "train_seconds",
           "run_dir")


def trial_rows(study, spec: Spec) -> list[dict]:
    """One dict per trial, in trials.csv's columns: the space keys as the spec names them, decoded."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row = {"number": t.number, "state": t.state.name}
        if spec.points:
            row["point"] = t.params.get("point", "")
        for key, space in spec.space.items():
            value = t.params.get(key, "")
            row[key] = json.loads(value) if isinstance(space, list) and value != "" else value
        row["seed"] = a.get("seed", "")
        row |= {k: a.get(k, "") for k in FIGURES}
        if row["run_dir"] and "" in (row[k] for k in LAST_EPOCH):
            row |= last_epoch(Path(row["run_dir"]))
        row["note"] = ("duplicate: nothing trained" if a.get("duplicate") else
                       f"retry of trial {t.system_attrs['failed_trial']}" if "failed_trial" in t.system_attrs else "")
        rows.append(row)
    return rows


def last_epoch(run_dir: Path) -> dict:
    """The last epoch's validation and train accuracy from the run's history, for trials recorded before the sweep
    kept them (empty when the run directory is on another machine)."""
    history = rundir.read_history(run_dir) if (run_dir / rundir.HISTORY).is_file() else []
    return {k: history[-1][h] for k, h in LAST_EPOCH.items()} if history else {}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def fmt(mean: float, std: float, percent: bool) -> str:
    scale, unit = (100, "%") if percent else (1, "")
    spread = "" if std != std else f" ± {scale * std:.{1 if percent else 4}f}"
    return f"{scale * mean:.{1 if percent else 4}f}{spread}{unit}"


def shown(value) -> str:
    """A swept value as the summary prints it: floats to 4 significant digits (a sampled 0.15000000000000002 reads
    0.15); trials.csv keeps them exact."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def point_name(row: dict) -> str:
    """The run directory's name without its seed: the same for every seed of a point."""
    return Path(row["run_dir"]).name.rsplit("-s", 1)[0]


def point_table(rows: list[dict], spec: Spec) -> list[dict]:
    """Completed trials grouped by point: the objective, validation and test accuracy over seeds."""
    keys = ["point"] * bool(spec.points and spec.space) + list(spec.space)  # named points alone: the row's name
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["state"] == "COMPLETE":
            groups.setdefault(point_name(row), []).append(row)
    out = []
    for name, members in groups.items():
        entry = {"point": name, "values": {k: members[0][k] for k in keys}, "n": len(members)}
        for figure in ("objective", "val_acc", "test_acc", "last_val_acc", "train_acc", "train_seconds"):
            numbers = [m[figure] for m in members if isinstance(m[figure], int | float)]
            entry[figure] = mean_std(numbers) if numbers else None
        out.append(entry)
    return sorted(out, key=lambda e: e["objective"][0], reverse=spec.direction == "maximize")


def effects(rows: list[dict], spec: Spec) -> dict[str, list[tuple[str, float, float, int]]]:
    """For each swept key, the objective's mean ± std over the completed trials at each of its values (named points
    alone are ranked in the points table already)."""
    keys = ["point"] * bool(spec.points and spec.space) + [k for k, v in spec.space.items() if isinstance(v, list)]
    out = {}
    for key in keys:
        choices = list(spec.points) if key == "point" else spec.space[key]
        cells = []
        for choice in choices:
            values = [r["objective"] for r in rows if r["state"] == "COMPLETE" and r[key] == choice]
            if values:
                cells.append((json.dumps(choice) if key != "point" else choice, *mean_std(values), len(values)))
        if len(cells) > 1:
            out[key] = cells
    return out


def machines(rows: list[dict]) -> list[str]:
    """The machines the completed trials ran on, from their run directories' environment.json."""
    found = set()
    for row in rows:
        if row["state"] == "COMPLETE" and (Path(row["run_dir"]) / rundir.ENVIRONMENT).is_file():
            found.add(machine_line(rundir.read_environment(row["run_dir"])))
    return sorted(found)


def optuna_figures(study, spec: Spec, out: Path) -> list[tuple]:
    """Optuna's own optimisation history and parameter importances, for the samplers that choose points."""
    from optuna.visualization import matplotlib as optuna_plots

    blocks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw, alt in (("optimization_history.png", optuna_plots.plot_optimization_history,
                                 "the objective of every trial and the best so far"),
                                ("param_importances.png", optuna_plots.plot_param_importances,
                                 "each parameter's importance for the objective (fANOVA)")):
            try:
                plots.save_axes(draw(study), out / name)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                blocks.append(("p", f"{alt.capitalize()}: not drawn ({e})."))
                continue
            blocks.append(("img", name, alt))
    return blocks


def build(study, spec: Spec, study_dir: Path, storage: str | None, spec_path: str, out: Path,
          spec_given: bool) -> tuple[list, list[dict]]:
    rows = trial_rows(study, spec)
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    best_word = "highest" if spec.direction == "maximize" else "lowest"
    blocks = [("h1", f"Sweep: {spec.name}"),
              ("p", f"Spec `{spec_path}`: base `{spec.base}`, sampler {spec.sampler}, pruner {spec.pruner}, "
                    f"objective {spec.objective} of each run's best epoch on validation ({best_word} is best), "
                    f"seeds {spec.seeds}" + (f", {spec.n_trials} sampled points" if spec.sampler != "grid" else "")
                    + ". Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ". Test accuracy "
                    "is recorded for the record; nothing was chosen on it.")]
    points = point_table(rows, spec)
    percent = spec.objective == "val_acc"
    if points:
        header = ["rank", "point", *points[0]["values"], "seeds", f"{spec.objective} (mean ± std)", "val acc",
                  "test acc", "val acc (last epoch)", "train acc (last epoch)", "train s", *["note"] * bool(spec.notes)]
        blocks += [("h2", "Points, best first"), table(header, [
            [i + 1, e["point"], *(shown(v) for v in e["values"].values()),
             e["n"], fmt(*e["objective"], percent), fmt(*e["val_acc"], True),
             fmt(*e["test_acc"], True) if e["test_acc"] else "not evaluated",
             *(fmt(*e[k], True) if e[k] else "" for k in LAST_EPOCH), f"{e['train_seconds'][0]:.0f}",
             *[spec.notes.get(e["values"].get("point", e["point"]), "")] * bool(spec.notes)]
            for i, e in enumerate(points)])]
        best = points[0]
        setting = ", ".join(f"{k} = {shown(v)}" for k, v in best["values"].items())
        blocks.append(("p", f"Best point: {best['point']}" + (f" ({setting})" if setting else "") + ", "
                            f"{spec.objective} {fmt(*best['objective'], percent)} over {best['n']} seed(s)"
                            + (f", test accuracy {fmt(*best['test_acc'], True)}." if best["test_acc"] else ".")))
    else:
        blocks.append(("p", "No trial has completed yet."))
    effect = effects(rows, spec)
    if effect:
        plots.plot_effects(effect, spec.objective, out / "effects.png")
        blocks.append(("h2", "Effect of each swept key"))
        for key, cells in effect.items():
            blocks.append(table([key, f"{spec.objective} (mean ± std)", "trials"],
                                [[label, fmt(m, s, percent), n] for label, m, s, n in cells]))
        blocks.append(("img", "effects.png", "the objective at each value of each swept key"))
    if spec.sampler != "grid" and points:
        blocks += [("h2", "Optimisation"), *optuna_figures(study, spec, out)]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    if pruned:
        blocks.append(("p", f"{len(pruned)} trial(s) were pruned; their run directories are kept: "
                            + ", ".join(f"{point_name(r)} seed {r['seed']} at epoch {r['epochs']}" for r in pruned)
                            + "."))
    command = f"cifar-mlp sweep {spec_path} --study-dir {study_dir}" + (f" --storage {storage}" if storage else "")
    blocks += [("h2", "Reproduce"),
               ("p", "Machines: " + ("; ".join(machines(rows)) or "none recorded") + "."),
               ("p", f"Command: `{command}` (a finished study prints this summary and trains nothing); "
                     f"`cifar-mlp sweep-report {study_dir}" + (f" --out {out}" if out != study_dir else "")
                     + (f" --spec {spec_path}" if spec_given else "") + "` rebuilds it from the storage.")]
    return blocks, rows


def write_summary(study, spec: Spec, study_dir, storage_url: str | None, spec_path: str = "", out=None,
                  spec_given: bool = False) -> Path:
    """trials.csv, summary.md, summary.html and their figures of the study in study_dir, written into out (default:
    study_dir; docs/ publishes a study this way); returns summary.md's path."""
    study_dir = Path(study_dir)
    out = Path(out or study_dir)
    spec_path = spec_path or rundir.read_json(study_dir / RECORD, "cifar-mlp sweep").get("spec", "SPEC.toml")
    blocks, rows = build(study, spec, study_dir, storage_url and masked(storage_url), spec_path, out, spec_given)
    header = list(rows[0]) if rows else ["number", "state"]
    rundir.write_csv(out / "trials.csv", header,
                     [[json.dumps(v) if isinstance(v, list) else v for v in r.values()] for r in rows])
    text = to_markdown(blocks)
    rundir.write_text(out / "summary.md", text)
    rundir.write_text(out / "summary.html", to_html(text, out, blocks[0][1]))
    return out / "summary.md"


def rebuild(study_dir, storage_url: str | None = None, out=None, spec_path=None) -> Path:
    """`cifar-mlp sweep-report DIR [--out FOLDER] [--spec SPEC]`: the summary again, from the storage and the spec
    recorded in DIR, or SPEC if given (the same study, perhaps with newer notes: nothing is trained for them)."""
    study_dir = Path(study_dir)
    record = rundir.read_json(study_dir / RECORD, f"`cifar-mlp sweep SPEC --study-dir {study_dir}`",
                              ("spec", "spec_text", "storage"))
    if record["storage"] and not storage_url:
        raise UserError(f"the study in {study_dir} lives in {record['storage']}; give it again with --storage (the "
                        "password is not recorded)")
    import optuna

    spec = parse_spec(record["spec_text"], f"the spec recorded in {study_dir / RECORD}", record.get("n_trials"))
    if spec_path:
        recorded, spec = spec, load_spec(spec_path, record.get("n_trials"))
        if spec.name != recorded.name or spec.identity() != recorded.identity():
            raise UserError(f"{spec_path} describes another study than the one in {study_dir} (its name, space, "
                            "base, seeds or objective differ); give the spec the study was run with")
    storage = open_storage(storage_url, study_dir, spec.heartbeat_seconds)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {spec.name!r} in {storage_url or study_dir / JOURNAL}; run cifar-mlp sweep "
                        "first") from None
    return write_summary(study, spec, study_dir, storage_url, str(spec_path or record["spec"]), out, bool(spec_path))

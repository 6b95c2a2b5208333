"""Sweeps on Optuna: a TOML spec of points, each trained once per seed as an ordinary run directory.

Optuna holds the study: trials, their states and their values, in a journal file inside the study folder by
default (safe for several processes on one machine), or in a database (`--storage postgresql://...`) that
workers on many machines share. A trial is one (point, seed) and one run directory, `DIR/runs/NAME`, trained,
evaluated and reported by the same code as `cifar-mlp run`; NAME depends only on the point and the seed, so a
retried trial resumes the run its failed attempt left. The samplers see validation figures only.

Nothing is lost when a worker dies. A trial whose worker is gone (a dead process on this machine, or on a
database storage a heartbeat older than its grace period) is marked FAIL, and a failed trial is retried as a
new trial with the same point and seed (RetryHeartbeatStaleTrialCallback) up to MAX_RETRIES times, resuming
from the run's last checkpoint. A grid is enqueued whole when the study is created, so every (point, seed) is
one waiting trial that exactly one worker takes; a trial that finds its point already taken ends at once, FAIL,
marked as a duplicate, and trains nothing.
"""

import contextlib
import fcntl
import functools
import io
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cifar_mlp import UserError, config, rundir

OBJECTIVES = {"val_acc": "maximize", "val_loss": "minimize"}
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
STUDY_KEYS = {"name", "base", "objective", "sampler", "pruner", "seeds", "n_trials", "pruner_warmup_epochs",
              "pruner_startup_trials", "heartbeat_seconds"}
MAX_RETRIES = 3  # a (point, seed) that fails this many times more is given up
JOURNAL = "study.journal"
LAST_EPOCH = {"last_val_acc": "val_acc", "train_acc": "train_acc"}  # a trial's figure: the history column it is,
# at the last epoch
RECORD = "sweep.json"  # what sweep-report needs: the spec and the storage
POLL_SECONDS = 2.0


@dataclass
class Spec:
    name: str
    base: str
    objective: str
    sampler: str
    pruner: str
    seeds: list[int]
    n_trials: int
    fixed: dict
    space: dict  # key -> list of values (categorical) or {low, high, log, step}
    points: dict = field(default_factory=dict)  # name -> {key: value}: named points, a grid's first axis; a
    # point's `preset` key (a preset name or TOML path) replaces study.base for that point
    notes: dict = field(default_factory=dict)  # point name -> what it is and what it showed, for the summary;
    # not part of the study's identity, so notes can be written after the results
    pruner_warmup_epochs: int = 0  # epochs before the pruner may stop a trial
    pruner_startup_trials: int = 5  # median: trials that finish before it prunes any
    heartbeat_seconds: int = 10  # database storages: a trial silent for 3 heartbeats is failed and retried
    text: str = ""

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    def identity(self) -> dict:
        """What makes two specs the same study (n_trials may grow between runs), with the presets its points start
        from as they read now: a preset edited mid-study would otherwise be mixed into it unnoticed."""
        presets = {p.get("preset", self.base) for p in self.points.values()} if self.points else {self.base}
        return {"base": self.base, "objective": self.objective, "sampler": self.sampler, "seeds": self.seeds,
                "fixed": self.fixed, "space": self.space, "points": self.points,
                "presets": {name: config.read_toml(name) for name in sorted(presets)}}


def encode(value) -> str:
    """A categorical value as Optuna stores it: its JSON text (lists are not Optuna values; JSON is TOML)."""
    return json.dumps(value)


def load_spec(path, n_trials: int | None = None) -> Spec:
    """Read and check a spec file; every point's config is validated here, before anything trains."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"sweep spec {path} not found; give the path of a .toml spec (see studies/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"sweep spec {path} cannot be read ({type(e).__name__}); give a readable .toml file") from None
    return parse_spec(text, f"sweep spec {path}", n_trials)


def parse_spec(text: str, where: str, n_trials: int | None = None) -> Spec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where} is not valid TOML: {e}") from None
    unknown = set(raw) - {"study", "fixed", "space", "points", "notes"}
    if unknown:
        raise UserError(f"{where}: unknown table [{sorted(unknown)[0]}]; known: study, fixed, space, points, notes")
    study = raw.get("study", {})
    unknown = set(study) - STUDY_KEYS if isinstance(study, dict) else set()
    if unknown:
        raise UserError(f"{where}: unknown key study.{sorted(unknown)[0]}; known: {', '.join(sorted(STUDY_KEYS))}")
    if not isinstance(study, dict) or "name" not in study:
        raise UserError(f"{where} has no study.name; add [study] name = \"...\"")
    spec = Spec(name=study["name"], base=study.get("base", "seed"), objective=study.get("objective", "val_acc"),
                sampler=study.get("sampler", "grid"), pruner=study.get("pruner", "none"),
                seeds=study.get("seeds", [0]), n_trials=study.get("n_trials", 20), fixed=raw.get("fixed", {}),
                space=raw.get("space", {}), points=raw.get("points", {}), notes=raw.get("notes", {}),
                pruner_warmup_epochs=study.get("pruner_warmup_epochs", 0),
                pruner_startup_trials=study.get("pruner_startup_trials", 5),
                heartbeat_seconds=study.get("heartbeat_seconds", 10), text=text)
    if n_trials is not None:
        spec.n_trials = n_trials
    check_spec(spec, where)
    return spec


def check_spec(spec: Spec, where: str) -> None:
    if not isinstance(spec.base, str) or not isinstance(spec.name, str) or not spec.name:
        raise UserError(f"{where}: study.name must be a non-empty string and study.base a preset name or path")
    for key, allowed in (("objective", OBJECTIVES), ("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if getattr(spec, key) not in allowed:
            raise UserError(f"{where}: study.{key} must be one of {', '.join(allowed)}, got {getattr(spec, key)!r}")
    if (not isinstance(spec.seeds, list) or not spec.seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= config.SEED_MAX
                       for s in spec.seeds) or len(set(spec.seeds)) != len(spec.seeds)):
        raise UserError(f"{where}: study.seeds must be a non-empty list of distinct seeds (ints >= 0), got "
                        f"{spec.seeds!r}")
    for key in ("n_trials", "pruner_warmup_epochs", "pruner_startup_trials", "heartbeat_seconds"):
        value = getattr(spec, key)
        least = 0 if key.startswith("pruner") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"{where}: study.{key} must be an int >= {least}, got {value!r}")
    for table in ("fixed", "space", "points", "notes"):
        if not isinstance(getattr(spec, table), dict):
            raise UserError(f"{where}: [{table}] must be a table")
    if not spec.space and not spec.points:
        raise UserError(f"{where}: the space is empty; give [space] keys with lists of values (or [points.NAME])")
    for name, point in spec.points.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not isinstance(point, dict):
            raise UserError(f"{where}: [points.{name}] must be a table of config keys, named with letters, digits, "
                            "'.', '_' or '-'")
        nested = [key for key, value in point.items() if isinstance(value, dict)]
        if nested:
            raise UserError(f"{where}: [points.{name}] holds a table {nested[0]!r}, not a value: a header such as "
                            f"[points.{name}.{nested[0]}] nests tables, so quote a point name that has a dot: "
                            f"[points.\"{name}.{nested[0]}\"]")
    for name, note in spec.notes.items():
        if name not in spec.points or not isinstance(note, str):
            raise UserError(f"{where}: notes.{name} must be a string about one of the [points.NAME] "
                            f"({'known: ' + ', '.join(spec.points) if spec.points else 'the spec has none'})")
    for key, values in spec.space.items():
        if isinstance(values, list):
            if not values:
                raise UserError(f"{where}: space key {key} has an empty list of values")
        elif isinstance(values, dict):
            if spec.sampler == "grid":
                raise UserError(f"{where}: a grid needs a list of values for {key}, not a range; use sampler = "
                                "\"tpe\" or \"random\" for ranges")
            check_space_range(where, key, values)
        else:
            raise UserError(f"{where}: space key {key} must be a list of values or {{low, high, log, step}}")
    if spec.points and spec.sampler != "grid":
        raise UserError(f"{where}: [points] go with sampler = \"grid\"")
    for point in corner_points(spec):
        try:
            point_config(spec, point, spec.seeds[0])
        except UserError as e:
            raise UserError(f"{where}: the point {json.dumps(point)} is not a valid run config: {e}") from None


def check_space_range(where: str, key: str, r: dict) -> None:
    unknown = set(r) - {"low", "high", "log", "step"}
    low, high = r.get("low"), r.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if unknown or not numbers or not low < high or (r.get("log") and low <= 0):
        raise UserError(f"{where}: space key {key} needs finite numbers low < high (low > 0 with log), and only "
                        f"low, high, log, step; got {r!r}")


def point_config(spec: Spec, values: dict, seed: int, device: str | None = None) -> config.Config:
    """The run config of a point: its preset (the point's `preset` key, else study.base), the spec's fixed
    overrides, the point's values, the seed."""
    values = dict(values)
    base = values.pop("preset", spec.base)
    if not isinstance(base, str):
        raise UserError(f"a point's preset must be a preset name or a TOML path, got {base!r}")
    return config.with_values(config.read_toml(base), {**spec.fixed, **values, "train.seed": seed,
                                                       **({"train.device": device} if device else {})})


def range_is_int(r: dict) -> bool:
    return all(isinstance(r[k], int) for k in ("low", "high")) and isinstance(r.get("step", 1), int)


def corner_points(spec: Spec) -> list[dict]:
    """Every grid point; for ranges, the points at each range's low and high (the rest at their first value)."""
    if spec.sampler == "grid":
        return [values for _, _, values in grid(spec)]
    first = {k: (v[0] if isinstance(v, list) else v["low"]) for k, v in spec.space.items()}
    corners = [first]
    for k, v in spec.space.items():
        for value in (v if isinstance(v, list) else (v["low"], v["high"])):
            corners.append({**first, k: value})
    return corners


def grid(spec: Spec) -> list[tuple[str, str | None, dict]]:
    """(label, point name, config values) of every grid point: named points x the product of the space's lists.
    The label names the point's run directories: the point's name, p000, p001, ..., or NAME-p000, ..."""
    axes = list(spec.space)
    combos = list(itertools.product(*spec.space.values()))
    out = []
    for name in list(spec.points) or [None]:
        for index, combo in enumerate(combos):
            label = name if name and len(combos) == 1 else f"{name}-p{index:03d}" if name else f"p{index:03d}"
            out.append((label, name, {**spec.points.get(name, {}), **dict(zip(axes, combo, strict=True))}))
    return out


# Storage and study

def open_storage(url: str | None, study_dir: Path, heartbeat: int):
    """The embedded journal file inside study_dir, or a database URL (heartbeats on)."""
    import optuna

    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / JOURNAL),
                                                                JournalLock(study_dir / (JOURNAL + ".flock"))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or "database driver"
        raise UserError(f"the storage {masked(url)} needs the {missing} package; install the extra: pip install "
                        "'cifar-mlp[postgres]'") from None
    except Exception as e:  # sqlalchemy's errors for a bad URL, a refused connection or a bad password
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open the storage {masked(url)}: {detail}; check the URL and that the database "
                        "server is running") from None


class JournalLock:
    """The journal's lock for Optuna's JournalFileBackend: an flock on one open file, so a Ctrl-C at any instant
    stays a Ctrl-C and leaves no stale lock (Optuna's default symlink lock turns a Ctrl-C during its release into
    FileNotFoundError or RuntimeError, and a dead process leaves it held for a 30-second grace period). Taking it
    again on the same file is a no-op and the kernel drops it with the process, so an interrupted acquire or
    release is harmless."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> bool:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __del__(self):
        if self.fd is not None:
            os.close(self.fd)


def masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_study(spec: Spec, storage):
    """Create the study (and, for a grid, enqueue every point x seed) or load it; refuse another space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by the worker, one line each
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = {"grid": lambda: optuna.samplers.GridSampler(grid_search_space(spec), seed=0),
               "tpe": lambda: optuna.samplers.TPESampler(seed=0),
               "random": lambda: optuna.samplers.RandomSampler(seed=0)}[spec.sampler]()
    pruner = {"none": optuna.pruners.NopPruner,
              "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                                            n_warmup_steps=spec.pruner_warmup_epochs),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, spec.pruner_warmup_epochs))
              }[spec.pruner]()
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.direction, load_if_exists=True)
    stored, identity = study.user_attrs.get("spec"), json.loads(json.dumps(spec.identity()))
    if stored is not None and "presets" not in stored:  # begun before studies recorded their presets
        del identity["presets"]
    if stored is None or adds_seeds(stored, identity):
        study.set_user_attr("spec", identity)
    elif stored != identity:
        if {**stored, "presets": None} == {**identity, "presets": None}:  # only a preset's content differs
            changed = [name for name, preset in identity["presets"].items() if stored["presets"].get(name) != preset]
            raise UserError(f"the preset {', '.join(changed)} that study {spec.name!r} starts from has changed since "
                            "the study began; restore it, or give the spec another study.name (cifar-mlp "
                            "sweep-report still rebuilds this one's summary)")
        raise UserError(f"a study named {spec.name!r} already exists in this storage with another space, base, "
                        "seeds or objective (a grid may only add seeds); give the spec another study.name, or use "
                        "another --study-dir/--storage")
    if spec.sampler == "grid":
        enqueue_missing(study, spec)
    return study


def adds_seeds(stored: dict, identity: dict) -> bool:
    """Whether the spec is the stored grid with more seeds: its new (point, seed) pairs are enqueued, the runs it
    already has are kept, so a study can gain seeds without training anything again."""
    return (identity["sampler"] == "grid" and {**stored, "seeds": identity["seeds"]} == identity
            and set(stored["seeds"]) < set(identity["seeds"]))


def grid_search_space(spec: Spec) -> dict:
    space = {k: [encode(v) for v in values] for k, values in spec.space.items()}
    return {**({"point": list(spec.points)} if spec.points else {}), **space}


def enqueue_missing(study, spec: Spec) -> None:
    """Every grid point x seed that no trial holds yet becomes a waiting trial (at creation; again when the spec
    adds seeds, or if the process that created the study died while enqueueing)."""
    held = {t.user_attrs.get("run") for t in study.get_trials(deepcopy=False)}
    for label, name, values in grid(spec):
        params = {**({"point": name} if name else {}), **{k: encode(values[k]) for k in spec.space}}
        for seed in spec.seeds:
            if f"{label}-s{seed}" not in held:
                study.enqueue_trial(params, user_attrs={"run": f"{label}-s{seed}", "seed": seed})


# Recovery

def process_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover(study, storage) -> None:
    """Fail the trials whose worker died on this machine, let the storage fail those whose heartbeat is stale,
    and retry every failed trial whose (point, seed) no other trial holds."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker was first
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    with warnings.catch_warnings():  # both are marked experimental, and have been since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    trials = study.get_trials(deepcopy=False)
    held = {t.user_attrs.get("run") for t in trials if t.state != TrialState.FAIL}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        run = t.user_attrs.get("run")
        if (t.state == TrialState.FAIL and run and run not in held and t.number not in retried
                and not t.user_attrs.get("duplicate")):
            retry(study, t)
            held.add(run)


def next_step(study, spec: Spec) -> str:
    """run (a waiting trial, or a new point to sample), wait (others are running), or done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    if spec.sampler != "grid" and sum(is_sampled(t) for t in trials) < spec.n_trials:
        return "run"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) else "done"


def is_sampled(t) -> bool:
    """A trial the sampler created (not enqueued as a grid point, a sibling seed or a retry)."""
    return "fixed_params" not in t.system_attrs


# One trial

class Duplicate(Exception):
    """The trial's point and seed are already another trial's: it ends FAIL without training."""


def run_trial(trial, spec: Spec, study_dir: Path, data, device: str, quiet: bool) -> float:
    """Train, evaluate and report one (point, seed) as `cifar-mlp run` does; the objective of its best epoch on
    validation."""
    import optuna
    from optuna.trial import TrialState

    from cifar_mlp.cli import run_job

    trial.set_user_attr("worker", worker_id())
    trials = trial.study.get_trials(deepcopy=False)
    sampled = "run" not in trial.user_attrs
    if sampled:
        sampled_before = sum(is_sampled(t) for t in trials if t.number < trial.number)
        if spec.sampler == "grid" or sampled_before >= spec.n_trials:
            trial.set_user_attr("duplicate", True)
            raise Duplicate(f"trial {trial.number} is beyond the study's budget; nothing trained")
        trial.set_user_attr("run", f"t{trial.number:04d}-s{spec.seeds[0]}")
        trial.set_user_attr("seed", spec.seeds[0])
    run, seed = trial.user_attrs["run"], trial.user_attrs["seed"]
    taken = [t for t in trials if t.user_attrs.get("run") == run and t.number != trial.number and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.RUNNING and t.number < trial.number))]
    if taken:
        trial.set_user_attr("duplicate", True)
        raise Duplicate(f"trial {trial.number}: {run} is trial {taken[0].number}'s; nothing trained")
    values = suggest(trial, spec)
    if sampled:  # the other seeds of a sampled point wait for any worker
        for other in spec.seeds[1:]:
            trial.study.enqueue_trial(dict(trial.params), user_attrs={"run": f"t{trial.number:04d}-s{other}",
                                                                     "seed": other})
    cfg = point_config(spec, values, seed, device)
    run_dir = study_dir / "runs" / run
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    history = rundir.read_history(run_dir) if resume and (run_dir / rundir.HISTORY).is_file() else []
    if len(history) == cfg.train.epochs and (run_dir / rundir.METRICS).is_file():  # finished before a crash
        record(trial, spec, history, rundir.read_metrics(run_dir), run_dir)
        return trial.user_attrs["objective"]
    for row in history:
        trial.report(row[spec.objective], row["epoch"])

    def report_epoch(row: dict) -> None:
        with delivering(False):
            trial.report(row[spec.objective], row["epoch"])
            prune = trial.should_prune()
            if prune:
                record(trial, spec, rundir.read_history(run_dir), None, run_dir)
        if prune:
            raise optuna.TrialPruned(f"at epoch {row['epoch']}")

    start = time.perf_counter()
    try:
        with delivering(True), contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            history, metrics, _, _ = run_job(cfg, run_dir, data=data, resume=resume, overwrite=not resume,
                                             quiet=True, on_epoch=report_epoch, show_metrics=False)
    except rundir.Busy:
        trial.set_user_attr("duplicate", True)
        raise Duplicate(f"trial {trial.number}: {run} is being trained by another process; nothing trained") from None
    trial.set_user_attr("trial_seconds", time.perf_counter() - start)
    record(trial, spec, history, metrics, run_dir)
    return trial.user_attrs["objective"]


def suggest(trial, spec: Spec) -> dict:
    """The trial's config values: categorical keys decoded from their JSON text, ranges as numbers."""
    values = {}
    if spec.points:
        values |= spec.points[trial.suggest_categorical("point", list(spec.points))]
    for key, space in spec.space.items():
        if isinstance(space, list):
            values[key] = json.loads(trial.suggest_categorical(key, [encode(v) for v in space]))
        elif range_is_int(space):
            values[key] = trial.suggest_int(key, space["low"], space["high"], step=space.get("step", 1),
                                            log=space.get("log", False))
        else:
            values[key] = trial.suggest_float(key, float(space["low"]), float(space["high"]),
                                              step=space.get("step"), log=space.get("log", False))
    return values


def record(trial, spec: Spec, history: list[dict], metrics: dict | None, run_dir: Path) -> None:
    """The figures trials.csv and the summary read, as user attributes of the trial."""
    best = min(history, key=lambda r: r["val_loss"])
    figures = {"val_acc": best["val_acc"], "val_loss": best["val_loss"], "best_epoch": best["epoch"],
               "epochs": len(history), "train_seconds": sum(r["epoch_time_s"] for r in history),
               **{k: history[-1][h] for k, h in LAST_EPOCH.items()},
               "test_acc": metrics["splits"]["test"]["accuracy"] if metrics and "test" in metrics["splits"] else None,
               "run_dir": str(run_dir)}
    figures["objective"] = figures[spec.objective]
    for key, value in figures.items():
        trial.set_user_attr(key, value)


# Workers

def work(spec: Spec, study_dir: Path, storage_url: str | None, data_dir=None, device: str | None = None,
         allow_download: bool = True, quiet: bool = False, threads: int = 1) -> None:
    """A worker process of --workers: its own connection to the storage and its share of the cores."""
    import torch

    torch.set_num_threads(threads)
    storage = open_storage(storage_url, study_dir, spec.heartbeat_seconds)
    take_trials(open_study(spec, storage), storage, spec, study_dir, data_dir, device, allow_download, quiet)


def take_trials(study, storage, spec: Spec, study_dir: Path, data_dir, device: str | None, allow_download: bool,
                quiet: bool) -> None:
    """Take trials until the study is done, waiting while others run trials that may yet fail."""
    from cifar_mlp.data import load_cifar10

    data = None
    with stop_signals_held():
        while True:
            if _stop["held"]:  # a stop that came during the last trial's bookkeeping
                raise KeyboardInterrupt
            recover(study, storage)
            step = next_step(study, spec)
            if step == "done":
                return
            with delivering(True):
                if step == "wait":
                    time.sleep(POLL_SECONDS)
                    continue
                data = data or load_cifar10(data_dir, allow_download)
            objective = functools.partial(run_trial, spec=spec, study_dir=study_dir, data=data, device=device,
                                          quiet=quiet)
            study.optimize(objective, n_trials=1, catch=(Duplicate,), gc_after_trial=False,
                           callbacks=[lambda _, t: print(trial_line(t), flush=True)])


# Stop signals. Optuna's bookkeeping cannot be interrupted at any line (optuna 5.1): a KeyboardInterrupt while it
# records a trial's end (study/_optimize.py) becomes an UnboundLocalError with a traceback and the trial stays
# RUNNING, and one just inside its journal storage's thread lock leaves the lock held, so the next call hangs.
# While a worker takes trials, Ctrl-C and SIGTERM raise KeyboardInterrupt only inside delivering(True) blocks,
# which run this package's code (training, loading data, waiting); elsewhere the signal is held, and raised on
# entering or returning to such a block.
_stop = {"held": False, "deliver": False}


def _hold_or_deliver(signum, frame) -> None:
    _stop["held"] = True
    if _stop["deliver"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_held():
    """SIGINT and SIGTERM held outside delivering blocks (one the process ignores, such as a worker's SIGINT, stays
    ignored); the previous handlers come back after."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _stop.update(held=False, deliver=False)
    for s, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(s, _hold_or_deliver)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop["deliver"] = False


@contextlib.contextmanager
def delivering(deliver: bool):
    """Inside: a stop signal raises KeyboardInterrupt at once (deliver) or is held (not deliver)."""
    outer = _stop["deliver"]
    _stop["deliver"] = deliver
    try:
        if deliver and _stop["held"]:
            raise KeyboardInterrupt
        yield
    finally:
        _stop["deliver"] = outer
    if outer and _stop["held"]:
        raise KeyboardInterrupt


def trial_line(t) -> str:
    figures = " ".join(f"{k} {t.user_attrs[k]:.4f}" for k in ("val_acc", "val_loss", "test_acc")
                       if isinstance(t.user_attrs.get(k), float))
    return f"sweep: trial {t.number} {t.user_attrs.get('run', '')} {t.state.name} {figures}".rstrip()


def _worker_main(args: tuple) -> None:
    """A worker process started by --workers: one-line errors, exit codes as the CLI's, and one stop signal, the
    parent's SIGTERM (a Ctrl-C reaches the whole terminal group, a kill only the parent: either way the parent
    passes it on once, so a worker is never interrupted again while it saves its trial)."""
    from cifar_mlp.cli import interrupt

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        work(*args)
    except UserError as e:
        print(f"cifar-mlp: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def sweep(spec_path, study_dir, storage_url: str | None = None, workers: int = 1, n_trials: int | None = None,
          data_dir=None, device: str | None = None, allow_download: bool = True, quiet: bool = False) -> Path:
    """Run (or finish) the study with `workers` processes on this machine, then write its summary."""
    import multiprocessing

    from cifar_mlp import sweep_report

    spec = load_spec(spec_path, n_trials)
    study_dir = Path(study_dir)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    storage = open_storage(storage_url, study_dir, spec.heartbeat_seconds)
    study = open_study(spec, storage)  # its errors come before any worker starts
    rundir.write_json({"spec": str(spec_path), "spec_text": spec.text, "n_trials": spec.n_trials,
                       "storage": masked(storage_url) if storage_url else None}, study_dir / RECORD)
    if workers == 1:
        take_trials(study, storage, spec, study_dir, data_dir, device, allow_download, quiet)
    else:
        args = (spec, study_dir, storage_url, data_dir, device, allow_download, quiet)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker_main, args=((*args, max(1, cores // workers)),))
                     for _ in range(workers)]
        for p in processes:
            p.start()
        try:
            for p in processes:
                p.join()
        except KeyboardInterrupt:
            for p in processes:
                p.terminate()
            for p in processes:
                p.join()
            raise
        failed = [p.exitcode for p in processes if p.exitcode]
        if 130 in failed:
            raise KeyboardInterrupt
        if failed:
            raise UserError(f"{len(failed)} of {workers} workers stopped with an error (above); rerun the same "
                            "command to finish the study")
    return sweep_report.write_summary(study, spec, study_dir, storage_url)

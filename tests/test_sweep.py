"""The sweep engine on synthetic data: grids, seeds, reruns, workers, SIGKILL, pruning, tpe, bad specs, and a
real PostgreSQL when CIFAR_MLP_POSTGRES_URL names one (.ci/run starts it; REQUIRE_POSTGRES=1 makes it required)."""

import contextlib
import csv
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from cifar_mlp import UserError, checkpoint, config, rundir, sweep, sweep_report
from cifar_mlp.train import train

TINY = """
[study]
name = "{name}"
base = "seed"
seeds = [0, 1]
{study}
[fixed]
"train.epochs" = {epochs}
"train.batch_size" = 64
"optim.lr" = 3e-3
"data.val_per_class" = 5
"train.device" = "cpu"
[space]
{space}
"""
GRID = '"model.widths" = [[32], [16, 16]]\n"optim.weight_decay" = [0.0, 0.1]'


def write_spec(tmp_path, name="g", space=GRID, study="", epochs=2) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, space=space, study=study, epochs=epochs))
    return str(path)


def study_of(study_dir, name="g", url=None):
    return optuna.load_study(study_name=name, storage=sweep.open_storage(url, study_dir, 10))


def trials_csv(study_dir) -> list[dict]:
    with (study_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def completed_runs(study) -> list[str]:
    return [t.user_attrs["run"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_a_grid_runs_every_point_once_per_seed_and_a_rerun_trains_nothing(synthetic_root, tmp_path, monkeypatch):
    spec, study_dir = write_spec(tmp_path), tmp_path / "study"
    summary = sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    rows = trials_csv(study_dir)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"COMPLETE"}
    assert len({(r["model.widths"], r["optim.weight_decay"], r["seed"]) for r in rows}) == 8
    assert list(rows[0])[:5] == ["number", "state", "model.widths", "optim.weight_decay", "seed"]
    for r in rows:  # each trial is an ordinary, evaluated and reported run directory
        run_dir = tmp_path / "study" / "runs" / r["run_dir"].rsplit("/", 1)[1]
        metrics = rundir.read_metrics(run_dir)
        assert float(r["test_acc"]) == metrics["splits"]["test"]["accuracy"]
        assert (run_dir / "report.md").is_file()
        assert rundir.read_config(run_dir)["train"]["seed"] == int(r["seed"])
        best = min(rundir.read_history(run_dir), key=lambda row: row["val_loss"])
        assert float(r["objective"]) == float(r["val_acc"]) == best["val_acc"]
        last = rundir.read_history(run_dir)[-1]
        assert float(r["train_acc"]) == last["train_acc"] and float(r["last_val_acc"]) == last["val_acc"]
    text = summary.read_text()
    assert "| 1 | p00" in text and "effects.png" in text and (study_dir / "summary.html").stat().st_size > 10_000

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr("cifar_mlp.train.train", no_training)
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    assert len(study_of(study_dir).trials) == 8
    (study_dir / "summary.md").unlink()
    sweep_report.rebuild(study_dir)
    assert (study_dir / "summary.md").read_text() == text
    published = sweep_report.rebuild(study_dir, out=tmp_path / "docs")  # a summary published elsewhere
    assert (tmp_path / "docs" / "trials.csv").read_text() == (study_dir / "trials.csv").read_text()
    assert (tmp_path / "docs" / "effects.png").is_file() and f"--out {tmp_path / 'docs'}" in published.read_text()
    assert published.read_text().replace(f" --out {tmp_path / 'docs'}", "") == text


def test_two_workers_split_a_grid(synthetic_root, tmp_path):
    spec, study_dir = write_spec(tmp_path), tmp_path / "study"
    done = subprocess.run([sys.executable, "-m", "cifar_mlp.cli", "sweep", spec, "--study-dir", str(study_dir),
                           "--workers", "2", "--data-dir", str(synthetic_root), "--no-download", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = study_of(study_dir)
    runs = completed_runs(study)
    assert sorted(runs) == sorted(f"p{i:03d}-s{s}" for i in range(4) for s in (0, 1))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


KILL_AT_EPOCH = """
import os, signal, sys
from cifar_mlp import cli, train
nth, argv, calls = int(sys.argv[1]), sys.argv[2:], []
real_epoch = train.train_epoch
def epoch_then_kill(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_epoch(*args, **kwargs)
train.train_epoch = epoch_then_kill
cli.main(argv)
"""


def test_a_worker_killed_mid_trial_then_a_rerun_finishes_and_resumes_exactly(synthetic_root, tmp_path):
    spec, study_dir = write_spec(tmp_path, epochs=3), tmp_path / "study"
    args = ["sweep", spec, "--study-dir", str(study_dir), "--data-dir", str(synthetic_root), "--no-download", "--quiet"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_EPOCH, "5", *args], capture_output=True, text=True,
                            timeout=300)  # epoch 5 of the sweep: the second trial's second epoch
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = study_dir / "runs" / "p000-s1"
    assert checkpoint.load(interrupted / "checkpoints" / "last.pt")["epoch"] == 1
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    study = study_of(study_dir)
    assert sorted(completed_runs(study)) == sorted(f"p{i:03d}-s{s}" for i in range(4) for s in (0, 1))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["run"] for t in failed] == ["p000-s1"]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert "retry of trial 1" in [r for r in trials_csv(study_dir) if r["number"] == str(retry.number)][0]["note"]
    cfg = config.from_dict(rundir.read_config(interrupted))
    train(cfg, tmp_path / "uninterrupted", synthetic_root, allow_download=False, quiet=True)
    a = checkpoint.load(tmp_path / "uninterrupted" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(interrupted / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pruned_trials_keep_their_run_directories(synthetic_root, tmp_path):
    spec = write_spec(tmp_path, space='"optim.lr" = [3e-3, 1e-7]', epochs=4,
                      study='pruner = "median"\npruner_startup_trials = 2')
    study_dir = tmp_path / "study"
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    states = {t.user_attrs["run"]: t.state.name for t in study_of(study_dir).trials}
    assert states == {"p000-s0": "COMPLETE", "p000-s1": "COMPLETE", "p001-s0": "PRUNED", "p001-s1": "PRUNED"}
    assert len(rundir.read_history(study_dir / "runs" / "p001-s0")) < 4
    assert "were pruned" in (study_dir / "summary.md").read_text()


def test_tpe_samples_ranges_and_trains_each_point_once_per_seed(synthetic_root, tmp_path):
    space = '"optim.lr" = {low = 1e-4, high = 1e-2, log = true}\n"model.widths" = [[16], [32]]'
    spec = write_spec(tmp_path, name="t", space=space, study='sampler = "tpe"\nn_trials = 3')
    study_dir = tmp_path / "study"
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    trials = study_of(study_dir, "t").trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    points = {}
    for t in trials:
        points.setdefault((t.params["optim.lr"], t.params["model.widths"]), set()).add(t.user_attrs["seed"])
    assert len(points) == 3 and all(seeds == {0, 1} for seeds in points.values())
    assert (study_dir / "optimization_history.png").is_file()
    summary = (study_dir / "summary.md").read_text()
    for lr, _ in points:  # the table rounds sampled floats; trials.csv keeps them exact
        assert f"| {lr:.4g} |" in summary and repr(lr) in (study_dir / "trials.csv").read_text()
    sweep.sweep(spec, study_dir, n_trials=4, data_dir=synthetic_root, allow_download=False, quiet=True)
    assert len(study_of(study_dir, "t").trials) == 8  # a larger budget adds a point to the same study


@pytest.mark.parametrize(("space", "study", "message"), [
    ('"model.widthz" = [[32]]', "", "unknown key model.widthz"),
    ('"optim.lr" = [1e-3, -1.0]', "", "optim.lr must be a finite number"),
    ("", "", "the space is empty"),
    ('"optim.lr" = []', "", "empty list of values"),
    ('"optim.lr" = {low = 1e-3, high = 1e-2}', "", "a grid needs a list of values"),
    ('"optim.lr" = [1e-3]', 'sampler = "bayes"', "study.sampler must be one of grid, tpe, random"),
    ('"optim.lr" = [1e-3]', "colour = 1", "unknown key study.colour"),
    ('"optim" = [1e-3]', "", "'optim' is not a key of the form section.key"),
])
def test_bad_specs_are_one_line_errors_before_training(tmp_path, space, study, message):
    spec = write_spec(tmp_path, space=space, study=study)
    with pytest.raises(UserError, match=message) as info:
        sweep.sweep(spec, tmp_path / "study", data_dir=tmp_path / "no-data")
    assert "\n" not in str(info.value) and not (tmp_path / "study" / "runs").exists()


def test_missing_spec_unreachable_storage_and_a_changed_space(synthetic_root, tmp_path):
    with pytest.raises(UserError, match="sweep spec .* not found"):
        sweep.sweep(tmp_path / "nothing.toml", tmp_path / "study")
    spec = write_spec(tmp_path, space='"optim.lr" = [1e-3]')
    with pytest.raises(UserError, match="cannot open the storage postgresql://me:\\*\\*\\*@127.0.0.1:9/x") as info:
        sweep.sweep(spec, tmp_path / "study", "postgresql://me:secret@127.0.0.1:9/x")
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    sweep.open_study(sweep.load_spec(spec), sweep.open_storage(None, tmp_path / "study", 10))
    other = write_spec(tmp_path, space='"optim.lr" = [1e-3, 2e-3]')
    with pytest.raises(UserError, match="already exists in this storage with another space"):
        sweep.sweep(other, tmp_path / "study", data_dir=synthetic_root)


def test_a_study_refuses_its_base_preset_once_edited(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text((config.PRESET_DIR / "seed.toml").read_text())
    spec = write_spec(tmp_path, space='"optim.lr" = [1e-3]')
    Path(spec).write_text(Path(spec).read_text().replace('base = "seed"', f'base = "{preset.as_posix()}"'))
    storage = sweep.open_storage(None, tmp_path / "study", 10)
    sweep.open_study(sweep.load_spec(spec), storage)
    preset.write_text(preset.read_text().replace("dropout = 0.2", "dropout = 0.3"))
    changed = re.escape(f"the preset {preset.as_posix()} that study 'g' starts from has changed")
    with pytest.raises(UserError, match=changed):
        sweep.open_study(sweep.load_spec(spec), storage)
    study = study_of(tmp_path / "study")  # a study begun before studies recorded their presets is let through
    study.set_user_attr("spec", {k: v for k, v in study.user_attrs["spec"].items() if k != "presets"})
    sweep.open_study(sweep.load_spec(spec), storage)


def test_a_grid_that_gains_seeds_trains_only_the_new_ones_and_cannot_lose_them(synthetic_root, tmp_path):
    spec, study_dir = write_spec(tmp_path, space='"model.widths" = [[32], [16, 16]]'), tmp_path / "study"
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    written = {d.name: (d / rundir.METRICS).stat().st_mtime_ns for d in (study_dir / "runs").iterdir()}
    Path(spec).write_text(Path(spec).read_text().replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    rows = trials_csv(study_dir)
    assert sorted((r["model.widths"], r["seed"]) for r in rows) == sorted(
        (w, s) for w in ("[32]", "[16, 16]") for s in "012") and {r["state"] for r in rows} == {"COMPLETE"}
    assert {d: (study_dir / "runs" / d / rundir.METRICS).stat().st_mtime_ns for d in written} == written
    Path(spec).write_text(Path(spec).read_text().replace("seeds = [0, 1, 2]", "seeds = [0]"))
    with pytest.raises(UserError, match="a grid may only add seeds"):
        sweep.sweep(spec, study_dir, data_dir=synthetic_root)
    tpe = {"sampler": "tpe", "seeds": [0], "space": {}}
    assert not sweep.adds_seeds(tpe, {**tpe, "seeds": [0, 1]})


@pytest.fixture
def postgres_url():
    url = os.environ.get("CIFAR_MLP_POSTGRES_URL")
    if not url:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("REQUIRE_POSTGRES is set but CIFAR_MLP_POSTGRES_URL is not")
        pytest.skip("set CIFAR_MLP_POSTGRES_URL to a PostgreSQL database to run this test")
    return url


def other_machine() -> list[str]:
    """A command prefix that runs a process under another host name (a UTS namespace), where allowed: the
    surviving worker then cannot see the killed one as its own and must rely on the database's heartbeats."""
    probe = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname other-machine && hostname"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe and probe.returncode == 0 and probe.stdout.strip() == "other-machine":
        return ["unshare", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh"]
    return []


def test_postgres_workers_fail_and_retry_a_killed_workers_trial(synthetic_root, tmp_path, postgres_url):
    name = f"pg{os.getpid()}{time.time_ns()}"
    spec = write_spec(tmp_path, name=name, epochs=60, study="heartbeat_seconds = 1")
    study_dir = tmp_path / "study"  # shared by both workers, as a network folder would be

    def worker(prefix=()):
        return subprocess.Popen([*prefix, sys.executable, "-m", "cifar_mlp.cli", "sweep", spec, "--study-dir",
                                 str(study_dir), "--storage", postgres_url, "--data-dir", str(synthetic_root),
                                 "--no-download", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    victim = worker(other_machine())
    storage = sweep.open_storage(postgres_url, study_dir, 1)
    deadline = time.time() + 120
    while True:
        assert time.time() < deadline and victim.poll() is None, victim.stderr.read() if victim.poll() else "timeout"
        study = optuna.load_study(study_name=name, storage=storage) if name in optuna.get_all_study_names(
            storage) else None
        running = [t for t in study.trials if t.state.name == "RUNNING"] if study else []
        if running and (study_dir / "runs" / running[0].user_attrs["run"] / "checkpoints" / "last.pt").exists():
            break
        time.sleep(0.1)
    survivor = worker()
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    trials = optuna.load_study(study_name=name, storage=storage).trials
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run"] == killed.user_attrs["run"]
    assert sorted(t.user_attrs["run"] for t in trials if t.state.name == "COMPLETE") == sorted(
        f"p{i:03d}-s{s}" for i in range(4) for s in (0, 1))


def start_sweep(*args: str, **popen) -> subprocess.Popen:
    """`cifar-mlp sweep ARGS` in a child that takes SIGINT as Ctrl-C even when pytest runs as a background job, whose
    children a shell without job control starts with SIGINT ignored (and Python then keeps it ignored)."""
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from cifar_mlp.cli import main; main(sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_ctrl_c_stops_cleanly_and_leaves_the_trial_to_resume(synthetic_root, tmp_path):
    spec, study_dir = write_spec(tmp_path, epochs=200), tmp_path / "study"
    sweeping = start_sweep(spec, "--study-dir", str(study_dir), "--data-dir", str(synthetic_root), "--no-download",
                           "--quiet")
    deadline = time.time() + 120
    while not (study_dir / "runs" / "p000-s0" / "checkpoints" / "last.pt").exists():
        assert time.time() < deadline and sweeping.poll() is None
        time.sleep(0.05)
    sweeping.send_signal(signal.SIGINT)
    _, err = sweeping.communicate(timeout=60)
    assert sweeping.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("cifar-mlp: interrupted; rerun the same command")
    epochs = checkpoint.load(study_dir / "runs" / "p000-s0" / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= epochs < 200
    study = study_of(study_dir)
    assert [t.state.name for t in study.trials if t.user_attrs.get("run") == "p000-s0"] == ["FAIL"]
    sweep.recover(study, sweep.open_storage(None, study_dir, 10))  # what a rerun does first
    retry = [t for t in study_of(study_dir).trials if t.user_attrs.get("run") == "p000-s0"][-1]
    assert retry.state.name == "WAITING" and retry.system_attrs["failed_trial"] == 0


def interrupting_at_line(n: int, files: tuple[str, ...]):
    """A trace function that raises KeyboardInterrupt at the nth line run in `files`, as Python's own SIGINT
    handler would if the signal landed there."""
    return at_line(n, files, raise_keyboard_interrupt)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def signalling_at_line(n: int, files: tuple[str, ...]):
    """A trace function that sends this process a SIGINT at the nth line run in files (names containing one)."""
    return at_line(n, files, lambda: os.kill(os.getpid(), signal.SIGINT))


def at_line(n: int, files: tuple[str, ...], action):
    countdown = iter(range(n - 1))

    def tracer(frame, event, arg):
        if event == "call":
            return tracer if any(f in frame.f_code.co_filename for f in files) else None
        if event == "line" and next(countdown, None) is None:
            action()
        return tracer

    return tracer


def test_a_ctrl_c_at_any_line_of_a_journal_write_stays_a_ctrl_c_and_frees_the_lock(tmp_path):
    """A signal lands between any two lines. Optuna's default journal lock turned a Ctrl-C during its release into
    FileNotFoundError (the Ctrl-C test above then exited 1, once in a few CI runs); here every line of a write,
    Optuna's and the lock's, is interrupted in turn."""
    study = optuna.create_study(study_name="g", storage=sweep.open_storage(None, tmp_path, 10))
    for line in itertools.count(1):
        sys.settrace(interrupting_at_line(line, ("journal/_file.py", "cifar_mlp/sweep.py")))
        try:
            study.set_user_attr("attempt", line)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        study.set_user_attr("after", line)  # the same process writes again: no deadlock
        free = os.open(tmp_path / (sweep.JOURNAL + ".flock"), os.O_RDWR)
        fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and then no one holds the lock
        os.close(free)
        if not interrupted:  # the write has fewer lines: each was tried
            break
    assert line > 10
    reread = optuna.load_study(study_name="g", storage=sweep.open_storage(None, tmp_path, 10))
    assert reread.user_attrs["after"] == line


@pytest.fixture
def sigint_as_ctrl_c():
    """SIGINT raising KeyboardInterrupt in this process, as in a terminal, even when pytest runs as a background job
    (started with SIGINT ignored); SIGTERM ignored, to show that a stop signal the process ignores stays ignored."""
    previous = {s: signal.signal(s, handler) for s, handler in ((signal.SIGINT, signal.default_int_handler),
                                                               (signal.SIGTERM, signal.SIG_IGN))}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_a_stop_signal_is_held_outside_delivering_blocks_and_an_ignored_one_stays_ignored(sigint_as_ctrl_c):
    with sweep.stop_signals_held():  # held, then raised on entering a delivering block
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt), sweep.delivering(True):
            pytest.fail("a held stop signal was not raised on entering a delivering block")
    with sweep.stop_signals_held():  # held inside a held block, raised on returning to the delivering one
        with pytest.raises(KeyboardInterrupt), sweep.delivering(True), sweep.delivering(False):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            reached_the_end_of_the_held_block = True
        assert reached_the_end_of_the_held_block
    with sweep.stop_signals_held(), pytest.raises(KeyboardInterrupt), sweep.delivering(True):  # raised at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        pytest.fail("a stop signal inside a delivering block did not interrupt it")
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler  # the handlers before come back


def test_a_ctrl_c_at_any_line_of_optunas_bookkeeping_ends_the_sweep_as_ctrl_c(synthetic_root, tmp_path,
                                                                                monkeypatch, sigint_as_ctrl_c):
    """Optuna 5.1 cannot be interrupted at every line: a KeyboardInterrupt while it records a trial's end becomes an
    UnboundLocalError, and one just inside its journal storage's thread lock leaves the lock held, so the next call
    hangs. A SIGINT at every 5th line it runs, with a stand-in objective (training is covered above), must end the
    sweep as a Ctrl-C, leave no trial RUNNING, and let the next call finish the study."""
    def objective(trial, **_):
        with sweep.delivering(True):
            return 0.5

    monkeypatch.setattr(sweep, "run_trial", objective)
    spec = sweep.load_spec(write_spec(tmp_path, space='"model.widths" = [[32]]'))
    with failing_after(seconds=120):
        line = try_a_stop_signal_at_every_5th_line(spec, tmp_path, synthetic_root)
    assert line > 1000


def try_a_stop_signal_at_every_5th_line(spec, tmp_path, synthetic_root) -> int:
    for line in itertools.count(1, 5):
        study_dir = tmp_path / f"stopped-at-{line}"
        storage = sweep.open_storage(None, study_dir, 10)
        study = sweep.open_study(spec, storage)
        args = (study, storage, spec, study_dir, synthetic_root, "cpu", False, True)
        sys.settrace(signalling_at_line(line, ("/optuna/", "cifar_mlp/sweep.py")))
        try:
            sweep.take_trials(*args)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        assert "RUNNING" not in [t.state.name for t in study.get_trials()]
        sweep.take_trials(*args)
        assert sorted(t.user_attrs["run"] for t in study.get_trials() if t.state.name == "COMPLETE") == [
            "p000-s0", "p000-s1"]
        if not interrupted:  # the study ended before that line: every 5th line was tried
            return line


@contextlib.contextmanager
def failing_after(seconds: int):
    """A hang fails the test instead of stopping the suite (a signal handler can break a thread lock's wait)."""
    def fail(signum, frame):
        pytest.fail(f"still running after {seconds} s: an interrupt left a lock held")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("whole_group", [False, True], ids=["kill-of-the-parent", "ctrl-c-to-the-group"])
def test_a_stop_signal_stops_the_workers_cleanly(synthetic_root, tmp_path, whole_group):
    """A kill reaches only the parent, a Ctrl-C the whole terminal group: either way every worker stops once,
    saving its trial (before the fix, a kill left the workers training and the parent waiting for them)."""
    spec, study_dir = write_spec(tmp_path, epochs=200), tmp_path / "study"
    sweeping = start_sweep(spec, "--study-dir", str(study_dir), "--workers", "2", "--data-dir", str(synthetic_root),
                           "--no-download", "--quiet", start_new_session=True)
    deadline = time.time() + 120
    while len(list(study_dir.glob("runs/*/checkpoints/last.pt"))) < 2:
        assert time.time() < deadline and sweeping.poll() is None
        time.sleep(0.05)
    if whole_group:
        os.killpg(sweeping.pid, signal.SIGINT)
    else:
        sweeping.send_signal(signal.SIGTERM)
    _, err = sweeping.communicate(timeout=60)
    assert sweeping.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("cifar-mlp: interrupted; rerun the same command")
    interrupted = [t for t in study_of(study_dir).trials if t.state.name == "FAIL"]
    assert len(interrupted) == 2
    for trial in interrupted:
        assert 1 <= checkpoint.load(study_dir / "runs" / trial.user_attrs["run"] / "checkpoints" / "last.pt")[
            "epoch"] < 200


def test_a_point_can_name_its_own_preset(tmp_path):
    spec = sweep.parse_spec('[study]\nname = "p"\n[fixed]\n"train.epochs" = 6\n'
                            '[points.fast]\npreset = "fast"\n[points.own]\n"optim.lr" = 0.5\n', "spec")
    fast = sweep.point_config(spec, spec.points["fast"], 7)
    assert fast.model.whitening == "project" and fast.train.epochs == 6 and fast.train.seed == 7
    own = sweep.point_config(spec, spec.points["own"], 0)
    assert own.model.widths == [512, 256, 128] and own.optim.lr == 0.5
    with pytest.raises(UserError, match="no preset named 'nope'"):
        sweep.parse_spec('[study]\nname = "p"\n[points.x]\npreset = "nope"\n', "spec")


def test_a_point_name_with_an_unquoted_dot_is_a_one_line_error():
    with pytest.raises(UserError, match=r'holds a table \'95\'.*quote a point name that has a dot: '
                                        r'\[points."m-0.95"\]') as info:
        sweep.parse_spec('[study]\nname = "p"\n[points.m-0.95]\n"optim.momentum" = 0.95\n', "spec")
    assert "\n" not in str(info.value)
    quoted = sweep.parse_spec('[study]\nname = "p"\n[points."m-0.95"]\n"optim.momentum" = 0.95\n', "spec")
    assert quoted.points == {"m-0.95": {"optim.momentum": 0.95}}


def test_named_points_alone_are_not_named_twice_in_the_summary():
    row = {"state": "COMPLETE", "run_dir": "study/runs/wide-s0", "point": "wide", "optim.lr": 0.1, "objective": 0.5,
           "val_acc": 0.5, "test_acc": 0.4, "last_val_acc": 0.5, "train_acc": 0.6,
           "train_seconds": 3.0}
    alone = sweep.parse_spec('[study]\nname = "p"\n[points.wide]\n"model.widths" = [64]\n', "spec")
    assert sweep_report.point_table([row], alone)[0]["values"] == {}
    crossed = sweep.parse_spec('[study]\nname = "p"\n[points.wide]\n"model.widths" = [64]\n[space]\n'
                               '"optim.lr" = [0.1, 0.2]\n', "spec")
    assert sweep_report.point_table([row | {"run_dir": "study/runs/wide-p000-s0"}], crossed)[0]["values"] == {
        "point": "wide", "optim.lr": 0.1}


def test_notes_describe_named_points_in_the_summary_and_can_be_added_after_the_results(synthetic_root, tmp_path,
                                                                                      monkeypatch):
    body = ('[study]\nname = "n"\n[fixed]\n"train.epochs" = 1\n"train.batch_size" = 64\n"data.val_per_class" = 5\n'
            '"train.device" = "cpu"\n[points.narrow]\n"model.widths" = [16]\n[points.wide]\n"model.widths" = [64]\n')
    spec, study_dir = tmp_path / "n.toml", tmp_path / "study"
    spec.write_text(body)
    sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True)
    assert "| note |" not in (study_dir / "summary.md").read_text()
    spec.write_text(body + '[notes]\nwide = "four times the units: no better"\n')
    monkeypatch.setattr("cifar_mlp.train.train", lambda *a, **k: pytest.fail("a note made the study train again"))
    summary = sweep.sweep(spec, study_dir, data_dir=synthetic_root, allow_download=False, quiet=True).read_text()
    wide = next(line for line in summary.splitlines() if "| wide |" in line)
    narrow = next(line for line in summary.splitlines() if "| narrow |" in line)
    assert wide.endswith("| four times the units: no better |") and narrow.endswith("|  |")
    assert "| val acc (last epoch) | train acc (last epoch) | train s | note |" in summary
    spec.write_text(body + '[notes]\nnarrow = "a quarter of the units"\n')  # newer notes, the study unchanged
    rebuilt = sweep_report.rebuild(study_dir, spec_path=spec).read_text()
    assert "| a quarter of the units |" in rebuilt and "four times" not in rebuilt and f"--spec {spec}`" in rebuilt
    assert "effects.png" not in rebuilt  # named points alone: the ranked table is their effect
    other = tmp_path / "other.toml"
    other.write_text(body.replace("[64]", "[32]"))
    with pytest.raises(UserError, match="describes another study than the one in"):
        sweep_report.rebuild(study_dir, spec_path=other)
    run_dir = study_dir / "runs" / "wide-s0"  # trials recorded before these were kept read them from the history
    last = rundir.read_history(run_dir)[-1]
    assert sweep_report.last_epoch(run_dir) == {"last_val_acc": last["val_acc"], "train_acc": last["train_acc"]}
    assert sweep_report.last_epoch(tmp_path / "elsewhere") == {}
    with pytest.raises(UserError, match="notes.tall must be a string about one of the"):
        sweep.parse_spec(body + '[notes]\ntall = "x"\n', "spec")
    with pytest.raises(UserError, match="notes.wide must be a string"):
        sweep.parse_spec(body + "[notes]\nwide = 3\n", "spec")


COMMITTED_SPECS = sorted(p for p in (Path(__file__).resolve().parents[1] / "studies").rglob("*.toml")
                         if "claims" not in p.parts)  # the claims specs have their own test in test_claims.py


@pytest.mark.parametrize("path", COMMITTED_SPECS, ids=lambda p: p.stem)
def test_every_committed_study_spec_loads_and_each_grid_point_is_a_valid_run_config(path):
    spec = sweep.load_spec(path)
    points = sweep.grid(spec) if spec.sampler == "grid" else []
    assert spec.sampler != "grid" or points
    for _, _, values in points:
        sweep.point_config(spec, values, spec.seeds[0])

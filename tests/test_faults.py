"""Fault injection: bad values, awkward batch sizes, a full disk, two processes on one run directory, a model too
large for memory, damaged run files and SIGKILL at any point. Each ends in a one-line UserError or recovers,
and never loses the last good checkpoint."""

import dataclasses
import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifar_mlp import UserError, checkpoint, config, rundir
from cifar_mlp.cli import main
from cifar_mlp.data import batch_count, batch_indices
from cifar_mlp.evaluate import evaluate_run
from cifar_mlp.report import compare, write_report
from cifar_mlp.train import train


def run(cfg, run_dir, root, **kwargs):
    return train(cfg, run_dir, root, allow_download=False, quiet=True, **kwargs)


def with_train(cfg, **changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def one_line_error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def temporaries(run_dir):
    return list(run_dir.rglob(rundir.TEMPORARY))


def same_weights(a, b) -> bool:
    a, b = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Non-finite and out-of-range values

NUMERIC_KEYS = sorted(config.RANGES)
FLOAT_KEYS = [k for k in NUMERIC_KEYS if isinstance(getattr(getattr(config.Config(), k.split(".")[0]),
                                                            k.split(".")[1]), float)]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_floats_are_refused(key, value):
    message = one_line_error(lambda: config.apply_overrides(config.read_toml("seed"), [f"{key}={value}"]))
    assert key in message and "finite" in message


@pytest.mark.parametrize("key", [k for k in NUMERIC_KEYS if k not in FLOAT_KEYS])
@pytest.mark.parametrize("value", ["-1", "99999999999999999999999999", "[99999999999999999999999999]"])
def test_out_of_range_ints_are_refused(key, value):
    if key == "model.widths" and not value.startswith("["):
        value = f"[{value}]"
    one_line_error(lambda: config.apply_overrides(config.read_toml("seed"), [f"{key}={value}"]))


def test_cli_refuses_nan_from_a_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--run-dir", str(tmp_path / "run"), "--lr", "nan"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "optim.lr must be a finite number" in err
    assert not (tmp_path / "run").exists()


KNOWN_KEYS = [f"{f.name}.{sf.name}" for f in dataclasses.fields(config.Config)
              for sf in dataclasses.fields(f.default_factory)]
TOML_VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "+nan", "1e400", "-1e400", "0", "-0.0", "-1", "-99999999999999999999",
                     "99999999999999999999", "[]", "{}", "[[]]", "[[1, 2]]", "{a = 1}", "[1, {b = 2}]", '""', "''",
                     "true", "false", "[nan]", "[inf, 1]", "['flip', 3]", "1979-05-27", "'\\n'", "x\ny = 2", ""]),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=4).map(str),
    st.text(max_size=12),
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12),
                 st.sampled_from(["train", "model.", ".lr", "a.b.c"]))


@settings(max_examples=400, deadline=None)
@given(assignments=st.lists(st.tuples(KEYS, TOML_VALUES), min_size=1, max_size=3))
def test_random_overrides_give_a_config_or_a_one_line_error(assignments):
    overrides = [f"{key}={value}" for key, value in assignments]
    try:
        cfg = config.apply_overrides(config.read_toml("seed"), overrides)
    except UserError as e:
        assert "\n" not in str(e)
        return
    config.validate(cfg)
    assert config.from_dict(cfg.to_dict()) == cfg


# Batch sizes

def test_no_batch_holds_a_single_image():
    generator = torch.Generator().manual_seed(0)
    for n in range(1, 40):
        for batch_size in range(1, 45):
            sizes = [len(b) for b in batch_indices(n, batch_size, generator, "cpu")]
            assert sum(sizes) == n and len(sizes) == batch_count(n, batch_size)
            assert min(sizes) >= 2 or n == 1 or batch_size == 1
            assert max(sizes) <= batch_size + 1


@pytest.mark.parametrize("batch_size", [2, 3, 83, 249, 250, 251, 10_000])
def test_every_batch_size_trains(tiny_config, synthetic_root, tmp_path, batch_size):
    history = run(with_train(tiny_config, epochs=1, batch_size=batch_size), tmp_path / "run", synthetic_root)
    assert len(history) == 1  # 250 train images: 83 and 249 leave one image, which joins the batch before it


def test_batch_size_one_is_refused_with_batchnorm_and_trains_without(tiny_config, synthetic_root, tmp_path):
    message = one_line_error(lambda: run(with_train(tiny_config, batch_size=1), tmp_path / "a", synthetic_root))
    assert "batch_size=1 cannot train BatchNorm" in message
    layer = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, norm="layer"))
    assert len(run(with_train(layer, epochs=1, batch_size=1), tmp_path / "b", synthetic_root)) == 1


def test_resume_is_exact_with_a_folded_batch(tiny_config, synthetic_root, tmp_path, monkeypatch):
    cfg = with_train(tiny_config, batch_size=83)
    full = run(cfg, tmp_path / "full", synthetic_root)
    run(with_train(cfg, epochs=2), tmp_path / "cut", synthetic_root)
    resumed = run(cfg, tmp_path / "cut", synthetic_root, resume=True)
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in full]
    assert same_weights(tmp_path / "full/checkpoints/last.pt", tmp_path / "cut/checkpoints/last.pt")


# A full disk

def fill_disk_after(monkeypatch, good_writes: int) -> list:
    """Let good_writes writes through, then fail every write after a few bytes, as a full disk does."""
    calls = []
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def opener(path, mode="r", *args, **kwargs):
        calls.append(path)
        f = real_open(path, mode, *args, **kwargs)
        return f if len(calls) <= good_writes else FullDisk(f)

    monkeypatch.setattr(rundir, "open", opener, raising=False)
    return calls


def test_full_disk_during_training_keeps_the_last_checkpoint(tiny_config, synthetic_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # writes: config.json, environment.json, then per epoch last.pt, best.pt (when lower), history.csv
    fill_disk_after(monkeypatch, 2 + 3)
    message = one_line_error(lambda: run(tiny_config, run_dir, synthetic_root))
    assert message.startswith("the disk is full: writing ") and "needs" in message and "--resume" in message
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert not temporaries(run_dir)
    monkeypatch.undo()
    assert len(run(tiny_config, run_dir, synthetic_root, resume=True)) == tiny_config.train.epochs


def test_full_disk_during_evaluation_and_report(trained_run, tmp_path, monkeypatch):
    run_dir, root = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    fill_disk_after(monkeypatch, 4)
    assert "the disk is full" in one_line_error(lambda: evaluate_run(copy, data_dir=root, device="cpu", quiet=True,
                                                                     allow_download=False))
    assert not temporaries(copy)
    monkeypatch.undo()
    evaluate_run(copy, data_dir=root, device="cpu", quiet=True, allow_download=False)
    fill_disk_after(monkeypatch, 0)
    assert "report.md" in one_line_error(lambda: write_report(copy))
    assert not temporaries(copy)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1.5 MiB file system (tmpfs), where the platform lets this process mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the injected full-disk tests still ran")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk(tiny_config, synthetic_root, small_disk):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, widths=[16]))
    run_dir = small_disk / "run"  # last.pt and best.pt are 600 KiB each: the second epoch's do not fit
    message = one_line_error(lambda: run(with_train(cfg, epochs=20), run_dir, synthetic_root))
    assert message.startswith("the disk is full: writing ") and "free" in message
    epoch = checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= epoch < 20 and not temporaries(run_dir)


# Two processes on one run directory

def start_training(run_dir, root, *extra):
    cmd = [sys.executable, "-m", "cifar_mlp.cli", "train", "--run-dir", str(run_dir), "--data-dir", str(root),
           "--no-download", "--device", "cpu", "--epochs", "100000", "--batch-size", "25", "--quiet",
           "--set", "model.widths=[64]", "--set", "data.val_per_class=5", *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.05)
    return process


def test_a_second_process_on_a_run_directory_is_refused(tiny_config, synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, synthetic_root)
    try:
        for kwargs in ({}, {"overwrite": True}, {"resume": True}):
            message = one_line_error(lambda kwargs=kwargs: run(tiny_config, run_dir, synthetic_root, **kwargs))
            assert f"is in use by process {first.pid}" in message
        assert (run_dir / "checkpoints" / "last.pt").exists() and first.poll() is None
    finally:
        first.kill()
        first.wait()
    resumed = run(with_train(tiny_config, epochs=1), run_dir, synthetic_root, overwrite=True)  # the lock died too
    assert len(resumed) == 1


def test_a_lock_left_by_a_killed_process_does_not_block_resume(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, synthetic_root)
    first.send_signal(signal.SIGKILL)
    first.wait()
    epoch = checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"]
    main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", str(epoch + 1), "--data-dir",
          str(synthetic_root), "--no-download", "--quiet"])
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == epoch + 1


# A model too large for memory

def test_a_model_too_large_for_memory_is_refused_before_loading_data(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, widths=[10**8, 10**8]))
    message = one_line_error(lambda: run(cfg, tmp_path / "run", tmp_path / "no-data-here"))
    assert re.match(r"the model has [\d,]{15,} parameters: training needs about [\d.]+ TiB", message)
    assert "smaller model.widths" in message


# Damaged run files

@pytest.fixture
def evaluated_copy(trained_run, tmp_path):
    run_dir, root = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    evaluate_run(copy, data_dir=root, device="cpu", quiet=True, allow_download=False)
    return copy, root


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_metrics_json(evaluated_copy, tmp_path):
    copy, _ = evaluated_copy
    truncate(copy / "metrics.json")
    for call in (lambda: write_report(copy), lambda: compare([copy], tmp_path)):
        message = one_line_error(call)
        assert "metrics.json is damaged" in message and f"`cifar-mlp evaluate {copy}`" in message
    (copy / "metrics.json").write_text("[1, 2]")
    assert "metrics.json is damaged" in one_line_error(lambda: write_report(copy))


@pytest.mark.parametrize("damage", [lambda p: truncate(p, 0.6), lambda p: p.write_text("epoch,train_loss\n1,2\n"),
                                    lambda p: p.write_text(p.read_text().replace("1,", "x,", 1)),
                                    lambda p: p.write_text("")])
def test_damaged_history_csv_and_its_repair(evaluated_copy, tmp_path, damage):
    copy, root = evaluated_copy
    damage(copy / "history.csv")
    for call in (lambda: write_report(copy), lambda: compare([copy], tmp_path)):
        message = one_line_error(call)
        assert "history.csv" in message and "--resume" in message
    run(config.from_dict(rundir.read_config(copy)), copy, root, resume=True)
    write_report(copy)


def edit_first_row(path, edit):
    lines = path.read_text().split("\n")
    path.write_text("\n".join([lines[0], edit(lines[1]), *lines[2:]]))


@pytest.mark.parametrize("damage", [lambda p: truncate(p, 0.6), lambda p: p.write_text(""), lambda p: p.unlink(),
                                    lambda p: edit_first_row(p, lambda row: row.rsplit(",", 1)[0] + ",x"),
                                    lambda p: edit_first_row(p, lambda row: row.rsplit(",", 1)[0] + ",nan"),
                                    lambda p: edit_first_row(p, lambda row: row + ",0.1"),
                                    lambda p: edit_first_row(p, lambda row: row.rsplit(",", 1)[0])])
def test_damaged_predictions_csv(evaluated_copy, damage):
    copy, _ = evaluated_copy
    damage(copy / "predictions_validation.csv")
    message = one_line_error(lambda: rundir.read_predictions(copy, "validation"))
    assert "predictions_validation.csv is" in message
    assert f"`cifar-mlp evaluate RUN --splits validation --out {copy}`" in message


@pytest.mark.parametrize("name", ["config.json", "environment.json"])
def test_damaged_json_written_by_train_and_its_repair(evaluated_copy, name):
    copy, root = evaluated_copy
    (copy / name).write_text('{"data": ')
    message = one_line_error(lambda: write_report(copy))
    assert f"{name} is damaged" in message and "--resume" in message
    if name == "config.json":
        assert "config.json is damaged" in one_line_error(
            lambda: evaluate_run(copy, data_dir=root, device="cpu", quiet=True, allow_download=False))
    main(["train", "--run-dir", str(copy), "--resume", "--data-dir", str(root), "--no-download", "--quiet"])
    write_report(copy)


def test_damaged_checkpoint_on_resume(evaluated_copy, capsys):
    copy, root = evaluated_copy
    truncate(copy / "checkpoints" / "last.pt")
    with pytest.raises(SystemExit) as info:
        main(["train", "--run-dir", str(copy), "--resume", "--data-dir", str(root), "--no-download"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "last.pt is corrupt" in err and err.count("\n") == 1


# SIGKILL at any point

KILLER = """
import builtins, os, signal, sys
from cifar_mlp import cli, rundir, train
point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = []

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def opener(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    if "w" in mode and f".{point}.tmp" in str(path):
        seen.append(path)
        if len(seen) == nth:
            f.write(b"half a file")
            f.flush()
            kill()
    return f

def epoch_then_kill(*args, **kwargs):
    seen.append(1)
    if len(seen) == nth:
        kill()
    return real_epoch(*args, **kwargs)

rundir.open = opener
real_epoch, train.train_epoch = train.train_epoch, epoch_then_kill
cli.main(argv)
"""


@pytest.mark.parametrize(("point", "nth"), [("last.pt", 1), ("last.pt", 3), ("best.pt", 2), ("history.csv", 2),
                                            ("config.json", 1), ("epoch", 3)])
def test_sigkill_then_resume_equals_an_uninterrupted_run(synthetic_root, tmp_path, point, nth):
    args = ["train", "--data-dir", str(synthetic_root), "--no-download", "--device", "cpu", "--epochs", "4",
            "--batch-size", "64", "--lr", "0.003", "--set", "model.widths=[64,32]", "--set", "data.val_per_class=5",
            "--quiet"]
    main([*args, "--run-dir", str(tmp_path / "full")])
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILLER, point, str(nth), *args, "--run-dir", str(killed)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if (point, nth) in (("config.json", 1), ("last.pt", 1)):  # before the first checkpoint: start again
        assert "start it again with --overwrite" in one_line_error(lambda: rundir.prepare(killed, True, False))
        main([*args, "--run-dir", str(killed), "--overwrite"])
    else:
        main([*args, "--run-dir", str(killed), "--resume"])
    assert not temporaries(killed)
    assert same_weights(tmp_path / "full/checkpoints/last.pt", killed / "checkpoints/last.pt")
    assert json.loads((killed / "config.json").read_text()) == json.loads((tmp_path / "full/config.json").read_text())
    timing = {"epoch_time_s", "samples_per_s"}
    histories = [[{k: v for k, v in row.items() if k not in timing} for row in rundir.read_history(d)]
                 for d in (tmp_path / "full", killed)]
    assert histories[0] == histories[1]

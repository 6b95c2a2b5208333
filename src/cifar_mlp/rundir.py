"""A run directory's files, read and written in one place.

A run directory holds config.json, environment.json, history.csv, loss_plot.png, checkpoints/{last,best}.pt
(written by train), metrics.json and the evaluation's CSV/PNG files (evaluate), report.md/.html (report) and a
`.lock` file. Every write goes to a temporary file in the same folder and is renamed into place, so a kill at
any moment leaves either the old file or the new one, never half of one; a full disk is a one-line error that
leaves no temporary file behind. Every read of a damaged file is a one-line error that names the file and the
command that writes it again.
"""

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import socket
import sys
from pathlib import Path

from cifar_mlp import UserError

CONFIG, ENVIRONMENT, HISTORY, METRICS = "config.json", "environment.json", "history.csv", "metrics.json"
ROBUSTNESS = "robustness.json"  # written by cifar-mlp robustness, read by the report
LOCK = ".lock"
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s")
GRAD_NORM = "grad_norm_"  # history.csv's optional columns grad_norm_1, ...: one per weight layer, input to output
TEMPORARY = ".*.tmp*"  # the names write_bytes gives its temporary files


def size_text(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise UserError(f"the disk is full: writing {path} needs {size_text(len(data))} and {size_text(free)} "
                            "is free; free some space, then run the command again (a training run continues "
                            "with --resume)") from None
        raise UserError(f"cannot write {path} ({e.strerror}); check that its folder is writable, or choose "
                        "another output folder") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(obj, path) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path, header, rows) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_history(rows: list[dict], path) -> None:
    fields = history_fields(rows[0]) if rows else HISTORY_FIELDS
    write_csv(path, fields, [[row[k] for k in fields] for row in rows])


def history_fields(row: dict) -> tuple[str, ...]:
    """The fixed columns, then a run's gradient-norm columns (train.grad_norms) in layer order."""
    return HISTORY_FIELDS + tuple(k for k in row if k.startswith(GRAD_NORM))


def remove_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process that was killed while writing (only call while holding the lock)."""
    for tmp in Path(run_dir).rglob(TEMPORARY):
        tmp.unlink(missing_ok=True)


def read_json(path, writer: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON object with the required keys, or a one-line error naming the file and `writer`, the command
    that writes it again."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; write it with {writer}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); write it again with {writer}") from None
    missing = [k for k in required if k not in obj] if isinstance(obj, dict) else list(required)
    if not isinstance(obj, dict) or missing:
        raise UserError(f"{path} is damaged (missing {', '.join(missing) or 'its keys'}); write it again with "
                        f"{writer}") from None
    return obj


def resume_command(run_dir) -> str:
    """The command that writes a training run's files again: a resume from the last checkpoint, if there is one."""
    if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        return f"`cifar-mlp train --run-dir {run_dir} --overwrite` (the run has no checkpoint to resume from)"
    return f"`cifar-mlp train --resume --run-dir {run_dir}` (it rewrites the run's files from checkpoints/last.pt)"


def read_config(run_dir) -> dict:
    return read_json(Path(run_dir) / CONFIG, resume_command(run_dir), ("data", "model", "optim", "train"))


def read_environment(run_dir) -> dict:
    keys = ("python", "torch", "cifar_mlp", "device", "cpu", "torch_threads", "gpu", "git_commit")
    return read_json(Path(run_dir) / ENVIRONMENT, resume_command(run_dir), keys)


def read_metrics(run_dir) -> dict:
    return read_json(Path(run_dir) / METRICS, f"`cifar-mlp evaluate {run_dir}`",
                     ("checkpoint", "epoch", "split", "splits", "seconds"))


def read_robustness(run_dir) -> dict | None:
    """The run's robustness figures, or None where `cifar-mlp robustness` has not measured it."""
    path = Path(run_dir) / ROBUSTNESS
    if not path.is_file():
        return None
    return read_json(path, f"`cifar-mlp robustness {run_dir} --out DIR`", ("transforms", "summary"))


def read_csv_rows(path: Path, fix: str) -> list[dict]:
    """A CSV file's rows as dicts keyed by its header; a missing or unreadable file is a one-line error naming fix,
    the command that writes it again."""
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; write it with {fix}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}); write it again with {fix}") from None


def read_history(run_dir) -> list[dict]:
    """history.csv as one dict per epoch; a truncated or edited file is a one-line error."""
    path = Path(run_dir) / HISTORY
    fix = resume_command(run_dir)
    rows = read_csv_rows(path, fix)
    history = []
    for number, row in enumerate(rows, start=1):
        try:
            parsed = {k: (int(row[k]) if k == "epoch" else float(row[k])) for k in history_fields(row)}
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} is damaged (row {number} is incomplete or not numeric); write it again with "
                            f"{fix}") from None
        if parsed["epoch"] != number or not all(map(math.isfinite, parsed.values())):
            raise UserError(f"{path} is damaged (row {number} holds epoch {row['epoch']} or a non-finite value); "
                            f"write it again with {fix}")
        history.append(parsed)
    if not history:
        raise UserError(f"{path} holds no epochs; write it again with {fix}")
    return history


def read_predictions(folder, split: str) -> tuple[list[int], list[list[float]]]:
    """The true labels and predicted probabilities of predictions_SPLIT.csv, which cifar-mlp evaluate writes into
    its --out folder (by default the run directory); a damaged file is a one-line error."""
    path = Path(folder) / f"predictions_{split}.csv"
    fix = f"`cifar-mlp evaluate RUN --splits {split} --out {folder}`"
    rows = read_csv_rows(path, fix)
    try:
        labels = [int(row["true"]) for row in rows]
        probs = [[float(v) for k, v in row.items() if k.startswith("p_")] for row in rows]  # a longer row: k None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is damaged (a row is incomplete or not numeric); write it again with {fix}") from None
    if not rows or len({len(p) for p in probs}) != 1 or not all(math.isfinite(v) for p in probs for v in p):
        raise UserError(f"{path} is damaged (no rows, rows of unequal length or a non-finite value); write it "
                        f"again with {fix}")
    return labels, probs


_held: dict[Path, int] = {}


class Busy(UserError):
    """The run directory is held by another process."""


@contextlib.contextmanager
def locked(run_dir):
    """Hold the run directory for this process: another process that asks for it gets a one-line error naming
    this one. The lock is the kernel's (flock), so a killed process leaves no lock behind; re-entrant within a
    process, so `run` can hold it across train, evaluate and report."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot use {run_dir} as a run directory ({e.strerror}); choose another folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Busy(f"run directory {run_dir} is in use by {holder}; wait for it to finish, or choose another "
                        "run directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)})\n".encode(), 0)
    _held[run_dir] = fd
    try:
        remove_temporaries(run_dir)
        yield
    finally:
        del _held[run_dir]
        os.close(fd)


def last_checkpoint(run_dir) -> Path:
    """checkpoints/last.pt, which --resume continues from; a one-line error when there is none."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: {path} does not exist (the run stopped before its first epoch ended, or "
                        "never started); start it again with --overwrite instead of --resume")
    return path


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check that a run may start in run_dir (call while holding its lock): resume needs a checkpoint, and an
    existing run is only replaced with overwrite (its files are deleted, the lock file kept)."""
    if resume:
        last_checkpoint(run_dir)
        return
    existing = [p for p in run_dir.iterdir() if p.name != LOCK]
    if existing and not overwrite:
        raise UserError(f"run directory {run_dir} already exists; choose another --run-dir, continue it with "
                        "--resume, or replace it with --overwrite")
    for p in existing:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()

"""TensorBoard logging: every history column per epoch with the CSV's values, the lr every step, hparams and the
loss plot; a resume purges what the interrupted run logged after its checkpoint; a one-line error without it."""

import dataclasses
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_mlp import UserError, rundir, train
from cifar_mlp.data import batch_count
from cifar_mlp.rundir import HISTORY_FIELDS


def with_board(cfg, **train_changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tensorboard=True, **train_changes))


def events(path):
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_every_history_column_every_step_lr_hparams_and_the_plot(tiny_config, synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    history = train.train(with_board(tiny_config), run_dir, synthetic_root, allow_download=False, quiet=True)
    log = events(run_dir / "tensorboard")
    steps = batch_count(250, tiny_config.train.batch_size)
    csv = rundir.read_history(run_dir)
    for key in HISTORY_FIELDS:
        logged = log.Scalars(f"epoch/{key}")
        assert [e.step for e in logged] == [r["epoch"] * steps - 1 for r in history]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in csv], rel=1e-6)
    lr = log.Scalars("step/lr")
    assert [e.step for e in lr] == list(range(tiny_config.train.epochs * steps))
    assert log.Images("loss_plot")[0].width > 100
    hparams = events(run_dir / "tensorboard" / "hparams")
    assert {"final/val_loss", "best/val_acc"} <= set(hparams.Tags()["scalars"])


def test_a_resumed_run_logs_each_epoch_once(tiny_config, synthetic_root, tmp_path, monkeypatch):
    run_dir, cfg = tmp_path / "run", with_board(tiny_config)
    real_write = rundir.write_history

    def interrupt_at_epoch_three(rows, path):
        if len(rows) == 3:
            raise KeyboardInterrupt  # after epoch 3's checkpoint
        real_write(rows, path)

    monkeypatch.setattr(rundir, "write_history", interrupt_at_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run_dir, synthetic_root, allow_download=False, quiet=True)
    monkeypatch.undo()
    train.train(cfg, run_dir, synthetic_root, allow_download=False, quiet=True, resume=True)
    log = events(run_dir / "tensorboard")
    steps = batch_count(250, tiny_config.train.batch_size)
    assert [e.step for e in log.Scalars("epoch/epoch")] == [e * steps - 1 for e in (1, 2, 3, 4)]
    assert [e.step for e in log.Scalars("step/lr")] == list(range(4 * steps))


def test_without_the_package_a_one_line_error_before_training(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'cifar-mlp\[tensorboard\]'") as info:
        train.train(with_board(tiny_config), tmp_path / "run", tmp_path / "no-data", allow_download=False)
    assert "\n" not in str(info.value)

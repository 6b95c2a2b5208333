"""TensorBoard logging of a training run (`--set train.tensorboard=true`): event files under RUN/tensorboard.

The x-axis is the optimizer step throughout: the learning rate at every step, every history.csv column at the
last step of its epoch (the same values as the CSV), and at the end the hyperparameters with the final metrics
and the loss plot. Each epoch is logged and flushed before its checkpoint is written, and a resumed run purges
what the interrupted one logged after its last checkpoint, so every step is shown once.
"""

from pathlib import Path

import numpy as np

from cifar_mlp import UserError
from cifar_mlp.rundir import history_fields


def require() -> None:
    """A one-line error, before any training, when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("train.tensorboard needs the tensorboard package: pip install 'cifar-mlp[tensorboard]', "
                        "or drop --set train.tensorboard=true") from None


class TrainingLog:
    def __init__(self, run_dir: Path, steps_per_epoch: int, history: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch = steps_per_epoch
        resumed_at = len(history) * steps_per_epoch  # what an interrupted run logged from here on is hidden
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resumed_at or None)

    def steps(self, epoch: int, learning_rates: list[float]) -> None:
        first = (epoch - 1) * self.steps_per_epoch
        for i, lr in enumerate(learning_rates):
            self.writer.add_scalar("step/lr", lr, first + i)

    def epoch(self, row: dict) -> None:
        step = row["epoch"] * self.steps_per_epoch - 1
        for key in history_fields(row):
            self.writer.add_scalar(f"epoch/{key}", row[key], step)
        self.writer.flush()

    def finish(self, config: dict, history: list[dict], loss_plot: Path) -> None:
        from PIL import Image

        hparams = {f"{section}.{key}": value if isinstance(value, int | float | str | bool) else str(value)
                   for section, values in config.items() for key, value in values.items()}
        best = min(history, key=lambda r: r["val_loss"])
        metrics = {"final/val_loss": history[-1]["val_loss"], "final/val_acc": history[-1]["val_acc"],
                   "final/train_loss": history[-1]["train_loss"], "best/val_loss": best["val_loss"],
                   "best/val_acc": best["val_acc"]}
        self.writer.add_hparams(hparams, metrics, run_name="hparams")
        step = len(history) * self.steps_per_epoch - 1
        self.writer.add_image("loss_plot", np.asarray(Image.open(loss_plot).convert("RGB")), step, dataformats="HWC")
        self.close()

    def close(self) -> None:
        self.writer.close()

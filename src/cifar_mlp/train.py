"""The training loop: batches by indexing device tensors, one host sync per epoch, atomic checkpoints, exact resume.

It writes config.json, environment.json, history.csv, loss_plot.png and checkpoints/{last,best}.pt (rundir).
"""

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lion_pytorch import Lion
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from cifar_mlp import UserError, checkpoint, environment, pretrain, rundir, tensorboard_log
from cifar_mlp.config import Config, validate
from cifar_mlp.data import (
    CLASSES,
    Cifar10,
    augment,
    batch_count,
    batch_indices,
    load_cifar10,
    make_splits,
    mix,
    resolve_device,
)
from cifar_mlp.model import Ensemble, average_probabilities, parameter_count, predict_logits
from cifar_mlp.networks import build as build_model


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at an optimizer step: linear warm-up, then none/cosine/onecycle.

    cosine decays to 0 along a half cosine; onecycle decays linearly to 0 (after its warm-up ramp).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


def resume_config(run_dir) -> dict:
    """The config a run was trained with, from its last checkpoint (which --resume continues), so that a damaged
    config.json does not stop a resume: the resume writes it again."""
    return checkpoint.load(rundir.last_checkpoint(run_dir))["config"]


def check_memory(cfg: Config, device: torch.device) -> None:
    """A one-line error, before any data is loaded, for a model whose weights, gradients, AdamW moments (and
    EMA copy) do not fit in the device's free memory. The model is built on the meta device: no memory."""
    with torch.device("meta"):
        params = parameter_count(build_model(cfg.model))
    needed = params * 4 * (4 + bool(cfg.optim.ema_decay))
    available = environment.available_memory(device)
    if available is not None and needed > available:
        raise UserError(f"the model has {params:,} parameters: training needs about {rundir.size_text(needed)} for "
                        f"its weights, gradients and optimizer state, but {device} has {rundir.size_text(available)} "
                        "free; use smaller model.widths (or fewer model.members)")


def rng_state(shuffle: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Optimizers:
    """Several optimizers stepped, scheduled and checkpointed as one: Muon takes only weight matrices."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        """Read afresh each time: load_state_dict replaces an optimizer's group dicts."""
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, one in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(one)


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer | Optimizers:
    """optim.optimizer; lr is set per step by lr_factor. AdamW uses its fused kernel (measurably faster on CPU:
    BENCHMARKS.md). SGD's weight decay is torch's L2 penalty, coupled to the gradient. Muon (Jordan et al. 2024)
    steps each hidden layer's weight matrix by its orthogonalised momentum, scaled to AdamW's update size
    ("match_rms_adamw"), so that AdamW's learning rate and weight decay carry over; the output layer, biases and
    norms, which Muon is not meant for, stay with AdamW. Lion (Chen et al. 2023, lion-pytorch) steps every weight by
    the sign of an interpolated momentum, so each step has the same size per weight: it wants an lr 3-10 times
    smaller than AdamW's and a weight decay as many times larger (its decay is lr * weight_decay, as AdamW's).
    With optim.decay_biases_and_norms false, biases and norm scales and shifts are not decayed (decay_groups)."""
    o = cfg.optim
    groups = functools.partial(decay_groups, decay_biases_and_norms=o.decay_biases_and_norms)
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups(model.parameters()), lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0,
                               weight_decay=o.weight_decay)
    if o.optimizer == "lion":
        return Lion(groups(model.parameters()), lr=o.lr, weight_decay=o.weight_decay)
    adamw = functools.partial(torch.optim.AdamW, lr=o.lr, weight_decay=o.weight_decay, fused=True)
    if o.optimizer == "adamw":
        return adamw(groups(model.parameters()))
    hidden = {name: p for name, p in model.named_parameters() if p.ndim == 2 and "head" not in name.split(".")}
    rest = [p for name, p in model.named_parameters() if name not in hidden]
    return Optimizers(torch.optim.Muon(hidden.values(), lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                       adjust_lr_fn="match_rms_adamw"), adamw(groups(rest)))


def decay_groups(params, decay_biases_and_norms: bool) -> list:
    """The parameters as the optimizer takes them: all with its weight decay, or two groups, the weight matrices
    and kernels (2 dimensions or more) with it and the biases and norm scales and shifts (1 dimension) without, as
    nanoGPT and timm train: they are few, and shrinking them does not make the function simpler, only moves it."""
    params = list(params)
    if decay_biases_and_norms:
        return params
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def teacher_probabilities(cfg: Config, splits, device: torch.device) -> tuple[torch.Tensor | None, dict]:
    """The teacher's (train.teacher) probabilities for every train image, at optim.distill_temperature, computed
    once: without augmentation each image's target is fixed, so the teacher never runs during training
    (distillation, Hinton et al. 2015; the student's logits are not softened). A teacher trained on another split
    has seen this run's validation images, and is refused."""
    if not cfg.train.teacher:
        return None, {}
    path, _ = checkpoint.locate(cfg.train.teacher)
    ckpt = checkpoint.load(path)
    if ckpt["split"].get("fingerprint") != splits.info["fingerprint"]:
        raise UserError(f"the teacher {path} was trained on another train/validation split, so it has seen this "
                        "run's validation images; train the teacher with this run's data.val_per_class and "
                        "data.split_seed")
    teacher = checkpoint.build_model(ckpt, path).to(device)
    logits = predict_logits(teacher, splits.train.images).clone()
    return (logits / cfg.optim.distill_temperature).softmax(1), {"checkpoint": str(path), "epoch": ckpt["epoch"]}


def make_ema(model, cfg: Config) -> AveragedModel | None:
    """The exponential moving average of the weights and BatchNorm statistics, updated after every step."""
    if not cfg.optim.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)


def forward_loss(model, loss_fn, x, target, bf16: bool, mutual_weight: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (under bf16 autocast when asked) and the float32 loss against target. An ensemble's loss is
    the mean of its members' own losses, not the loss of its averaged prediction, so that each member learns as
    it would alone (Adam's steps do not depend on the 1 / members scale of the gradients); mutual_weight adds
    that much of mutual_kl, through which the members also learn from each other."""
    ensemble = isinstance(model, Ensemble)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model.member_logits(x) if ensemble else model(x)
    if not ensemble:
        return logits, loss_fn(logits.float(), target)
    member_logits = logits.float()
    loss = torch.stack([loss_fn(one, target) for one in member_logits]).mean()
    if mutual_weight:
        loss = loss + mutual_weight * mutual_kl(member_logits)
    return average_probabilities(member_logits), loss


def mutual_kl(member_logits: torch.Tensor) -> torch.Tensor:
    """Deep mutual learning (Zhang et al. 2018): KL(p_l || p_k) averaged over every ordered pair of distinct
    members l, k and over the batch, with each peer's p_l held constant, so that member k is pulled only towards
    its peers' predictions, as a student towards a teacher's."""
    log_p = member_logits.log_softmax(-1)  # members x N x C
    peer_log_p = log_p.detach()
    peer_p = peer_log_p.exp()
    m, n = log_p.shape[:2]
    kl = ((peer_p * peer_log_p).sum((1, 2))[:, None] - torch.einsum("lnc,knc->lk", peer_p, log_p)) / n  # l, k
    return (kl.sum() - kl.diagonal().sum()) / (m * (m - 1))


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of model, whatever its dimension."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def batch_norm_momentum(model: nn.Module, momentum: float | None):
    """Within the block, every BatchNorm layer of model (yielded) updates its running statistics with this momentum:
    0.0 leaves them as they are, None makes them a cumulative average; the layers' own momenta come back after."""
    norms = {m: m.momentum for m in batch_norms(model)}
    for m in norms:
        m.momentum = momentum
    try:
        yield list(norms)
    finally:
        for m, own in norms.items():
            m.momentum = own


def sharpness_aware_gradients(model, loss_fn, x, target, rho: float, bf16: bool,
                              mutual_weight: float = 0.0) -> None:
    """SAM (Foret et al., 2021): replace the gradients, already computed at the weights w, by those at
    w + rho * g / |g|, the steepest point within radius rho to first order, so that the step prefers flat minima.
    The weights are restored exactly, and BatchNorm running statistics are not updated by this second pass."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        originals = [p.detach().clone() for p in params]
        grads = [p.grad for p in params]
        torch._foreach_add_(params, torch._foreach_mul(grads, rho / (nn.utils.get_total_norm(grads) + 1e-12)))
    with batch_norm_momentum(model, 0.0):
        model.zero_grad(set_to_none=True)
        forward_loss(model, loss_fn, x, target, bf16, mutual_weight)[1].backward()
    with torch.no_grad():
        for p, original in zip(params, originals, strict=True):
            p.copy_(original)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> None:
    """Replace every BatchNorm layer's running statistics by their average over images, with dropout off.

    Training keeps an exponential average over recent batches, with dropout on and the weights still moving;
    evaluation turns dropout off, which changes the variance of what a BatchNorm after a dropout sees (the
    "variance shift" of Li et al. 2019), so recomputing the statistics as evaluation sees them lowers the
    validation loss. Dropout in eval mode draws no random numbers, and the weights are untouched, so training
    goes on exactly as without it. The batches are of near-equal size (at least 2 images each), since the
    cumulative average (momentum None) weights each batch equally."""
    was_training = model.training
    model.eval()
    with batch_norm_momentum(model, None) as norms:
        for m in norms:
            m.reset_running_stats()
            m.train()
        for batch in images.tensor_split(max(1, math.ceil(len(images) / batch_size))):
            model(batch)
    model.train(was_training)


def train_epoch(model, optimizer, loss_fn, split, cfg: Config, shuffle: torch.Generator, epoch: int, ema=None,
                teacher_probs: torch.Tensor | None = None):
    """One pass over the split in shuffled batches. Returns the summed loss and the correct count as device
    tensors (so that the host waits for the device once per epoch, not once per step), each step's lr, and
    (train.grad_norms) each weight layer's gradient norm summed over the steps, else None.
    With mixup/cutmix the loss is against the blended labels, the accuracy against the label with the larger
    share of each blended image; with a teacher, the loss is against each label blended with the teacher's
    probabilities for that image, the accuracy against the label. The last data.clean_epochs epochs train on the
    images as they are, without augmentation or mixing; the last train.dropout_off_epochs with dropout off."""
    model.train()
    if epoch > cfg.train.epochs - cfg.train.dropout_off_epochs:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
    clean = epoch > cfg.train.epochs - cfg.data.clean_epochs
    device = split.images.device
    n = len(split.labels)
    steps_per_epoch = batch_count(n, cfg.train.batch_size)
    total_steps, warmup_steps = cfg.train.epochs * steps_per_epoch, round(cfg.optim.warmup_epochs * steps_per_epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    buffer = split.images.new_empty((min(n, cfg.train.batch_size + 1), *split.images.shape[1:]))  # no page faults
    lrs = []
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    grad_norm_sum = torch.zeros(len(weights), device=device) if cfg.train.grad_norms else None
    for i, idx in enumerate(batch_indices(n, cfg.train.batch_size, shuffle, device)):
        lr = cfg.optim.lr * lr_factor((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps, cfg.optim.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        x, y = torch.index_select(split.images, 0, idx, out=buffer[: len(idx)]), split.labels[idx]
        if cfg.data.augment and not clean:
            x = augment(x, cfg.data.augment, cfg.data.translate, cfg.data.rotate, cfg.data.zoom, cfg.data.colour,
                        (split.mean, split.std))
        target = y
        if cfg.data.mix != "none" and not clean:
            x, target = mix(x, y, cfg.data.mix, cfg.data.mix_alpha)
            y = target.argmax(1)
        if teacher_probs is not None:
            target = torch.lerp(nn.functional.one_hot(y, teacher_probs.shape[1]).float(), teacher_probs[idx],
                                cfg.optim.distill_weight)
        logits, loss = forward_loss(model, loss_fn, x, target, cfg.train.bf16, cfg.optim.mutual_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_norm_sum is not None:  # of the loss's own gradient, before SAM or clipping change it
            grad_norm_sum += torch.stack([w.grad.norm() for w in weights])
        if cfg.optim.sam_rho:
            sharpness_aware_gradients(model, loss_fn, x, target, cfg.optim.sam_rho, cfg.train.bf16,
                                      cfg.optim.mutual_weight)
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum, correct, lrs, grad_norm_sum


def train(cfg: Config, run_dir, data_dir=None, allow_download: bool = True, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, data: Cifar10 | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train cfg into run_dir and return the history (one dict per epoch); the run directory is held (locked)
    throughout, so a second process on it is refused. on_epoch(row) is called after each epoch's files are
    written (the sweep reports to its pruner there; an exception it raises stops the run as an interrupt does)."""
    validate(cfg)
    with rundir.locked(run_dir):
        return _train(cfg, Path(run_dir), data_dir, allow_download, resume, overwrite, quiet, data, on_epoch)


@functools.cache
def note_float32_fallback(device: str) -> None:
    """Said once per process and device: a sweep's worker trains many runs, and one line serves them all."""
    print(f"cifar-mlp: note: no native bf16 on {device} (a CPU needs AVX512-BF16 or AMX, a GPU Ampere or newer), "
          "so runs that ask for it train in float32: many times faster here than emulated bf16, slower than on a "
          "machine with bf16, and their figures differ slightly from a bf16 run's", file=sys.stderr)


def _train(cfg: Config, run_dir: Path, data_dir, allow_download: bool, resume: bool, overwrite: bool, quiet: bool,
           data: Cifar10 | None, on_epoch) -> list[dict]:
    from cifar_mlp import plots

    rundir.prepare(run_dir, resume, overwrite)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    resumed = checkpoint.load(last_path) if resume else None
    device = resolve_device(cfg.train.device)
    check_memory(cfg, device)
    if cfg.train.tensorboard:
        tensorboard_log.require()
    bf16 = cfg.train.bf16 and environment.bf16_is_native(device)
    if cfg.train.bf16 and not bf16:
        note_float32_fallback(str(device))
    as_run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, bf16=bf16))
    data = data or load_cifar10(data_dir, allow_download)
    splits = make_splits(data, cfg.data.val_per_class, cfg.data.split_seed, device)
    rundir.write_json(cfg.to_dict(), run_dir / rundir.CONFIG)
    teacher_probs, teacher = teacher_probabilities(cfg, splits, device)
    rundir.write_json({**environment.describe(device), "bf16_autocast": bf16, "data_folder": str(data.folder),
                       "split": splits.info, **({"teacher": teacher} if teacher else {})}, run_dir / rundir.ENVIRONMENT)

    torch.manual_seed(cfg.train.seed)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    if resumed and resumed["split"]["fingerprint"] != splits.info["fingerprint"]:
        raise UserError(f"cannot resume {run_dir}: its checkpoint used a different train/validation split")
    model = (checkpoint.build_model(resumed, last_path, cfg.model) if resumed else build_model(cfg.model)).to(device)
    if model.whitened and not resumed:
        model.fit_input_map(splits.train.images)
    pretrain_s = 0.0  # counted in the first epoch's time: pretraining is part of the training budget
    if cfg.model.pretrain_epochs and not resumed:
        pretrain_start = time.perf_counter()
        pretrain.pretrain(model, splits.train.images, cfg.model.pretrain_epochs, cfg.model.pretrain_threshold,
                          cfg.train.seed)
        pretrain_s = time.perf_counter() - pretrain_start
    ema = make_ema(model, cfg)
    if resumed and ("trained_model" in resumed) != (ema is not None):
        raise UserError(f"cannot resume {run_dir}: it was trained {'with' if ema is None else 'without'} an EMA of "
                        "the weights; keep optim.ema_decay as the run had it (see its config.json)")
    if resumed and ema is not None:  # the checkpoint's "model" is the average; the trained weights are apart
        model.load_state_dict(resumed["trained_model"])
        ema.n_averaged.fill_(resumed["ema_updates"])
    evaluated = model if ema is None else ema.module
    optimizer = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    history, best_val_loss = [], math.inf
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        set_rng_state(resumed["rng"], shuffle)
        history, best_val_loss = resumed["history"], resumed["best_val_loss"]
        if history:  # the checkpoint's history is the true one: rewrite a damaged or missing history.csv
            rundir.write_history(history, run_dir / rundir.HISTORY)

    n = len(splits.train.labels)
    board = tensorboard_log.TrainingLog(run_dir, batch_count(n, cfg.train.batch_size), history) if (
        cfg.train.tensorboard) else None
    show_bar = not quiet and sys.stderr.isatty()
    bar = tqdm(total=cfg.train.epochs, initial=len(history), desc="epochs", disable=not show_bar)
    try:
        for epoch in range(len(history) + 1, cfg.train.epochs + 1):
            start = time.perf_counter()
            loss_sum, correct, lrs, grad_norm_sum = train_epoch(model, optimizer, loss_fn, splits.train, as_run,
                                                                shuffle, epoch, ema, teacher_probs)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as training: half the time
                if cfg.train.recalibrate_norm:
                    recalibrate_batch_norm(evaluated, splits.train.images[: cfg.train.recalibrate_norm])
                val_logits = predict_logits(evaluated, splits.validation.images)
            val_loss = loss_fn(val_logits, splits.validation.labels).item()
            val_acc = (val_logits.argmax(1) == splits.validation.labels).float().mean().item()
            train_loss = loss_sum.item() / n
            seconds = time.perf_counter() - start + (pretrain_s if epoch == 1 else 0.0)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                kept = f"the last good checkpoint is {last_path}" if history else "no checkpoint was written"
                raise UserError(f"training diverged: the loss became {train_loss} at epoch {epoch}; {kept}; "
                                "lower the learning rate (--lr) or enable gradient clipping (--set optim.grad_clip=1)")
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / n, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": lrs[-1], "epoch_time_s": seconds, "samples_per_s": n / seconds}
            if grad_norm_sum is not None:
                row |= {f"{rundir.GRAD_NORM}{i + 1}": norm / len(lrs) for i, norm in enumerate(grad_norm_sum.tolist())}
            history.append(row)
            if board:  # logged and flushed before the checkpoint: a resume purges what follows it
                board.steps(epoch, lrs)
                board.epoch(row)
            is_best = val_loss < best_val_loss
            best_val_loss = min(best_val_loss, val_loss)
            state = {
                "model": evaluated.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(shuffle),
                "epoch": epoch, "config": cfg.to_dict(), "mean": splits.mean,
                "std": splits.std, "classes": list(CLASSES), "split": splits.info, "history": history,
                "best_val_loss": best_val_loss,
            }
            if ema is not None:
                state |= {"trained_model": model.state_dict(), "ema_updates": ema.n_averaged.item()}
            checkpoint.save_atomic(state, last_path)
            if is_best:
                checkpoint.save_atomic(state, best_path)
            rundir.write_history(history, run_dir / rundir.HISTORY)
            line = (f"epoch {epoch}/{cfg.train.epochs} train_loss {train_loss:.4f} acc {row['train_acc']:.4f} "
                    f"val_loss {val_loss:.4f} acc {val_acc:.4f} ({seconds:.1f}s, {row['samples_per_s']:.0f}/s)")
            if show_bar:
                bar.set_postfix_str(line.split(" ", 2)[2])
                bar.update()
            else:
                print(line, flush=True)
            if on_epoch:
                on_epoch(row)
    except BaseException:  # interrupted, diverged or out of disk: still plot what was trained, if the disk allows
        bar.close()
        if board:
            board.close()
        if history:
            with contextlib.suppress(UserError):
                plots.plot_history(history, run_dir / "loss_plot.png")
        raise
    bar.close()
    if history:
        plots.plot_history(history, run_dir / "loss_plot.png")
    if board:
        board.finish(cfg.to_dict(), history, run_dir / "loss_plot.png")
    return history

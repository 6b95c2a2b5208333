"""Learning-rate range test (Smith 2017): raise the learning rate exponentially over a few hundred steps and
record the training loss; a good peak learning rate for a one-cycle schedule lies a little below the rate
where the loss is lowest, before it blows up.

    python experiments/lr_range_test.py --data-dir ../shared/cifar10 --config fast [--steps 300]

Prints the loss at each decade and the rate of the lowest smoothed loss, and writes lr_range_test.png.
"""

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cifar_mlp import config  # noqa: E402
from cifar_mlp.data import augment, batch_indices, load_cifar10, make_splits, resolve_device  # noqa: E402
from cifar_mlp.model import MLP  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--config", default="fast")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--max-lr", type=float, default=1.0)
    parser.add_argument("--out", default="lr_range_test.png")
    args = parser.parse_args()

    cfg = config.load(args.config)
    device = resolve_device(cfg.train.device)
    splits = make_splits(load_cifar10(args.data_dir), cfg.data.val_per_class, cfg.data.split_seed, device)
    torch.manual_seed(cfg.train.seed)
    model = MLP(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.min_lr, weight_decay=cfg.optim.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    shuffle = torch.Generator().manual_seed(0)
    growth = (args.max_lr / args.min_lr) ** (1 / (args.steps - 1))
    rates, losses, smoothed = [], [], None
    step = 0
    while step < args.steps:
        for idx in batch_indices(len(splits.train.labels), cfg.train.batch_size, shuffle, device):
            lr = args.min_lr * growth**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = splits.train.images[idx]
            if cfg.data.augment:
                x = augment(x, cfg.data.augment, cfg.data.translate)
            loss = loss_fn(model(x), splits.train.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            rates.append(lr)
            losses.append(smoothed)
            step += 1
            if step == args.steps or not math.isfinite(value) or smoothed > 4 * min(losses):
                step = args.steps
                break

    best = min(range(len(losses)), key=losses.__getitem__)
    for decade in range(int(math.log10(args.min_lr)), int(math.log10(args.max_lr)) + 1):
        near = min(range(len(rates)), key=lambda i: abs(math.log10(rates[i]) - decade))
        print(f"lr {rates[near]:.0e}: smoothed loss {losses[near]:.3f}")
    print(f"lowest smoothed loss {losses[best]:.3f} at lr {rates[best]:.2e}; a one-cycle peak of about "
          f"{rates[best] / 3:.1e} to {rates[best] / 10:.1e} is the usual choice")
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.semilogx(rates, losses)
    ax.axvline(rates[best], color="grey", ls=":")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"LR range test, preset {args.config}")
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()

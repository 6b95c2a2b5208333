"""Training throughput of the seed model against the matmul roofline, and against the textbook DataLoader pipeline.

    python benchmarks/train_throughput.py --data-dir ../shared/cifar10 [--device cuda] [--epochs 3]

Roofline: the FLOPs of the linear layers' forward and backward (the first layer needs no input gradient) at
the training batch size, divided by the rate of those same matmuls measured in this process. The fraction is
roofline time / measured epoch time: 100% would mean the epoch costs nothing but its matmuls. The bf16 variant
(bf16 autocast) is measured against the rate of the same matmuls in bf16.
"""

import argparse
import dataclasses
import json
import math
import time

import torch
from torch import nn

from cifar_mlp import config, environment
from cifar_mlp.data import load_cifar10, make_splits, resolve_device
from cifar_mlp.model import MLP
from cifar_mlp.train import make_optimizer, train_epoch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_seconds(widths, batch, device, dtype=torch.float32, repeats=20) -> tuple[float, float]:
    """(seconds, FLOPs) of one training step's linear-layer matmuls at this batch size, measured here."""
    dims = list(zip(widths, widths[1:], strict=False))
    ops = []
    for i, (n_in, n_out) in enumerate(dims):
        x, w, g = (torch.randn(batch, n_in, device=device, dtype=dtype),
                   torch.randn(n_out, n_in, device=device, dtype=dtype),
                   torch.randn(batch, n_out, device=device, dtype=dtype))
        ops.append((lambda x=x, w=w: x @ w.T, 2 * batch * n_in * n_out))  # forward
        ops.append((lambda x=x, g=g: g.T @ x, 2 * batch * n_in * n_out))  # weight gradient
        if i > 0:
            ops.append((lambda g=g, w=w: g @ w, 2 * batch * n_in * n_out))  # input gradient
    total = 0.0
    for op, _ in ops:
        for _ in range(3):
            op()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            op()
        sync(device)
        total += (time.perf_counter() - start) / repeats
    return total, sum(f for _, f in ops)


def time_epochs(cfg, split, device, epochs, variant="default") -> float:
    """Seconds per epoch of the project's training loop (after one warm-up epoch)."""
    if variant == "bf16":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, bf16=True))
    torch.manual_seed(0)
    model = MLP(cfg.model).to(device)
    if variant == "unfused":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    else:
        optimizer = make_optimizer(model, cfg)
    if variant == "compile":
        model = torch.compile(model)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, loss_fn, split, cfg, shuffle, 1)
    sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        loss_sum, _, _, _ = train_epoch(model, optimizer, loss_fn, split, cfg, shuffle, epoch + 2)
    loss_sum.item()
    sync(device)
    return (time.perf_counter() - start) / epochs


def textbook_epoch(cfg, data_dir, train_idx, mean, std, device, max_batches=None) -> tuple[float, int]:
    """(seconds, images) of one epoch the textbook way: torchvision dataset, transforms, DataLoader, 2 workers."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    dataset = CIFAR10(str(data_dir), train=True, download=False,
                      transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))
    loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=cfg.train.batch_size, shuffle=True,
                        num_workers=2)
    torch.manual_seed(0)
    model = MLP(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    images = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if max_batches and i == max_batches:
            break
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(y)
    loss.item()
    sync(device)
    return time.perf_counter() - start, images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (after one warm-up)")
    parser.add_argument("--variants", default="default,unfused,compile",
                        help="comma-separated: default (as train.py), unfused (AdamW without fused), compile, "
                             "bf16 (train.bf16=true)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = config.load("seed", [f'train.device="{device.type}"'])
    data = load_cifar10(args.data_dir, allow_download=False)
    splits = make_splits(data, cfg.data.val_per_class, cfg.data.split_seed, device)
    n, batch = len(splits.train.labels), cfg.train.batch_size
    widths = [3072, *cfg.model.widths, 10]
    variants = args.variants.split(",")
    rooflines = {}
    for dtype in (torch.float32, torch.bfloat16) if "bf16" in variants else (torch.float32,):
        step_seconds, step_flops = matmul_seconds(widths, batch, device, dtype)
        rooflines[dtype] = {"matmul_gflops": step_flops / step_seconds / 1e9, "epoch_s": step_seconds * n / batch}
    result = {"machine": environment.machine_line(environment.describe(device)), "device": str(device),
              "images": n, "batch_size": batch, "roofline": {str(k): v for k, v in rooflines.items()},
              "variants": {}}
    for variant in variants:
        seconds = time_epochs(cfg, splits.train, device, args.epochs, variant)
        roofline = rooflines[torch.bfloat16 if variant == "bf16" else torch.float32]["epoch_s"]
        result["variants"][variant] = {"epoch_s": seconds, "samples_per_s": n / seconds,
                                       "roofline_fraction": roofline / seconds}
    seconds, images = textbook_epoch(cfg, data.folder.parent, splits.train.indices, splits.mean, splits.std, device)
    result["textbook"] = {"epoch_s": seconds * n / images, "samples_per_s": images / seconds}
    fastest = max(result["variants"], key=lambda v: result["variants"][v]["samples_per_s"])
    float32 = max(v["samples_per_s"] for k, v in result["variants"].items() if k != "bf16")
    result["speedup_over_textbook"] = float32 / result["textbook"]["samples_per_s"]
    result["seed_80_epochs_s"] = {fastest: 80 * n / result["variants"][fastest]["samples_per_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    print(f"seed model, {n:,} train images, batch {batch}, {math.ceil(n / batch)} steps per epoch")
    for dtype, r in rooflines.items():
        print(f"matmul rate of the model's shapes in {str(dtype).removeprefix('torch.')}: "
              f"{r['matmul_gflops']:.1f} GFLOP/s; roofline epoch: {r['epoch_s']:.3f} s")
    for variant, v in result["variants"].items():
        print(f"  {variant:<10} {v['epoch_s']:.3f} s/epoch  {v['samples_per_s']:>9,.0f} samples/s  "
              f"{100 * v['roofline_fraction']:.1f}% of {'bf16' if variant == 'bf16' else 'float32'} roofline")
    t = result["textbook"]
    print(f"  {'textbook':<10} {t['epoch_s']:.3f} s/epoch  {t['samples_per_s']:>9,.0f} samples/s  "
          "(torchvision CIFAR10 + ToTensor/Normalize + DataLoader, 2 workers)")
    print(f"speed-up of the float32 loop over the textbook pipeline: {result['speedup_over_textbook']:.1f}x; "
          f"the seed's 80 epochs ({fastest}): {result['seed_80_epochs_s'][fastest]:.1f} s of training")


if __name__ == "__main__":
    main()

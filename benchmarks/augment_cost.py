"""Cost of each batched augmentation (`data.augment`) per training batch, on the real train split.

    python benchmarks/augment_cost.py --data-dir ../shared/cifar10 [--batch-size 1024] [--device cuda]

Also times colour jitter as three adjustments in a row, each clamped (torchvision's functions, how
`data.jitter_colour` worked until 910b9dd), against the one colour map per image it applies now: the reason
`best` could afford colour jitter within its 30 minutes.
"""

import argparse
import statistics
import time

import torch
from torchvision.transforms.v2.functional import rgb_to_grayscale

from cifar_mlp.data import augment, load_cifar10, make_splits, resolve_device


def adjustments_in_a_row(x, strength, mean, std):
    m, s = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    factors = 1 + (torch.rand(3, len(x), 1, 1, 1, device=x.device) * 2 - 1) * strength
    pixels = (x * s + m).mul_(factors[0]).clamp_(0, 1)
    pixels = torch.lerp(rgb_to_grayscale(pixels).mean((2, 3), keepdim=True), pixels, factors[1]).clamp_(0, 1)
    pixels = torch.lerp(rgb_to_grayscale(pixels), pixels, factors[2]).clamp_(0, 1)
    return (pixels - m) / s


def median_ms(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    device = resolve_device(args.device)
    splits = make_splits(load_cifar10(args.data_dir, allow_download=False), 500, 0, device)
    x = splits.train.images[: args.batch_size]
    norm = (splits.train.mean, splits.train.std)
    cases = {
        "flip, crop (one gather)": lambda: augment(x, ["flip", "crop"], 4),
        "affine (grid_sample)": lambda: augment(x, ["affine"], 4, rotate=10.0, zoom=0.1),
        "colour, one map per image": lambda: augment(x, ["colour"], 4, colour=0.2, normalisation=norm),
        "colour, three adjustments in a row": lambda: adjustments_in_a_row(x, 0.2, *norm),
    }
    print(f"device {device}, {torch.get_num_threads()} threads, batch {len(x)}, median of {args.repeats}")
    for name, fn in cases.items():
        print(f"{name:38s} {median_ms(fn, device, args.repeats):7.2f} ms per batch")


if __name__ == "__main__":
    main()

"""What a run ran on: versions, hardware and git commit, recorded in every run directory and benchmark."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

import cifar_mlp


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles); elsewhere bf16 autocast is emulated
    and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 autocast pays on the device: a CPU with AVX512-BF16 or AMX, a GPU with bf16 arithmetic
    (Ampere or newer). Elsewhere it is emulated, and about 20 times slower than float32 (BENCHMARKS.md)."""
    if device.type == "cpu":
        return cpu_has_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device: the GPU's free memory, or the host's available memory (Linux's MemAvailable);
    None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (None outside a git checkout)."""
    try:
        here = Path(cifar_mlp.__file__).parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def describe(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cifar_mlp": cifar_mlp.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": git_commit(),
    }


def machine_line(env: dict) -> str:
    """A one-line description of the machine, for reports and benchmark output."""
    cpu = env["cpu"] + (" (no native bf16)" if env.get("cpu_bf16") is False else "")
    threads = env["torch_threads"]
    hw = env["gpu"] or f"{cpu}, {threads} thread{'s' if threads != 1 else ''}"
    return f"{hw} (torch {env['torch']}, Python {env['python']})"

"""Where and how computations run: the device, mixed precision, CPU threads, determinism.

Shared by every stage that runs a model (training, dumps) or heavy tensor code (the analyses), so
that `device: auto` means the same thing everywhere.
"""
from __future__ import annotations

import contextlib
import os

import torch

from pipeline.errors import PipelineError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` (cuda when present, else cpu), `cpu`, `cuda` or `cuda:N`; `key` names the setting in errors."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"setting {key}={name!r}, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PipelineError(f"setting {key}={name!r}: expected auto, cpu, cuda or cuda:N") from None


def resolve_precision(name: str, device: torch.device, key: str = "train.precision",
                      shape: tuple[int, int, int, int] = (128, 512, 4000, 2048)) -> torch.dtype | None:
    """None = fp32. auto: bf16 autocast on CUDA; on a CPU whichever of the two a forward + backward of
    `shape` (d_model, d_mlp, d_vocab, tokens per batch) ran faster on this machine (measured once,
    then cached: pipeline/machine/calibrate.py)."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16"
        else:
            from pipeline.machine.calibrate import cpu_precision
            name = cpu_precision(*shape)
    if name not in ("bf16", "fp32"):
        raise PipelineError(f"setting {key}={name!r}: expected auto, bf16 or fp32")
    return torch.bfloat16 if name == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or nothing for fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup_runtime(threads: int | None, deterministic: bool) -> None:
    """CPU threads (None: torch's default) and deterministic algorithms (CPU runs bit-reproducible)."""
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

"""What a benchmark ran on, printed at its top: CPU model, cores, torch and its threads, load."""
from __future__ import annotations

import os
import platform

import torch

from pipeline.machine.cpu import cpu_flags


def cpu_model() -> str:
    """The CPU's model name and its bf16 / AMX flags (pipeline/machine/cpu.py)."""
    return cpu_flags()


def describe() -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical cores{gpu}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}; load average {load}")

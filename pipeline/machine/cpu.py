"""What CPU this is, in one string: its model name and the flags that decide its fast paths."""
from __future__ import annotations

import platform

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the bf16 paths (calibrate.py) depend on these


def cpu_flags() -> str:
    """The CPU's model name and which of FLAGS it has, e.g. 'AMD EPYC [avx2 avx512f avx512_bf16]'."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return f"{model} [{' '.join(f for f in FLAGS if f in flags)}]"

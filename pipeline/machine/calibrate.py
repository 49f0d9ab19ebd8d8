"""`train.precision: auto` on a CPU: bf16 autocast or fp32, chosen by timing both on this machine.

A CPU flag does not say whether bf16 autocast pays: it did on a Xeon with AMX and on an AMD EPYC
with only AVX-512 BF16 (LM steps 1.5x faster there, bench/train_step.py), but the casts it adds
can cost more than the matmuls save on small layers, and without bf16 instructions the matmuls are
emulated. So the first training on a machine times one forward + backward of the model's own layer
shapes (a feed-forward block and the output layer over a token batch) in fp32 and under bf16
autocast, best of a few repeats each, and keeps the faster; the answer is cached per CPU model,
its bf16 flags, torch version, thread count and shape, in `$XDG_CACHE_HOME/bottom-up-evolution/
precision.json` (a second of work once, then a file read). BOTTOM_UP_PRECISION_CACHE names another
file; `train.precision: bf16 | fp32` skips all of it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.machine.cpu import cpu_flags

log = logging.getLogger("pipeline.machine")

MARGIN = 1.05  # bf16 must be at least 5% faster: casts and rounding are not worth less


def cache_file() -> Path:
    named = os.environ.get("BOTTOM_UP_PRECISION_CACHE")
    if named:
        return Path(named)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bottom-up-evolution" / "precision.json"


def make_step(d_model: int, d_mlp: int, d_vocab: int, tokens: int):
    """One forward + backward of an FFN block and the output layer over `tokens`, as `step(amp)`."""
    gen = torch.Generator().manual_seed(0)
    up, down = torch.nn.Linear(d_model, d_mlp), torch.nn.Linear(d_mlp, d_model)
    head, norm = torch.nn.Linear(d_model, d_vocab), torch.nn.LayerNorm(d_model)
    x = torch.randn(tokens, d_model, generator=gen, requires_grad=True)
    labels = torch.randint(0, d_vocab, (tokens,), generator=gen)

    def step(amp: torch.dtype | None) -> None:
        ctx = torch.autocast("cpu", dtype=amp) if amp is not None else torch.autocast("cpu", enabled=False)
        with ctx:
            h = norm(x + down(F.relu(up(x))))
            loss = F.cross_entropy(head(h).float(), labels)
        loss.backward()

    return step


def time_both(d_model: int, d_mlp: int, d_vocab: int, tokens: int, repeats: int = 7) -> tuple[float, float]:
    """Best seconds of (fp32, bf16 autocast) steps, the two taken in turns, so that other work on the
    machine slows both alike instead of whichever ran while it did."""
    step = make_step(d_model, d_mlp, d_vocab, tokens)
    kinds = (None, torch.bfloat16)
    best = dict.fromkeys(kinds, float("inf"))
    for amp in kinds:  # warm-up: allocations, kernel selection
        step(amp)
    for _ in range(repeats):
        for amp in kinds:
            start = time.perf_counter()
            step(amp)
            best[amp] = min(best[amp], time.perf_counter() - start)
    return best[None], best[torch.bfloat16]


def cpu_precision(d_model: int, d_mlp: int, d_vocab: int, tokens: int) -> str:
    """'bf16' or 'fp32' for training these shapes on this CPU: cached, or measured now and cached."""
    tokens = max(64, min(int(tokens), 1024))  # a batch's worth: the matmuls' shapes, not its exact size
    key = f"{cpu_flags()} | torch {torch.__version__} | {torch.get_num_threads()} threads | " \
          f"d_model {d_model}, d_mlp {d_mlp}, vocab {d_vocab}, {tokens} tokens"
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict) and cached[key].get("choice") in ("bf16", "fp32"):
        return cached[key]["choice"]
    fp32, bf16 = time_both(d_model, d_mlp, d_vocab, tokens)
    choice = "bf16" if bf16 * MARGIN < fp32 else "fp32"
    log.info("precision auto: %s on this CPU (%s): a forward + backward of these shapes took %.1f ms in fp32, "
             "%.1f ms under bf16 autocast; cached in %s", choice, cpu_flags(), fp32 * 1e3, bf16 * 1e3, path)
    entry = {"choice": choice, "fp32_ms": round(fp32 * 1e3, 3), "bf16_ms": round(bf16 * 1e3, 3),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:  # a shared cache: written whole, never half (two jobs at once: the last one's entries win)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**(cached if isinstance(cached, dict) else {}), key: entry}, indent=1))
        os.replace(tmp, path)
    except OSError as error:  # a read-only home: measured again next time, no harm
        log.warning("could not cache the precision choice in %s (%s)", path, error)
    return choice

"""Time PWCCA: analysis.similarity (torch, float64, d x d work after the Gram products) against
the plain numpy implementation of the paper's equations in tests/reference_similarity.py (explicit
n x k canonical variates and <h_i, x_j> inner products), on the same views in the same run.

    python bench/similarity.py [--sizes 10000 50000] [--d 512] [--repeats 3] [--device cpu|cuda]

Two views of realistic structure: x with a decaying spectrum and per-feature offsets, y = x A +
noise, stored as float32 (as the dumps are read). Each implementation runs once on a small pair
first (library warm-up, not timed), then `--repeats` times interleaved; the best time of each is
reported (the machine may be shared), with the ratio and |Δ| of the distances. With --device cuda
our views are copied to the GPU first (the copy is not timed; the returned float waits for the GPU)
and the reference still runs on the CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the packages are not installed here

from analysis.stats.cca import pwcca_distance
from bench.machine import cpu_model
from pipeline.machine.runtime import resolve_device
from tests import reference_similarity as reference


def views(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d): features mixed by a random rotation, variances decaying as 1 / i, offsets;
    y (n, d) = x A + noise with a random A: related but far from identical."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) / np.sqrt(np.arange(1, d + 1))) @ rotation + rng.uniform(-2, 2, d)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    y = x @ a + 0.3 * rng.standard_normal((n, d)) * x.std(0).mean()
    return x.astype(np.float32), y.astype(np.float32)


def machine() -> str:
    cpu = cpu_model()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{blas['name']} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):  # older numpy: no dict mode
        numpy_blas = "unknown BLAS"
    torch_blas = "MKL" if torch.backends.mkl.is_available() else "non-MKL BLAS"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
            f"load average {load}\ntorch {torch.__version__} ({torch_blas}), numpy {np.__version__} ({numpy_blas}), "
            f"Python {platform.python_version()}")


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000], help="numbers of samples n")
    p.add_argument("--d", type=int, default=512, help="features of each view")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where ours runs: cpu, cuda or auto")
    a = p.parse_args()
    device = resolve_device(a.device, "--device")
    print(machine())
    if device.type == "cuda":
        print(f"ours on {torch.cuda.get_device_name(device)}")

    def on_device(*arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(v).to(device) for v in arrays]

    warm_x, warm_y = views(2 * a.d, a.d, seed=1)
    pwcca_distance(*on_device(warm_x, warm_y)), reference.pwcca_distance(warm_x, warm_y)
    print(f"PWCCA distance, d = {a.d}, best of {a.repeats} (interleaved), weights from the first view")
    print(f"{'n':>7} {'torch s':>9} {'numpy s':>9} {'ratio':>7} {'|Δ|':>9} {'distance':>9}")
    rows32 = []
    for n in a.sizes:
        x, y = views(n, a.d)
        gx, gy = on_device(x, y)
        ours, theirs, single = [], [], []
        for _ in range(a.repeats):
            t, value = timed(pwcca_distance, gx, gy)
            ours.append(t)
            t, expected = timed(reference.pwcca_distance, x, y)
            theirs.append(t)
            t, value32 = timed(lambda u, v: pwcca_distance(u, v, dtype=torch.float32), gx, gy)
            single.append(t)
        print(f"{n:>7} {min(ours):>9.3f} {min(theirs):>9.3f} {min(theirs) / min(ours):>6.1f}x "
              f"{abs(value - expected):>9.1e} {value:>9.5f}", flush=True)
        rows32.append(f"{n:>7} {min(single):>9.3f} {min(theirs):>9.3f} {min(theirs) / min(single):>6.1f}x "
                      f"{abs(value32 - expected):>9.1e} {value32:>9.5f}")
    # For comparison only: the whole computation in float32 (dtype=torch.float32), about twice the
    # speed at a few 1e-7 of error; the default, and the target's measure, is float64.
    print("the same in float32 (torch), against the float64 reference:")
    print("\n".join(rows32))


if __name__ == "__main__":
    main()

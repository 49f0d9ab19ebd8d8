"""Analysis jobs at one thread against two, on a quiet machine and beside one busy process.

    python bench/threads.py [--experiment default] [--measures mutual_info tsne change neighbours influence]
                            [--objective lm] [--seed 1] [--repeats 1]

Each measure runs as the workflow runs it (`OMP_NUM_THREADS=N python -m analysis.measures.<m> ...`,
writing its table into a temporary metrics folder, so the experiment's own results are untouched),
on the dumps of an experiment that has them (run the workflow first), four ways:
- the workflow's choice: one thread, quiet;
- the plain reference: two threads (torch's default on 2 cores), quiet;
- each of them again beside one busy process (a Python loop standing in for another job or a
  colleague's work, as on a shared machine).
Prints the wall time of each and the ratios reference / ours (> 1: one thread is faster). On two
cores the workflow runs two one-thread jobs at once; a two-thread job needs the whole machine, so
even at equal speed one thread per job doubles the analyses' throughput.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402


@contextmanager
def busy_neighbour(on: bool):
    """A process spinning one core for as long as the block runs (or nothing)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def run_measure(measure: str, threads: int, a, metrics: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", f"analysis.measures.{measure}", f"experiment={a.experiment}",
           f"objective={a.objective}", f"seed={a.seed}", f"paths.metrics={metrics}",
           f"hydra.run.dir={metrics}/hydra"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="default")
    p.add_argument("--measures", nargs="+", default=["mutual_info", "tsne", "change", "neighbours", "influence"])
    p.add_argument("--objective", default="lm")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs of each case (the best is kept)")
    a = p.parse_args()
    print(describe())
    print(f"{'measure':12s} {'load':6s} {'1 thread':>9s} {'2 threads':>10s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for measure in a.measures:
            for loaded in (False, True):
                with busy_neighbour(loaded):
                    one = min(run_measure(measure, 1, a, tmp) for _ in range(a.repeats))
                    two = min(run_measure(measure, 2, a, tmp) for _ in range(a.repeats))
                print(f"{measure:12s} {'busy' if loaded else 'quiet':6s} {one:8.1f}s {two:9.1f}s {two / one:5.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()

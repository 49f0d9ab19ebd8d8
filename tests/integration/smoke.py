"""The smoke experiment as the slow tests run it through snakemake: its grid of models, and the
command line (tests/integration/conftest.py's `finished` run, tests/integration/test_slurm.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared" / "data" / "tatoeba-deu-eng" / "deu-eng.zip"
EXPERIMENT = "smoke"
GRID = [("mt", 1), ("mt", 2), ("lm", 1), ("lm", 2), ("mlm", 1), ("mlm", 2), ("mt_td", 1), ("lm_td", 1)]
INIT = [("init", 1), ("init", 2)]  # the step-0 control of every seed in use: dumped and measured, never trained
MODELS = [*GRID, *INIT]


def snakemake_command(*args: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """`snakemake --cores N --config experiment=smoke overrides=[...] <args>`."""
    overrides_json = json.dumps([f"data.archive={ARCHIVE}", *overrides])
    return [sys.executable, "-m", "snakemake", "--cores", str(min(4, os.cpu_count() or 1)),
            "--config", f"experiment={EXPERIMENT}", f"overrides={overrides_json}", *args]


def snakemake(workdir: Path, *args: str, overrides: tuple[str, ...] = (), timeout: float,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake_command(...) in `workdir` and wait for it."""
    return subprocess.run(snakemake_command(*args, overrides=overrides), cwd=workdir, capture_output=True,
                          text=True, timeout=timeout, env=env)


def checkout_layout(workdir: Path) -> Path:
    """A clean checkout's layout in `workdir`: the jobs run `python -m pipeline.<stage>` from it."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("conf", "pipeline", "analysis", "workflow"):
        (workdir / name).symlink_to(REPO / name, target_is_directory=True)
    return workdir

"""The local end-to-end run of the smoke experiment, shared by the slow tests: the workflow tests
check it, the SLURM test compares its own run with it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.smoke import ARCHIVE, checkout_layout, snakemake


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    if not ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {ARCHIVE}")
    workdir = checkout_layout(tmp_path_factory.mktemp("workflow"))
    run = snakemake(workdir, timeout=3 * 3600)
    assert run.returncode == 0, f"snakemake failed:\n{run.stdout[-5000:]}\n{run.stderr[-5000:]}"
    (workdir / ".snakemake" / "smoke-run.txt").write_text(run.stdout + run.stderr)  # what the user saw
    return workdir

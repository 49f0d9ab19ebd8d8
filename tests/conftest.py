"""Shared fixtures: the corpus copy beside the project, and small configs written to tmp folders."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = REPO.parent / "shared" / "data" / "tatoeba-deu-eng" / "deu-eng.zip"

# `train.precision: auto` measures and caches its choice per machine (pipeline/machine/calibrate.py):
# tests measure into a cache of their own (subprocesses inherit it), never the user's.
os.environ["BOTTOM_UP_PRECISION_CACHE"] = str(Path(tempfile.mkdtemp(prefix="precision-")) / "precision.json")


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.skip(f"the Tatoeba archive is not at {SHARED_ZIP} (see ../shared/data/README.md)")
    return SHARED_ZIP


@pytest.fixture
def smoke_cfg(tmp_path, shared_zip):
    """compose(*overrides) -> the smoke experiment writing under tmp_path, reading the shared corpus."""
    from pipeline.config.compose import compose

    def make(*overrides: str, results: Path | None = None):
        return compose(["experiment=smoke", f"paths.results={results or tmp_path}",
                        f"data.archive={shared_zip}", "train.progress=false", *overrides])

    return make

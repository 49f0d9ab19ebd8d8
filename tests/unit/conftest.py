"""Fixtures shared by the report's test modules."""
from __future__ import annotations

import pytest

from analysis.report.stage import run
from pipeline.config.compose import compose
from tests.unit.test_report import FULL, write_experiment


@pytest.fixture(scope="session")
def experiment(tmp_path_factory):
    """(results folder, report path, config) of the whole synthetic experiment (tests/unit/test_report.py's
    `write_experiment`, the examples table included) and its report, built once for every module that reads
    it (tests/unit/test_report.py, tests/unit/test_report_interactive.py); read it, never change it."""
    root = tmp_path_factory.mktemp("report")
    results, reports = root / "results", root / "reports"
    write_experiment(results, grid=FULL)
    cfg = compose(["experiment=smoke", f"paths.results={results}", f"paths.report={reports}"])
    return results, run(cfg), cfg

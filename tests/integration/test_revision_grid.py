"""A published checkpoint grid end to end through snakemake: a tiny random GPT-NeoX (Pythia's architecture)
saved as three branches of one repository in a local Hugging Face cache (tests/hf_cache.py; no network),
named as `{family: pythia, count: 3}` (step0, step1 and the final step143000), step1 the same weights as
step0. The smoke data split, every revision dumped and measured over training against the
final one, the revisions' check, the per-model measurements and the report; a second run has nothing to
do. About 3 minutes on 2 cores."""
from __future__ import annotations

import os
import zipfile

import pytest

from tests.integration.smoke import ARCHIVE, checkout_layout, snakemake

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

REPO = "tiny-org/pythia-tiny"
BRANCHES = {"step0": 0, "step1": 0, "step143000": 2}  # branch -> seed of its random weights
OVERRIDES = ("workflow.objectives=[]", "workflow.init=false", "snapshots.models={mt: [], lm: [], mlm: []}",
             f"+pretrained.models.tiny={{name: {REPO}, role: lm, revisions: {{family: pythia, count: 3}}}}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.hf_cache import add_revision
    from tests.hf_models import build

    if not ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {ARCHIVE}")
    root = tmp_path_factory.mktemp("grid")
    with zipfile.ZipFile(ARCHIVE) as z:
        english = [line.split("\t")[0] for line in z.read("deu.txt").decode("utf-8").splitlines()[::20]]
    for branch, seed in BRANCHES.items():
        build("neox", root / "saved" / branch, english, seed=seed)
        add_revision(root / "hub", REPO, branch, root / "saved" / branch)
    workdir = checkout_layout(root / "work")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "hub")}
    done = snakemake(workdir, overrides=OVERRIDES, timeout=1800, env=env)
    assert done.returncode == 0, f"snakemake failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return {"workdir": workdir, "env": env, "results": workdir / "results" / "smoke"}


def test_every_revision_is_dumped_and_measured_against_the_final_one(run):
    from analysis.io.tables import read_table

    results = run["results"]
    assert not (results / "models").exists(), "nothing is trained"
    for step in (0, 1):
        assert (results / "snapshots" / "tiny" / "seed0" / f"step{step}" / "stage.json").is_file()
    rows = read_table(results / "metrics" / "evolution.csv", "evolution")
    assert {(r["step"], r["final"]) for r in rows} == {("0", "0"), ("1", "0"), ("143000", "1")}
    assert {r["quantity"] for r in rows} == {"to_final", "change", "mi", "neighbours", "readout"}
    readout = read_table(results / "metrics" / "readout.csv", "readout")
    assert {r["objective"] for r in readout} == {"tiny"} and {r["target"] for r in readout} == {"next"}


def test_the_revisions_that_are_the_same_are_flagged_and_reported(run):
    from analysis.io.tables import read_table

    rows = {r["revision"]: r for r in read_table(run["results"] / "metrics" / "revisions.csv", "revisions")}
    assert rows["step0"]["same_weights_as"] == "step1" and rows["step1"]["same_states_as"] == "step0"
    assert rows["step143000"]["same_weights_as"] == ""
    html = (run["workdir"] / "reports" / "smoke" / "report.html").read_text()
    assert "step1 has the same weights as step0" in html and "tiny" in html


def test_a_second_run_has_nothing_to_do(run):
    done = snakemake(run["workdir"], "--dry-run", overrides=OVERRIDES, timeout=600, env=run["env"])
    assert done.returncode == 0 and "Nothing to be done" in done.stdout + done.stderr

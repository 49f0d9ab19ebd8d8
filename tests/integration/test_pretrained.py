"""The `pretrained` experiment end to end through snakemake, on tiny random models saved to local folders
in place of bert-base-cased, gpt2 and Helsinki-NLP/opus-mt-en-de (tests/hf_models.py; nothing from the hub):
the data split, three dumps, every measurement, the distances across vocabularies and the report; a
second invocation has nothing to do; a model missing from the cache stops its job with the command
that fetches it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.smoke import ARCHIVE, checkout_layout

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

EXPERIMENT = "pretrained"
KINDS = {"bert": "bert", "gpt2": "gpt2", "opus-mt-en-de": "marian"}  # label -> tiny model standing in for it


def _command(folders: dict[str, Path], *args: str, extra: tuple[str, ...] = ()) -> list[str]:
    overrides = [f"data.archive={ARCHIVE}", *(f"pretrained.models.{label}.name={folders[label]}" for label in KINDS),
                 *extra]
    return [sys.executable, "-m", "snakemake", "--cores", str(min(4, os.cpu_count() or 1)), "--config",
            f"experiment={EXPERIMENT}", f"overrides={json.dumps(overrides)}", *args]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import zipfile

    from tests.hf_models import build

    if not ARCHIVE.is_file():
        pytest.skip(f"the Tatoeba archive is not at {ARCHIVE}")
    root = tmp_path_factory.mktemp("pretrained")
    # the tokenizers learn from a slice of the corpus's English side
    with zipfile.ZipFile(ARCHIVE) as z:
        english = [line.split("\t")[0] for line in z.read("deu.txt").decode("utf-8").splitlines()[::20]]
    folders = {label: root / "models" / label for label in KINDS}
    for i, (label, kind) in enumerate(KINDS.items()):
        build(kind, folders[label], english, seed=i)
    workdir = checkout_layout(root / "work")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "empty-cache")}
    done = subprocess.run(_command(folders), cwd=workdir, capture_output=True, text=True, timeout=3600, env=env)
    assert done.returncode == 0, f"snakemake failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return {"workdir": workdir, "folders": folders, "env": env}


def test_every_model_is_dumped_and_measured(run):
    from analysis.io.tables import read_table

    results = run["workdir"] / "results" / EXPERIMENT
    assert not (results / "models").exists(), "nothing is trained"
    for label, kind in KINDS.items():
        meta = json.loads((results / "dumps" / label / "seed0" / "meta.json").read_text())
        assert meta["pretrained"]["source"] == str(run["folders"][label]) and meta["kind"] == {
            "bert": "mlm", "gpt2": "lm", "marian": "mt"}[kind]
        assert (results / "dumps" / label / "seed0" / "masked").is_dir() == (kind == "bert")
    for table in ("change", "influence", "mi", "neighbours", "tsne", "examples"):
        rows = read_table(results / "metrics" / f"{table}.csv", table)
        assert {r["objective"] for r in rows} == set(KINDS), table
    similarity = read_table(results / "metrics" / "similarity.csv", "similarity")
    pairs = {(r["objective_a"], r["objective_b"]) for r in similarity}
    assert len(pairs) == 3 and {r["pair"] for r in similarity} == {"pretrained"}
    record = json.loads((results / "metrics" / "similarity.json").read_text())["levels"]
    assert record["pretrained"]["level"] == "word" and record["pretrained"]["rows"] > 10000
    assert "trained" not in record  # no model trained here: no token-level pairs


def test_the_report_names_each_model_and_says_the_comparison_is_not_controlled(run):
    html = (run["workdir"] / "reports" / EXPERIMENT / "report.html").read_text()
    for label in KINDS:
        assert label in html and str(run["folders"][label]) in html
    assert "not controlled" in html and "Pairs with a pretrained model" in html


def test_a_second_run_has_nothing_to_do(run):
    again = subprocess.run(_command(run["folders"], "-n"), cwd=run["workdir"], capture_output=True, text=True,
                           timeout=600, env=run["env"])
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_a_model_missing_from_the_cache_stops_its_job_naming_the_fetch_command(run):
    failed = subprocess.run(_command(run["folders"], extra=("+pretrained.models.roberta={name: no-such-org/roberta, "
                                                                "role: mlm}",)),
                            cwd=run["workdir"], capture_output=True, text=True, timeout=600, env=run["env"])
    assert failed.returncode != 0
    log = (run["workdir"] / "logs" / EXPERIMENT / "dump" / "roberta" / "seed0.log").read_text()
    assert "hf download no-such-org/roberta" in log and "not in the local Hugging Face cache" in log
    assert not (run["workdir"] / "results" / EXPERIMENT / "dumps" / "roberta" / "seed0" / "stage.json").exists()

"""The smoke experiment end to end through snakemake, as a user runs it, from an empty folder:
data and tokenizer, every model, every dump, every measurement and the report (the `finished`
fixture of tests/integration/conftest.py); then a second invocation has nothing to do, and changed
settings rerun only what they affect."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.integration.smoke import EXPERIMENT, GRID, INIT, MODELS, snakemake

pytestmark = pytest.mark.slow


def test_every_stage_leaves_its_files(finished):
    results = finished / "results" / EXPERIMENT
    data = results / "data"
    for name in ("train.src", "train.tgt", "valid.src", "valid.tgt", "test.src", "test.tgt", "train.mono",
                 "valid.mono", "probe.txt", "stage.json"):
        assert (data / name).is_file(), data / name
    for name in ("spm.model", "freq.tsv", "stage.json"):
        assert (results / "tokenizer" / name).is_file()
    for objective, seed in GRID:
        model = results / "models" / objective / f"seed{seed}"
        for name in ("model.pt", "summary.json", "log.jsonl", "stage.json"):
            assert (model / name).is_file(), model / name
        assert not (model / "last.pt").exists(), "the resumable checkpoint is removed once training ends"
        assert json.loads((model / "summary.json").read_text())["seed"] == seed
        for stage in ("train", "dump"):
            assert (finished / "logs" / EXPERIMENT / stage / objective / f"seed{seed}.log").is_file()
    for objective, seed in INIT:
        model = results / "models" / objective / f"seed{seed}"
        assert (model / "model.pt").is_file() and not (model / "summary.json").exists(), model
        assert (finished / "logs" / EXPERIMENT / "dump" / objective / f"seed{seed}.log").is_file()
        assert not (finished / "logs" / EXPERIMENT / "train" / objective).exists()
    assert (finished / "logs" / EXPERIMENT / "prepare.log").is_file()


def test_closing_lines_name_every_model_and_warn_about_the_unconverged(finished):
    """The workflow ends with one line per trained model (steps, stop reason, dev quality, convergence)
    and names in a warning each model that stopped before its plateau, as its summary.json says."""
    said = (finished / ".snakemake" / "smoke-run.txt").read_text()
    assert "\ntraining:\n" in said, said[-3000:]
    warning = next((line for line in said.splitlines() if line.startswith("warning: ") and "plateaued" in line), "")
    for objective, seed in GRID:
        summary = json.loads((finished / "results" / EXPERIMENT / "models" / objective / f"seed{seed}" /
                              "summary.json").read_text())
        line = next(line for line in said.splitlines() if line.startswith(f"  {objective} seed {seed}: "))
        assert f"{summary['steps']:,} steps" in line and f"stopped by {summary['stop_reason']}" in line, line
        named = f"{objective} seed {seed} ({summary['stop_reason']})" in warning
        assert named == (not summary["convergence"]["converged"]), (line, warning)
    assert not any(line.startswith("  init seed") for line in said.splitlines())  # never trained


def test_hydra_files_stay_inside_the_output_folders(finished):
    top = {p.name for p in finished.iterdir()}
    assert top <= {"conf", "pipeline", "analysis", "workflow", "results", "reports", "logs", ".snakemake"}, top
    for objective, seed in MODELS:
        for stage in ("models", "dumps") if objective != "init" else ("dumps",):
            assert (finished / "results" / EXPERIMENT / stage / objective / f"seed{seed}" / "hydra"
                    / ".hydra" / "config.yaml").is_file()


def _read_tokens(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:]]


def test_dumps_have_one_row_per_token_and_layer(finished):
    from pipeline.config.compose import compose

    cfg = compose([f"experiment={EXPERIMENT}"])
    n_files, d_model = int(cfg.model.n_layers) + 1, int(cfg.model.d_model)
    dumps = finished / "results" / EXPERIMENT / "dumps"
    token_ids = {}
    for objective, seed in MODELS:
        folders = [dumps / objective / f"seed{seed}"]
        if objective == "mlm" and cfg.dump.mlm_masked:
            folders.append(folders[0] / "masked")
        for folder in folders:
            meta = json.loads((folder / "meta.json").read_text())
            rows = _read_tokens(folder / "tokens.tsv")
            assert meta["n_tokens"] == len(rows) > 0
            assert sorted(p.name for p in folder.glob("layer_*.npy")) == [f"layer_{i:02d}.npy" for i in range(n_files)]
            for layer in range(n_files):
                states = np.load(folder / f"layer_{layer:02d}.npy", mmap_mode="r")
                assert states.shape == (len(rows), d_model)
                assert states.dtype == np.dtype(str(cfg.dump.dtype))
                assert np.isfinite(states[:1000]).all()
            ids = [row[2] for row in rows]
            if meta.get("masked"):  # the probe once per masking, in order
                plain = token_ids[folders[0]]
                assert meta["maskings"] >= 1 and ids == plain * meta["maskings"]
            else:
                token_ids[folder] = ids
        assert (folders[0] / "stage.json").is_file()
    # every model ran over the same probe tokens, so rows line up across dumps
    assert len({tuple(ids) for ids in token_ids.values()}) == 1


def test_second_run_has_nothing_to_do(finished):
    run = snakemake(finished, "--dry-run", timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Nothing to be done" in run.stdout + run.stderr, run.stdout[-3000:]


def test_dump_setting_reruns_only_the_dumps(finished):
    run = snakemake(finished, "--dry-run", "--quiet", "rules", overrides=("dump.dtype=float32",), timeout=600)
    assert run.returncode == 0, run.stderr
    table = {line.split()[0]: int(line.split()[1]) for line in (run.stdout + run.stderr).splitlines()
             if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert table.get("dump") == len(GRID) and table.get("dump_init") == len(INIT), table
    assert "train" not in table and "prepare" not in table, table
    assert table.get("similarity") == 1 and table.get("report") == 1, table


def test_every_table_and_the_report(finished):
    import numpy as np

    from analysis.io.tables import COLUMNS, REPLICATED, read_replicates, read_table

    metrics = finished / "results" / EXPERIMENT / "metrics"
    models = {(o, str(s)) for o, s in MODELS}
    for table in COLUMNS:
        if table == "revisions":  # the check of a published grid's revisions: none in the smoke experiment
            assert not (metrics / f"{table}.csv").exists()
            continue
        rows = read_table(metrics / f"{table}.csv", table)
        assert rows, table
        assert (metrics / f"{table}.json").is_file()
        if table in REPLICATED:  # every row's replicates beside the table, one per resample of its plan
            arrays = read_replicates(metrics / f"{table}.csv", table, len(rows))
            assert set(arrays) == set(REPLICATED[table]), table
            for column, array in arrays.items():
                finite = np.isfinite(array).sum(1)
                assert finite.max() == array.shape[1] and array.shape[1] in (20, 200), (table, column, array.shape)
        if table == "claims":  # the report's verdicts, contrast by contrast
            assert {r["claim"] for r in rows} == {str(n) for n in range(1, 8)}
            judged = [r for r in rows if r["contrast"]]
            assert judged and all(r["n"] and 0.95 <= float(r["level"]) < 1 for r in judged)
            assert {r["verdict"] for r in rows} <= {"holds", "does not hold", "inconclusive", "not measured"}
            continue
        if table == "similarity":
            pairs = {(r["objective_a"], r["seed_a"], r["objective_b"], r["seed_b"]): r["pair"] for r in rows}
            assert len(pairs) == len(MODELS) * (len(MODELS) - 1) // 2
            assert pairs[("mt", "1", "lm", "1")] == "same_init" and pairs[("mt", "1", "lm", "2")] == "different_init"
            assert pairs[("mt", "1", "mt", "2")] == "seed_baseline" and pairs[("mt", "1", "init", "1")] == "init"
        elif table == "evolution":  # the models of snapshots.models only, each at its kept steps and finished
            assert {(r["objective"], r["seed"]) for r in rows} == {("mt", "1"), ("lm", "1"), ("mlm", "1")}
            finals = [r for r in rows if r["final"] == "1" and r["quantity"] == "to_final"]
            assert finals and all(abs(float(r["value"])) < 1e-4 for r in finals)
            assert {r["step"] for r in rows if r["final"] == "0"} >= {"0", "50"}
        elif table == "readout":  # LM and MLM models: an MT encoder and the step-0 control have no head to read
            assert {(r["objective"], r["seed"]) for r in rows} == {m for m in models if m[0] in ("lm", "mlm", "lm_td")}
        elif table in ("tsne", "examples"):  # the first seed of each model
            assert {(r["objective"], r["seed"]) for r in rows} == {(o, s) for o, s in models if s == "1"}, table
        else:
            assert {(r["objective"], r["seed"]) for r in rows} == models, table
        for r in rows:
            for key in ("distance", "value", "mi", "mi_corrected"):
                if key in r:
                    assert r[key] != "nan" or table == "mi", (table, r)
            if "distance" in r:
                assert 0.0 <= float(r["distance"]) <= 1.0, (table, r)
    html = (finished / "reports" / EXPERIMENT / "report.html").read_text(encoding="utf-8")
    assert "The study and this run" in html and html.count("data:image/svg+xml;base64,") >= 11
    assert "Did training converge?" in html and "step-0 control" in html
    links = re.findall(r"""(?<![\w-])(?:src|href)\s*=\s*["']([^"']*)""", html)  # not data-src (a live view's data block)
    assert 'data-view="tsne"' in html and 'data-view="neighbours"' in html and 'data-view="matrix"' in html
    assert links and all(link.startswith(("data:", "#")) for link in links), [x[:60] for x in links if x[:5] != "data:"]
    for stage in ("prepare", "train/mt/seed1", "dump/mlm/seed2", "influence/lm/seed1", "similarity", "merge_mi"):
        assert (finished / "results" / EXPERIMENT / "benchmarks" / f"{stage}.tsv").is_file(), stage


def test_analysis_setting_reruns_only_its_measurement(finished):
    run = snakemake(finished, "--dry-run", "--quiet", "rules", overrides=("analysis.neighbours.k=5",), timeout=600)
    assert run.returncode == 0, run.stderr
    table = {line.split()[0]: int(line.split()[1]) for line in (run.stdout + run.stderr).splitlines()
             if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert (table.get("measure"), table.get("merge"), table.get("report")) == (len(MODELS), 1, 1), table
    assert not {"prepare", "train", "dump", "similarity"} & set(table), table

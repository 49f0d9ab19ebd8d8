"""The notebook's results API (analysis/report/results.py): tables round-trip exactly with numeric dtypes,
replicates line up with rows, a table unlike its record is refused naming the file, a missing table lists
the present ones, models carry the report's convergence, claims read typed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.io.tables import REPLICATES, write_table
from analysis.report.results import TableNotFound, load_results
from pipeline.errors import PipelineError
from pipeline.records.files import write_json
from tests.synthetic import replace_output

REPO = Path(__file__).resolve().parents[2]
MI_COMMAND = "python -m analysis.measures.mi experiment=unit"
B = 5  # bootstrap replicates per row


def _mi_rows() -> list[dict]:
    """Rows with awkward floats (1/3, 1e-300, nan), an older row without the optional columns, and
    replicates that tell the rows apart (row i: its mi, then + 1, + 2, ...; one row none, one fewer)."""
    rows = []
    for i, (objective, seed, layer) in enumerate([("lm", 1, 0), ("lm", 1, 1), ("mt", 2, 0), ("mt", 2, 1)]):
        mi = 1 / 3 + i
        row = {"objective": objective, "seed": seed, "layer": layer, "target": "input", "n_clusters": 500,
               "mi": mi, "mi_shuffled": 1e-300 * (i + 1), "mi_corrected": mi - 0.1, "n_tokens": 4000 + i,
               "ci_low": mi - 0.01, "ci_high": float("nan") if i == 2 else mi + 0.01,
               REPLICATES: {"mi": mi + np.arange(B), "mi_corrected": mi - 0.1 + np.arange(B)}}
        if i != 3:  # row 3 as an older table wrote it: no corrected interval, no spread (nan)
            row.update(corrected_ci_low=mi - 0.2, corrected_ci_high=mi + 0.2, mi_sd=0.001 * i, mi_corrected_sd=0.5)
        rows.append(row)
    rows[1][REPLICATES]["mi"] = None            # a row with no replicates: nan
    rows[2][REPLICATES]["mi_corrected"] = rows[2][REPLICATES]["mi_corrected"][:3]  # fewer: nan after them
    return rows


def _claim_rows() -> list[dict]:
    head = {"statement": "LM: MI with the input falls", "numbers": "input 3.9 → 3.2", "reason": "why"}
    judged = [{**head, "claim": 1, "verdict": "holds", "part": "falls", "part_verdict": "holds", "seed": s,
               "seed_verdict": "holds", "contrast": f"layer 0 − layer 1 ({s})", "estimate": 0.25 * s, "ci_low": 0.1,
               "ci_high": 0.4 * s, "level": 0.995, "margin": 0.02, "outcome": "above", "n": "2988/2986",
               "basis": "paired bootstrap replicates"} for s in (1, 2)]
    unmeasured = {**head, "claim": 7, "verdict": "not measured", "reason": "no influence table",
                  **{k: "" for k in ("part", "part_verdict", "seed", "seed_verdict", "contrast", "outcome", "n",
                                     "basis")},
                  **{k: math.nan for k in ("estimate", "ci_low", "ci_high", "level", "margin")}}
    return [*judged, unmeasured]


def _model(results: Path, objective: str, seed: int, dev: list[float] | None, stop: str, quality: dict) -> None:
    folder = results / "models" / objective / f"seed{seed}"
    write_json(folder / "summary.json", {"objective": objective, "kind": objective.split("_")[0], "seed": seed,
                                         "steps": 120, "best_step": 80, "stop_reason": stop, "wall_time_s": 30.5,
                                         "dev": {"loss": 4.5, **quality}})
    if dev is not None:
        (folder / "log.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 7.0, "dev_loss": d}) + "\n"
                                                  for s, d in zip((40, 80, 120), dev)))


@pytest.fixture
def results(tmp_path) -> Path:
    """A small finished experiment: the mi and neighbours tables (with records and replicates), four trained
    models and the step-0 control's folder (no summary, no log: not a trained model)."""
    folder = tmp_path / "results" / "unit"
    write_table(folder / "metrics" / "mi.csv", "mi", _mi_rows(), {"synthetic": True}, command=MI_COMMAND)
    write_table(folder / "metrics" / "neighbours.csv", "neighbours",
                [{"objective": "lm", "seed": 1, "layer": 0, "property": "same_token", "k": 10, "metric": "cosine",
                  "value": 0.5, "n_queries": 100, "ci_low": 0.4, "ci_high": 0.6, REPLICATES: {"value": np.ones(B)}}],
                {"synthetic": True})
    _model(folder, "mt", 1, [6.0, 4.5, 4.49], "max_steps", {"bleu": 3.2})          # flat end: converged
    _model(folder, "lm", 1, [6.0, 5.2, 4.4], "max_steps", {"perplexity": 80.0})    # still falling: not
    _model(folder, "mlm", 1, [6.0, 5.2, 4.4], "early_stopping", {"accuracy": 0.2})  # stopped early: converged
    _model(folder, "lm_td", 1, None, "max_steps", {"perplexity": 81.0})            # no log: cannot be told
    write_json(folder / "models" / "init" / "seed1" / "stage.json", {"stage": "init"})  # step 0: not trained
    return folder


# ---------------------------------------------------------------- reading

def test_a_table_round_trips_exactly_with_numeric_columns_as_numbers(results):
    mi, written = load_results(results).table("mi"), _mi_rows()
    assert list(mi.columns)[:11] == ["objective", "seed", "layer", "target", "n_clusters", "mi", "mi_shuffled",
                                     "mi_corrected", "n_tokens", "ci_low", "ci_high"]
    assert len(mi) == len(written)
    for column in ("seed", "layer", "n_clusters", "n_tokens"):
        assert mi[column].dtype == np.int64
        assert mi[column].tolist() == [row[column] for row in written]
    for column in ("mi", "mi_shuffled", "mi_corrected", "ci_low", "ci_high", "corrected_ci_low", "mi_sd"):
        assert mi[column].dtype == np.float64
        expected = [row.get(column, math.nan) for row in written]
        np.testing.assert_array_equal(mi[column].to_numpy(), np.array(expected))  # exact, nan where nan
    assert math.isnan(mi["ci_high"][2]) and math.isnan(mi["mi_sd"][3]) and mi["mi_shuffled"][0] == 1e-300
    for column in ("objective", "target"):
        assert pd.api.types.is_string_dtype(mi[column]) and not pd.api.types.is_numeric_dtype(mi[column])
        assert mi[column].tolist() == [row[column] for row in written]


def test_replicates_line_up_with_the_rows(results):
    r = load_results(results)
    mi, reps = r.table("mi"), r.replicates("mi")
    assert set(reps) == {"mi", "mi_corrected"} and reps["mi"].shape == (len(mi), B)
    for i, row in enumerate(_mi_rows()):
        assert reps["mi_corrected"][i, 0] == mi["mi_corrected"][i]  # row i's replicates start at row i's estimate
        for column, written in row[REPLICATES].items():
            got = reps[column][i]
            if written is None:
                assert np.isnan(got).all()
            else:
                np.testing.assert_array_equal(got[:len(written)], written)
                assert np.isnan(got[len(written):]).all()
    assert r.replicates("neighbours")["value"].shape == (1, B)


def test_tables_record_and_repr(results):
    r = load_results(results)
    assert r.tables == ["mi", "neighbours"]
    record = r.record("mi")
    assert record["table"] == "mi" and record["rows"] == 4 and record["command"] == MI_COMMAND
    assert set(record["outputs"]) == {"mi.csv", "mi.npz"}
    assert "mi, neighbours" in repr(r) and "4 trained models" in repr(r)


def test_a_file_only_touched_is_read(results):
    csv = results / "metrics" / "mi.csv"
    os.utime(csv, ns=(1, 1))  # as a copy without its times would leave it: the mtime alone is no damage
    assert len(load_results(results).table("mi")) == 4


# ---------------------------------------------------------------- refusing what is not the measured table

def _refused(results: Path, name: str = "mi") -> str:
    with pytest.raises(PipelineError) as caught:
        load_results(results).table(name)
    return str(caught.value)


def test_a_csv_edited_in_place_is_refused_naming_the_file(results):
    csv = results / "metrics" / "mi.csv"
    recorded = json.loads(csv.with_suffix(".json").read_text())["outputs"]["mi.csv"]
    text = csv.read_text()
    digit = text.index("4001")  # n_tokens of row 1
    csv.write_text(text[:digit] + "5" + text[digit + 1:])
    os.utime(csv, ns=(recorded["mtime_ns"], recorded["mtime_ns"]))  # even with its recorded mtime put back
    assert csv.stat().st_size == recorded["size"]
    message = _refused(results)
    assert str(csv) in message and "sha256" in message and MI_COMMAND in message


def test_a_truncated_csv_is_refused(results):
    csv = results / "metrics" / "mi.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    message = _refused(results)
    assert str(csv) in message and "bytes" in message


def test_a_csv_whose_row_count_differs_from_its_record_is_refused(results):
    csv = results / "metrics" / "mi.csv"
    replace_output(csv, "".join(csv.read_text().splitlines(keepends=True)[:-1]))  # sizes and hashes re-recorded
    message = _refused(results)
    assert str(csv) in message and "3 rows" in message and "says 4" in message


def test_a_header_unlike_the_tables_columns_is_refused(results):
    csv = results / "metrics" / "mi.csv"
    replace_output(csv, csv.read_text().replace("n_clusters", "clusters", 1))
    message = _refused(results)
    assert str(csv) in message and "expected the columns" in message


def test_damaged_replicates_refuse_their_table(results):
    npz = results / "metrics" / "mi.npz"
    np.savez_compressed(npz, mi=np.zeros((4, B)), mi_corrected=np.zeros((4, B)))
    assert str(npz) in _refused(results)
    with pytest.raises(PipelineError, match="mi.npz"):
        load_results(results).replicates("mi")


def test_a_table_without_its_record_is_refused(results):
    record = results / "metrics" / "mi.json"
    record.unlink()
    message = _refused(results)
    assert str(results / "metrics" / "mi.csv") in message and str(record) in message and "missing" in message
    with pytest.raises(PipelineError, match="mi.json"):
        load_results(results).record("mi")


def test_a_table_not_there_lists_the_ones_that_are(results):
    r = load_results(results)
    for name in ("influence", "no_such_table"):
        with pytest.raises(TableNotFound) as caught:
            r.table(name)
        assert isinstance(caught.value, KeyError) and isinstance(caught.value, PipelineError)
        assert name in str(caught.value) and "the tables present: mi, neighbours" in str(caught.value)
    with pytest.raises(TableNotFound, match="claims"):
        r.claims  # noqa: B018  (the report has not run)


def test_a_folder_that_is_not_a_results_folder_is_named(results, tmp_path):
    with pytest.raises(PipelineError, match=f"{tmp_path / 'nowhere'} is not a results folder"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=f"{tmp_path / 'empty'} is not a results folder"):
        load_results(tmp_path / "empty")
    with pytest.raises(PipelineError, match="the results folders in it: unit"):
        load_results(results.parent)  # results/ rather than results/unit


# ---------------------------------------------------------------- models and claims

def test_models_carry_the_reports_convergence(results):
    models = load_results(results).models.set_index(["objective", "seed"])
    assert sorted(models.index) == [("lm", 1), ("lm_td", 1), ("mlm", 1), ("mt", 1)]
    converged = models["converged"]
    assert pd.api.types.is_bool_dtype(converged)
    assert bool(converged[("mt", 1)]) and bool(converged[("mlm", 1)])
    assert not bool(converged[("lm", 1)])
    assert pd.isna(converged[("lm_td", 1)]) and models.loc[("lm_td", 1), "convergence_reason"] == "no log.jsonl"
    assert "still falling" in models.loc[("lm", 1), "convergence_reason"]
    assert models.loc[("mt", 1), "quality"] == "BLEU" and models.loc[("mt", 1), "quality_value"] == 3.2
    assert models.loc[("mlm", 1), "quality_value"] == 0.2 and models.loc[("lm", 1), "best_dev_loss"] == 4.4
    assert models["steps"].tolist() == [120] * 4 and pd.api.types.is_integer_dtype(models["steps"])
    assert models["dev_loss"].dtype == np.float64 and models["wall_time_s"].tolist() == [30.5] * 4


def test_claims_read_typed_when_the_report_wrote_them(results):
    write_table(results / "metrics" / "claims.csv", "claims", _claim_rows(), {"synthetic": True})
    r = load_results(results)
    assert "claims" in r.tables
    claims = r.claims
    assert claims["claim"].tolist() == [1, 1, 7] and claims["claim"].dtype == np.int64
    assert claims["seed"].dtype == "Int64" and claims["seed"].tolist()[:2] == [1, 2] and pd.isna(claims["seed"][2])
    np.testing.assert_array_equal(claims["estimate"].to_numpy(), [0.25, 0.5, math.nan])
    assert claims["verdict"].tolist() == ["holds", "holds", "not measured"]
    assert claims["n"].tolist()[0] == "2988/2986" and r.replicates("claims") == {}


# ---------------------------------------------------------------- pandas only where a frame is made

def test_pandas_is_needed_only_for_frames_and_its_absence_names_the_extra(results, monkeypatch):
    script = ("import sys; sys.modules['pandas'] = None; from analysis.report.results import load_results; "
              f"print(load_results({str(results)!r}).tables)")
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "['mi', 'neighbours']" in done.stdout, done.stderr[-2000:]
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[notebook\]'"):
        load_results(results).table("mi")
    assert 'load_results("results/default")' in (load_results.__doc__ or "")

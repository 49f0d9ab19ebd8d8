"""Evolution over training for real on the smoke slice: the kept snapshots, their dumps and their
measures (analysis.evolution), and the report's grids and per-step claims (analysis.report.evolution)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.report.gather import load_table
from analysis.io.tables import REPLICATES
from pipeline.errors import PipelineError
from tests.synthetic import FAST_TRAINING

KEEP = "snapshots.keep=[0,10,30]"


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_zip):
    """MT, LM and MLM seed 1 trained 30 steps keeping steps 0, 10 and 30, every point dumped and
    measured (the finished model too), and the step-0 control dumped."""
    from analysis.measures.evolution import run as evolution
    from analysis.measures.merge import main as merge
    from pipeline.config.compose import compose
    from pipeline.dump.stage import dump
    from pipeline.train.stage import train

    results = tmp_path_factory.mktemp("evolution")

    def cfg(*overrides):
        return compose(["experiment=smoke", f"paths.results={results}", f"data.archive={shared_zip}",
                        "train.progress=false", *FAST_TRAINING, "train.max_steps=30", "train.patience=99", KEEP,
                        *overrides])

    parts = []
    for objective in ("mt", "lm", "mlm"):
        summary = train(cfg(f"objective={objective}"))
        assert summary["best_step"] == 30, f"{objective}: the dev loss must still fall at step 30 for this test"
        dump(cfg(f"objective={objective}"))
        for step in (0, 10, 30, None):
            point = [] if step is None else [f"snapshot={step}"]
            if step is not None:
                dump(cfg(f"objective={objective}", *point))
            parts.append(evolution(cfg(f"objective={objective}", *point)))
    dump(cfg("objective=init"))
    table = results / "metrics" / "evolution.csv"
    assert merge(["evolution", str(table), *map(str, parts)]) == 0
    return {"results": results, "cfg": cfg, "rows": load_table(table, "evolution").rows}


def _layers(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("layer_*.npy"))]


def test_training_keeps_the_steps_it_reaches_and_records_them(run):
    results = run["results"]
    for objective in ("mt", "lm", "mlm"):
        folder = results / "models" / objective / "seed1"
        assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["step0.pt", "step10.pt", "step30.pt"]
        record = json.loads((folder / "stage.json").read_text())
        assert {"snapshots/step0.pt", "snapshots/step10.pt", "snapshots/step30.pt"} <= set(record["outputs"])
        assert record["summary"]["snapshots"] == [0, 10, 30]
    # a model no setting names keeps none
    from pipeline.train.stage import train

    summary = train(run["cfg"]("objective=lm", "seed=2", "train.max_steps=10"))
    assert summary["snapshots"] == [] and not (results / "models" / "lm" / "seed2" / "snapshots").exists()


def test_step0_snapshots_of_mt_and_mlm_are_the_same_states(run):
    """One seed, one initialisation: the step-0 stacks of MT (its encoder) and MLM are identical, and
    identical to the step-0 control's; the LM's causal stack is not (it masks the future)."""
    snaps = run["results"] / "snapshots"
    mt, mlm, lm = (_layers(snaps / o / "seed1" / "step0") for o in ("mt", "mlm", "lm"))
    assert mt and mt == mlm == _layers(run["results"] / "dumps" / "init" / "seed1")
    assert lm[0] == mt[0] and lm[-1] != mt[-1]  # the same embeddings, other attention
    # and training moved them: step 10 differs from step 0
    assert _layers(snaps / "mt" / "seed1" / "step10")[-1] != mt[-1]


def test_final_snapshot_is_at_distance_zero_from_the_final_model(run):
    """Step 30 is the best step: its snapshot, dumped on its own, is the finished model, so its distance
    to it is 0 at every layer (up to the ridge), as the finished model's own; step 0's is not."""
    rows = [r for r in run["rows"] if r["quantity"] == "to_final"]
    layers = sorted({r["layer"] for r in rows})
    for objective in ("mt", "lm", "mlm"):
        for measure in ("pwcca", "cka"):
            mine = [r for r in rows if r["objective"] == objective and r["measure"] == measure]
            last = [r for r in mine if r["step"] == 30]  # the snapshot and the finished model
            assert len(last) == 2 * len(layers)
            assert all(abs(r["value"]) < 1e-4 for r in last), (objective, measure, last)
            start = [r for r in mine if r["step"] == 0]
            assert max(r["value"] for r in start) > 0.01, (objective, measure)
            assert all(r["n_tokens"] == start[0]["n_tokens"] > 0 for r in mine)


def test_every_point_has_every_measure_with_its_interval_and_size(run):
    rows = run["rows"]
    for objective, targets in (("mt", {"input"}), ("lm", {"input", "output"}), ("mlm", {"input", "output", "input_masked"})):
        for step in (0, 10, 30):
            mine = [r for r in rows if r["objective"] == objective and r["step"] == step and not r["final"]]
            assert {r["target"] for r in mine if r["quantity"] == "mi"} == targets
            assert {r["measure"] for r in mine if r["quantity"] == "neighbours"} >= {"identity", "position"}
            assert {r["layer"] for r in mine if r["quantity"] == "change"} == set(range(1, 4))
            for r in mine:
                assert r["n_tokens"] > 0
                if math.isfinite(r["value"]) and r["quantity"] != "to_final":
                    assert r["ci_low"] <= r["ci_high"], r


def test_the_readout_of_every_step_is_measured_on_the_same_rows_and_the_best_step_equals_the_finished_model(run):
    """LM and MLM: the logit lens per layer at every kept step; step 30 (the best) dumped from its snapshot
    reads as the finished model (same rows: an MLM's first snapshots.mlm_maskings maskings); none for MT."""
    rows = [r for r in run["rows"] if r["quantity"] == "readout"]
    assert not [r for r in rows if r["objective"] == "mt"]
    for objective, target in (("lm", "next"), ("mlm", "masked")):
        mine = [r for r in rows if r["objective"] == objective]
        assert {r["target"] for r in mine} == {target} and {r["measure"] for r in mine} == {"loss", "accuracy", "kl"}
        assert len({r["n_tokens"] for r in mine}) == 1
        key = {(r["measure"], r["layer"]): r["value"] for r in mine if r["step"] == 30 and r["final"]}
        snap = {(r["measure"], r["layer"]): r["value"] for r in mine if r["step"] == 30 and not r["final"]}
        assert key.keys() == snap.keys() and len(key) == 3 * 4
        for k, v in key.items():
            assert snap[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (objective, k)
        # training lowers the last layer's loss from step 0 to step 30
        loss = {r["step"]: r["value"] for r in mine if r["measure"] == "loss" and r["layer"] == 3 and not r["final"]}
        assert loss[30] < loss[0]


def test_an_mlm_snapshot_is_measured_on_the_first_maskings_of_the_final_dump(run):
    """The finished MLM's masked run has dump.mlm_maskings (4) maskings, a snapshot's
    snapshots.mlm_maskings (1): the evolution rows of both are on the same masked rows."""
    rows = [r for r in run["rows"] if r["objective"] == "mlm" and r["quantity"] == "mi" and r["target"] == "output"]
    assert len({r["n_tokens"] for r in rows}) == 1
    meta = json.loads((run["results"] / "snapshots" / "mlm" / "seed1" / "step10" / "masked" / "meta.json").read_text())
    assert meta["maskings"] == 1


def test_a_step_that_was_not_kept_is_refused_naming_what_was(run):
    from pipeline.dump.stage import dump

    with pytest.raises(PipelineError, match=r"kept no snapshot of step 20 \(kept: \[0, 10, 30\]"):
        dump(run["cfg"]("objective=mt", "snapshot=20"))
    with pytest.raises(PipelineError, match="snapshots.steps: \\[20\\] are not in snapshots.keep"):
        dump(run["cfg"]("objective=mt", "snapshot=10", "snapshots.steps=[10,20]"))


def test_snapshots_survive_a_kill_and_resume(smoke_cfg, tmp_path):
    """Killed at step 15 (last checkpoint: step 10, snapshot 10 written before it) and started again:
    the same snapshots as an uninterrupted run, bit for bit."""
    from pipeline.train.stage import train

    def cfg(folder):
        return smoke_cfg("objective=lm", f"paths.model={folder}", *FAST_TRAINING, "train.max_steps=30",
                         "train.eval_every=10", "snapshots.keep=[0,5,10,20,30]", results=tmp_path)

    train(cfg(tmp_path / "a"))

    class Killed(Exception):
        pass

    def kill_at_15(step):
        if step == 15:
            raise Killed

    with pytest.raises(Killed):
        train(cfg(tmp_path / "b"), on_step=kill_at_15)
    assert sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir()) == ["step0.pt", "step10.pt", "step5.pt"]
    train(cfg(tmp_path / "b"))
    for step in (0, 5, 10, 20, 30):
        a, b = (torch.load(f / "snapshots" / f"step{step}.pt", weights_only=True) for f in (tmp_path / "a", tmp_path / "b"))
        assert a["step"] == b["step"] == step
        for name in a["state_dict"]:
            assert torch.equal(a["state_dict"][name], b["state_dict"][name]), (step, name)


def test_the_heat_map_rows_and_columns_match_the_table(run):
    import matplotlib.pyplot as plt

    from analysis.report.evolution import FINAL, grid, heatmap

    rows = run["rows"]
    for objective in ("mt", "lm", "mlm"):
        g = grid(rows, objective, 1, "to_final", "pwcca")
        assert g.points == [0, 10, 30, FINAL] and g.steps == [0, 10, 30, 30]
        for r in rows:
            if r["objective"] == objective and r["quantity"] == "to_final" and r["measure"] == "pwcca":
                assert g.values[g.layers.index(r["layer"]), g.points.index(FINAL if r["final"] else r["step"])] == r["value"]
        fig, ax = plt.subplots()
        image = heatmap(ax, g)
        assert np.array_equal(np.asarray(image.get_array()), g.values)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "30", "final (30)"]
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(layer) for layer in g.layers]
        plt.close(fig)


def test_settled_and_first_holding_are_the_first_points_from_which_it_stays_so():
    from analysis.report.claims import FAILS, HOLDS
    from analysis.report.criteria import Verdict
    from analysis.report.evolution import FINAL, Grid, first_holding, settled

    g = Grid("mt", 1, "pwcca", [0, 10, 30, FINAL], [0, 10, 30, 40], [0, 1],
             np.array([[0.3, 0.04, 0.06, 0.0], [0.5, 0.2, 0.03, 0.0]]))
    assert settled(g, 0.05) == {0: None, 1: 30}  # layer 0 leaves the band again at step 30
    assert settled(g, 0.1) == {0: 10, 1: 30}
    assert settled(g, 0.01) == {0: None, 1: None}  # the finished model alone
    v = lambda x: Verdict(x, "", "")  # noqa: E731
    assert first_holding([0, 10, FINAL], [v(HOLDS), v(FAILS), v(HOLDS)]) == FINAL
    assert first_holding([0, 10, FINAL], [v(FAILS), v(HOLDS), v(HOLDS)]) == 10
    assert first_holding([0, 10, FINAL], [v(HOLDS), v(HOLDS), v(FAILS)]) is None


def test_the_claims_per_step_read_the_rows_as_the_tables_hold_them(run):
    """At the final point the per-step claim tables carry the evolution rows' numbers in the mi,
    change and neighbours shapes, and every per-step claim gets a verdict at every point."""
    from analysis.report.criteria import Criteria
    from analysis.report.evolution import FINAL, PER_STEP_CLAIMS, claim_tables, rows_at, verdicts_over_training

    crit = Criteria.from_cfg(run["cfg"]())
    final, ended = rows_at(run["rows"], FINAL)
    tables = claim_tables(final, crit)
    mi = {(r["objective"], r["layer"], r["target"]): r for r in tables["mi"]}
    for r in final:
        if r["quantity"] == "mi":
            key = "mi" if r["measure"] == "plugin" else "mi_corrected"
            assert mi[(r["objective"], r["layer"], r["target"])][key] == r["value"]
    assert {r["layer_to"] for r in tables["change"]} == {1, 2, 3}
    # the per-step claims read paired replicates, as the claim table does (the table's file pads a row of
    # fewer resamples with nan)
    finite = lambda reps: int(np.isfinite(reps).sum())  # noqa: E731
    assert all(finite(r[REPLICATES]["mi"]) == crit_resamples(run, "mi") for r in tables["mi"])
    assert all(finite(r[REPLICATES]["distance"]) == crit_resamples(run, "change") for r in tables["change"])
    points, verdicts, _ = verdicts_over_training(run["rows"], crit)
    # every model's best step is 30: a column at 30 would repeat the finished models
    assert points == [0, 10, FINAL] and sorted(verdicts) == list(PER_STEP_CLAIMS)
    assert all(len(v) == len(points) for v in verdicts.values())


def crit_resamples(run, table: str) -> int:
    return int(run["cfg"]().analysis.bootstrap.resamples[table])


def _step_rows(best: int, snapshots: list[int], objective: str = "mt") -> list[dict]:
    """Evolution rows of one model, input MI only, that settles early: every snapshot from step 10 on is
    as close to the finished model as it gets."""
    rows = []
    for step, final in [*((s, 0) for s in snapshots), (best, 1)]:
        for layer in (0, 1):
            value = 0.0 if final else (0.5 if step == 0 else 0.01)
            rows.append({"objective": objective, "seed": 1, "step": step, "final": final, "quantity": "to_final",
                         "measure": "pwcca", "target": "final", "layer": layer, "value": value, "ci_low": value,
                         "ci_high": value, "n_tokens": 100})
    return rows


def test_snapshots_after_the_best_step_come_after_the_finished_model():
    """Training went on past its best step (20) to a kept step (30) before early stopping: the heat map
    shows 30 after the finished model, a layer that settled at step 10 reads as settling at 10, and the
    claims over training have no column at or after the last best step."""
    from analysis.report.evolution import FINAL, grid, points_of, rows_at, settled, verdicts_over_training
    from analysis.report.criteria import Criteria

    rows = _step_rows(20, [0, 10, 30])
    assert points_of(rows, "mt", 1) == ([0, 10, FINAL, 30], [0, 10, 20, 30], 1)
    g = grid(rows, "mt", 1)
    assert g.labels() == ["0", "10", "final (20)", "30 (after best)"]
    assert settled(g, 0.05) == {0: 10, 1: 10}
    later = _step_rows(40, [0, 10, 30], objective="lm")  # lm's best step is later: its snapshot at 30 counts
    at30, ended = rows_at(rows + later, 30)
    assert ended == ["mt seed 1"] and {(r["objective"], r["final"]) for r in at30} == {("mt", 1), ("lm", 0)}
    points, _, _ = verdicts_over_training(rows + later, Criteria())
    assert points == [0, 10, 30, FINAL]
    assert verdicts_over_training(rows, Criteria())[0] == [0, 10, FINAL]


def test_the_report_shows_the_evolution_section(run):
    from analysis.report.stage import build

    html = build(run["cfg"](), probe_hardware=False)
    assert "Evolution over training" in html and "When each finding appears" in html
    assert "When each layer settles" in html and "final (30)" in html

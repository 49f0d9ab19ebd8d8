"""The report's evolution section for pretrained models with a grid of published revisions
(pretrained.models.<label>.revisions; analysis/report/evolution.py, analysis/report/revisions.py): a grid
model alone (the tiny Pythia-like grid of tests/unit/test_revisions.py, whose step20 has step10's weights)
and beside trained models (synthetic tables), the revisions' check flagged or said clean, no dev loss of
ours for a published model, revision names in the points' labels, and the claims over training kept to the
trained models."""
from __future__ import annotations

import html
import re
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.io.tables import write_table
from analysis.report.evolution_figures import NO_DEV_LOSS_LOG, NO_DEV_LOSS_PUBLISHED
from analysis.report.stage import build
from pipeline.config.compose import compose
from tests.unit.test_report import EVOLUTION_STEPS, _evolution_rows, with_replicates, write_experiment

try:  # the module-scoped grid: four branches of a tiny GPT-NeoX dumped and measured offline (~30 s)
    from tests.unit.test_revisions import grid
except pytest.skip.Exception:  # no transformers: the grid's tests skip, the synthetic ones below still run
    @pytest.fixture(scope="module")
    def grid():
        pytest.skip("transformers is not installed (tests/unit/test_revisions.py)")


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


def _text(fragment: str) -> str:
    """The fragment's text: tags dropped, entities read."""
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def _claims_header(section: str) -> list[str]:
    """The column heads of the “when each finding appears” table."""
    after = section[section.index("When each finding appears"):]
    head = after[after.index("<thead>"):after.index("</thead>")]
    return re.findall(r"<th>(.*?)</th>", head)


# ---------------------------------------------------------------- a grid model alone

def test_a_grid_model_alone_has_its_evolution_and_its_same_revisions_flagged(grid):
    page = build(grid["cfg"](), probe_hardware=False)
    section = _section(page, "evolution")
    text = _text(section)
    assert "Not measured: evolution over training" not in text
    assert "tiny seed 0" in text and section.count("<img ") >= 2  # heat maps and curves
    assert "When each layer settles" in text
    # the points: steps whose names say them are not repeated ("final (30, step30)")
    assert "final (30)" in text and "(step30)" not in text and "(step10)" not in text
    # the revisions' table: every revision with its commit and weights, short
    for r in grid["revisions"]:
        assert r["commit"][:10] in text and r["weights_sha256"][:12] in text
    # the warning names both revisions once, by the later one; the distinct revisions are not in it
    warning = _text(section[section.index('<strong class="flag">'):section.index("</ul>")])
    assert "Warning: tiny" in warning
    assert "step20 has the same weights as step10" in warning
    assert "their measurements are not two points of training" in warning
    assert "step10 has the same" not in warning and "step0 " not in warning and "step30" not in warning
    assert "weights and states differ" not in text
    # no dev loss of ours, said rather than drawn empty or failed
    assert f"tiny seed 0: {NO_DEV_LOSS_PUBLISHED}" in text
    # the claims over training read trained objectives only: none here
    assert "Not measured: the claims over training" in text and "only pretrained models (tiny)" in text
    assert "could not be checked" not in _text(_section(page, "claims"))


# ---------------------------------------------------------------- beside trained models (synthetic)

L_TINY = 5  # the grid model is deeper than the trained ones (3 layers)
TINY = ("+pretrained.models.tiny={name: tiny-org/pythia-tiny, role: lm, revision: main, final_step: 900, "
        "revisions: {0: step0, 5: stage1-b, 300: step300}}")
TRAINED = [("mt", 1), ("lm", 1), ("mlm", 1)]


def _tiny_rows(seed: int = 0) -> list[dict]:
    rows = []
    for step, final in ((0, 0), (5, 0), (300, 0), (900, 1)):
        done = step / 900
        for layer in range(L_TINY + 1):
            for quantity, measure, target, value in (
                    ("to_final", "pwcca", "final", 0.4 * (1 - done)), ("to_final", "cka", "final", 0.3 * (1 - done)),
                    ("mi", "plugin", "input", 4.0 - 0.1 * layer), ("mi", "corrected", "input", 3.5 - 0.1 * layer),
                    ("neighbours", "identity", "", 0.5 + 0.4 * done), ("readout", "loss", "next", 6 - layer * done)):
                rows.append({"objective": "tiny", "seed": seed, "step": step, "final": final, "quantity": quantity,
                             "measure": measure, "target": target, "layer": layer, "value": value,
                             "ci_low": value - 0.01, "ci_high": value + 0.01, "n_tokens": 500})
    return rows


REVISIONS = ((0, 0, "step0"), (5, 0, "stage1-b"), (300, 0, "step300"), (900, 1, "main"))


def _revision_rows(weights_of: dict[str, str] | None = None, states_of: dict[str, str] | None = None,
                   seed: int = 0, salt: int | None = None) -> list[dict]:
    """tiny's revisions as analysis.measures.revisions writes them; `weights_of` / `states_of`: revision ->
    the revision whose weights / states it has (both named in same_* of the other); `salt`: the seed its
    hashes are made from (default: its own)."""
    weights_of, states_of, salt = weights_of or {}, states_of or {}, seed if salt is None else salt
    rows = [{"objective": "tiny", "seed": seed, "step": step, "final": final, "revision": name,
             "commit": f"{step:02d}" * 20, "weights_sha256": f"w{weights_of.get(name, name)}{salt}".ljust(64, "0"),
             "states_sha256": f"s{states_of.get(name, name)}{salt}".ljust(64, "0")} for step, final, name in REVISIONS]
    for r in rows:
        for key, column in (("weights_sha256", "same_weights_as"), ("states_sha256", "same_states_as")):
            r[column] = " ; ".join(o["revision"] for o in rows if o is not r and o[key] == r[key])
    return rows


@pytest.fixture
def mixed(tmp_path):
    """mt, lm and mlm seed 1 over training (steps 0, 40, 80; finished at 120) and the grid model tiny
    (steps 0, 5 and 300; its final revision `main` at 900), its revisions all different."""
    results = tmp_path / "results"
    write_experiment(results, tables=("mi", "change", "neighbours"), grid=TRAINED)
    rows = with_replicates(_evolution_rows(TRAINED) + _tiny_rows(), "evolution", np.random.default_rng(0))
    write_table(results / "metrics" / "evolution.csv", "evolution", rows, {"synthetic": True}, time.perf_counter())
    write_table(results / "metrics" / "revisions.csv", "revisions", _revision_rows(), {"synthetic": True})

    def page(*extra: str) -> str:
        cfg = compose(["experiment=smoke", f"paths.results={results}", f"paths.report={tmp_path / 'reports'}",
                       "workflow.objectives=[mt,lm,mlm]", "workflow.seeds={mt:[1],lm:[1],mlm:[1]}", TINY, *extra])
        return build(cfg, probe_hardware=False)

    return results, page


def test_a_grid_model_beside_trained_ones_is_drawn_but_kept_out_of_the_claims_per_step(mixed):
    _, page = mixed
    section = _section(page(), "evolution")
    text = _text(section)
    # every model in the heat maps and the settle table, each with its own layers
    for model in ("mt seed 1", "lm seed 1", "mlm seed 1", "tiny seed 0"):
        assert model in text
    assert f"layer {L_TINY}" in text
    settle = section[section.index("When each layer settles"):section.index("When each finding appears")]
    mt_row = re.search(r"<tr><td>mt seed 1</td>(.*?)</tr>", settle).group(1)
    assert mt_row.count("<td") == L_TINY + 1 and mt_row.endswith("<td>—</td>")  # mt has no layer 4 or 5
    # the names say what the steps do not; those that repeat the step are left out
    assert "5 (stage1-b)" in text and "final (900, main)" in text and "(step300)" not in text
    # the dev loss: ours for the trained models, none for the published one
    assert f"tiny seed 0: {NO_DEV_LOSS_PUBLISHED}" in text
    assert "mt seed 1: no dev" not in text
    # the claims per step: the trained models' steps only, the grid model named as left out
    assert _claims_header(section) == ["claim", "holds from", *map(str, EVOLUTION_STEPS), "final"]
    assert "The pretrained grid models (tiny) are left out of these claims" in text
    assert "tiny seed 0" not in text[text.index("When each finding appears"):]
    # no revision is another's: said in one sentence, no warning
    assert "tiny seed 0: every revision's weights and states differ from every other revision's (4 revisions)" in text
    assert "Warning:" not in text and 'class="flag"' not in section


def test_a_flagged_final_revision_and_states_alone_are_named(mixed):
    results, page = mixed
    rows = _revision_rows({"main": "step300"}, {"main": "step300", "stage1-b": "step0"})  # stage1-b: states alone
    assert rows[1]["same_states_as"] == "step0" and rows[1]["same_weights_as"] == ""
    write_table(results / "metrics" / "revisions.csv", "revisions", rows, {"synthetic": True})
    text = _text(_section(page(), "evolution"))
    assert ("main (the final revision) has the same weights as step300 (and so the same hidden states on the "
            "probe): their measurements are not two points of training") in text
    assert "stage1-b has the same hidden states on the probe as step0, though its weight files differ" in text
    assert "step300 has the same" not in text and "step0 has the same" not in text
    assert "weights and states differ" not in text


def test_without_the_revisions_table_or_a_dev_loss_log_the_section_says_why(mixed):
    results, page = mixed
    (results / "metrics" / "revisions.csv").unlink()
    (results / "models" / "lm" / "seed1" / "log.jsonl").unlink()
    text = _text(_section(page(), "evolution"))
    assert "Not measured: the revisions' check." in text and "revisions.csv not found" in text
    assert f"lm seed 1: {NO_DEV_LOSS_LOG}" in text and f"tiny seed 0: {NO_DEV_LOSS_PUBLISHED}" in text
    assert "tiny seed 0" in text and "When each layer settles" in text


TWO_SEEDS = ("+pretrained.models.tiny={name: 'tiny-org/tiny-seed_{seed}', role: lm, seeds: [0, 1], revision: main, "
             "final_step: 900, revisions: {0: step0, 5: 'tiny-org/tiny-seed_{seed}-b', 300: step300}}")


def test_a_grid_of_two_published_seeds_is_checked_seed_by_seed(tmp_path):
    """Two seeds as repositories of their own (MultiBERTs): each seed's revisions are compared among
    themselves only (seed 1's hashes are seed 0's: read together, every revision would be flagged), a
    revision the table leaves unnamed (a repository's default revision) is named by its setting."""
    results = tmp_path / "results"
    write_experiment(results, tables=(), grid=TRAINED)
    rows = with_replicates(_evolution_rows(TRAINED) + _tiny_rows(0) + _tiny_rows(1), "evolution",
                           np.random.default_rng(0))
    write_table(results / "metrics" / "evolution.csv", "evolution", rows, {"synthetic": True}, time.perf_counter())
    seed1 = _revision_rows({"stage1-b": "step0"}, {"stage1-b": "step0"}, seed=1, salt=0)
    seed1[1]["revision"] = ""  # step 5: its own repository, read at its default revision
    write_table(results / "metrics" / "revisions.csv", "revisions", _revision_rows() + seed1, {"synthetic": True})
    cfg = compose(["experiment=smoke", f"paths.results={results}", f"paths.report={tmp_path / 'reports'}",
                   "workflow.objectives=[mt,lm,mlm]", "workflow.seeds={mt:[1],lm:[1],mlm:[1]}", TWO_SEEDS])
    section = _section(build(cfg, probe_hardware=False), "evolution")
    text = _text(section)
    assert "tiny seed 0: every revision's weights and states differ" in text
    assert "Warning: tiny seed 1 has revisions that are the same as another (1)" in text
    assert ("tiny-org/tiny-seed_1-b has the same weights as step0 (and so the same hidden states on the probe): "
            "their measurements are not two points of training") in text
    assert "Warning: tiny seed 0" not in text and "seed 1: every revision" not in text
    # each seed's own names: the table's where it has one (what was measured), else the setting's
    assert "5 (tiny-org/tiny-seed_1-b)" in text and "5 (stage1-b)" in text and "seed_0-b" not in text
    assert _claims_header(section)[2:] == [*map(str, EVOLUTION_STEPS), "final"]


# ---------------------------------------------------------------- the pieces

def test_a_label_shows_a_revision_name_only_where_it_adds_to_the_step():
    from analysis.report.evolution import FINAL, Grid
    from analysis.report.revisions import shown_name

    assert shown_name(20000, "step20000") is None and shown_name(20000, "stage1-step20000-tokens84B") is None
    assert shown_name(900, "main") == "main" and shown_name(5, "stage1-b") == "stage1-b"
    assert shown_name(5, "step50") == "step50" and shown_name(5, None) is None
    g = Grid("p", 0, "pwcca", [0, 5, FINAL, 1000], [0, 5, 900, 1000], [0], np.zeros((1, 4)), after=1,
             names={0: "step0", 5: "stage1-b", FINAL: "main", 1000: "late"})
    assert g.labels() == ["0", "5 (stage1-b)", "final (900, main)", "1000 (late, after best)"]
    assert g.step_label(5) == "5 (stage1-b)" and g.step_label(0) == "0" and g.step_label(None) == "final only"
    assert Grid("mt", 1, "pwcca", [0, FINAL], [0, 30], [0], np.zeros((1, 2))).labels() == ["0", "final (30)"]


def test_the_claims_per_step_leave_the_pretrained_models_out():
    from analysis.report.criteria import Criteria
    from analysis.report.evolution import FINAL, per_step_rows, verdicts_over_training

    rows = _evolution_rows(TRAINED) + _tiny_rows()
    kept, left = per_step_rows(rows, {"tiny"})
    assert left == ["tiny"] and {r["objective"] for r in kept} == {"mt", "lm", "mlm"}
    points, _, ended = verdicts_over_training(kept, Criteria())
    assert points == [*EVOLUTION_STEPS, FINAL]
    assert not any("tiny" in m for models in ended.values() for m in models)
    # read together, the grid's steps would become columns (and tiny would enter beside our models)
    assert verdicts_over_training(rows, Criteria())[0] == [0, 5, 40, 80, 300, FINAL]


def test_the_gathered_experiment_knows_its_grid_models(tmp_path):
    from analysis.report.gather import collect
    from analysis.report.revisions import grid_models, revision_names

    results = tmp_path / "results"
    write_table(results / "metrics" / "revisions.csv", "revisions", _revision_rows(), {"synthetic": True})
    exp = collect(compose(["experiment=smoke", f"paths.results={results}", TINY]), probe_hardware=False)
    assert list(exp.grids) == ["tiny"] and exp.grids["tiny"].final_step == 900
    assert [r["revision"] for r in exp.tables["revisions"].rows] == ["step0", "stage1-b", "step300", "main"]
    assert grid_models(exp) == [("tiny", 0)]
    assert revision_names(exp) == {("tiny", 0): ({0: "step0", 5: "stage1-b", 300: "step300"}, "main")}
    assert Path(exp.results) == results

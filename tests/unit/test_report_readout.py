"""The report's logit-lens section (analysis/report/sections_readout.py) and the readout heat map of the
evolution section, built from small synthetic tables: an LM and an MLM with rows, an MT model and the
step-0 control without, a missing table, and readout rows over training."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.io.tables import REPLICATES, write_table
from analysis.report import figures
from analysis.report.plotting import COLOURS, Style
from analysis.report.stage import build
from pipeline.config.compose import compose
from pipeline.records.files import write_json

L = 3
GRID = ["workflow.objectives=[mt,lm,mlm]", "workflow.seeds={mt:[1],lm:[1],mlm:[1]}"]
# per model: (target, loss per layer, accuracy per layer, n target rows, n sentences)
READOUT = {"lm": ("next", [6.111, 5.222, 4.333, 3.444], [0.011, 0.052, 0.123, 0.214], 1234, 56),
           "mlm": ("masked", [7.015, 6.025, 4.035, 2.045], [0.002, 0.031, 0.171, 0.302], 789, 43)}


def _readout_rows(models=("lm", "mlm")) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for objective in models:
        target, loss, acc, n, m = READOUT[objective]
        kl = [v - loss[-1] for v in loss]  # 0 at the last layer
        for quantity, curve in (("loss", loss), ("accuracy", acc), ("kl", kl)):
            for layer, value in enumerate(curve):
                rows.append({"objective": objective, "seed": 1, "layer": layer, "lens": "logit", "quantity": quantity,
                             "target": target, "value": value, "ci_low": value - 0.01, "ci_high": value + 0.02,
                             "n_tokens": n, "n_sentences": m,
                             REPLICATES: {"value": value + 0.005 * rng.normal(size=20)}})
    return rows


def _mi_rows() -> list[dict]:
    rows = []
    for objective in ("mt", "lm", "mlm", "init"):
        targets = ["input"] + (["output"] if objective in ("lm", "mlm") else [])
        for target in targets:
            for layer in range(L + 1):
                value = 1.0 + 0.3 * layer
                rows.append({"objective": objective, "seed": 1, "layer": layer, "target": target, "n_clusters": 50,
                             "mi": value + 0.2, "mi_shuffled": 0.2, "mi_corrected": value, "n_tokens": 2000,
                             "ci_low": value, "ci_high": value + 0.3, "corrected_ci_low": value - 0.05,
                             "corrected_ci_high": value + 0.05})
    return rows


def _experiment(results: Path, readout=True, evolution_readout=None) -> None:
    metrics = results / "metrics"
    write_table(metrics / "mi.csv", "mi", _mi_rows(), {"synthetic": True}, time.perf_counter())
    if readout:
        write_table(metrics / "readout.csv", "readout", _readout_rows(), {"synthetic": True}, time.perf_counter())
    for objective in ("mt", "lm", "mlm", "init"):
        write_json(results / "dumps" / objective / "seed1" / "meta.json",
                   {"n_tokens": 2100, "n_layers": L, "objective": objective, "seed": 1})
    if evolution_readout is not None:
        write_table(metrics / "evolution.csv", "evolution", _evolution_rows(evolution_readout), {"synthetic": True},
                    time.perf_counter())


def _evolution_rows(with_readout: bool) -> list[dict]:
    rows = []
    for step, final in ((0, 0), (40, 0), (120, 1)):
        done = step / 120

        def row(quantity, measure, target, layer, value, step=step, final=final):
            rows.append({"objective": "lm", "seed": 1, "step": step, "final": final, "quantity": quantity,
                         "measure": measure, "target": target, "layer": layer, "value": value,
                         "ci_low": value - 0.01, "ci_high": value + 0.01, "n_tokens": 1500})

        for layer in range(L + 1):
            for measure in ("pwcca", "cka"):
                row("to_final", measure, "final", layer, 0.3 * (1 - done) * (layer + 1) / (L + 1))
            if with_readout:
                row("readout", "loss", "next", layer, 6.9 - done - 0.25 * layer + 0.001 * step)
                row("readout", "accuracy", "next", layer, 0.1 * done)
    return rows


def _page(results: Path, reports: Path, *overrides: str) -> str:
    cfg = compose(["experiment=smoke", f"paths.results={results}", f"paths.report={reports}", *GRID, *overrides])
    return build(cfg, probe_hardware=False)


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def test_the_section_follows_mi_with_a_figure_the_values_and_sample_sizes(tmp_path):
    _experiment(tmp_path / "results")
    text = _page(tmp_path / "results", tmp_path / "reports")
    ids = re.findall(r'<section id="(\w+)">', text)
    assert ids[ids.index("mi") + 1] == "readout"
    s = _section(text, "readout")
    assert "What each layer already predicts (logit lens)" in s
    assert s.count("<img ") == 1
    # model, seed, target, layer, loss [interval], accuracy [interval], KL [interval], n tokens / sentences
    assert ("<td>lm</td><td class=\"num\">1</td><td>next</td><td class=\"num\">2</td><td>4.333 [4.323, 4.353]</td>"
            "<td>0.123 [0.113, 0.143]</td><td>0.889 [0.879, 0.909]</td><td>1,234 / 56</td>") in s
    assert ("<td>mlm</td><td class=\"num\">1</td><td>masked</td><td class=\"num\">3</td>"
            "<td>2.045 [2.035, 2.065]</td>") in s
    assert "<td>0.000 [-0.010, 0.020]</td>" in s  # KL at the last layer
    assert "lm seed 1: 1,234 targets (the next token) in 56 probe sentences" in s
    assert "mlm seed 1: 789 targets (the original token at the masked positions) in 43 probe sentences" in s
    # the models without rows: not measured, each with its reason; the measured ones are not listed so
    assert "Not measured: readout of mt.</strong> an MT encoder has no output head of its own" in s
    assert "Not measured: readout of init.</strong> the step-0 control&#x27;s head is untrained" in s
    assert "readout of lm." not in s and "readout of mlm." not in s
    assert "Settings (analysis.readout)" in s


def test_a_part_record_gives_the_reason_of_a_model_without_rows(tmp_path):
    results = tmp_path / "results"
    _experiment(results)
    part = results / "metrics" / "readout" / "mt" / "seed1.csv"
    write_table(part, "readout", [], {"synthetic": True}, not_measured="the dump says: no head here")
    s = _section(_page(results, tmp_path / "reports"), "readout")
    assert "Not measured: readout of mt.</strong> the dump says: no head here" in s


def test_the_figure_puts_mi_with_the_output_beside_the_lens_in_the_models_colours(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "render", lambda fig, style: drawn.append(fig) or (b"", "image/svg+xml"))
    figures.readout_panels(_readout_rows(), _mi_rows(), ["lm", "mlm"], ["loss", "accuracy", "kl"], 50, Style())
    axes = [ax for ax in drawn[0].axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["MI with the output label (corrected)", "logit lens: loss of the target",
                                               "logit lens: top-1 accuracy", "logit lens: KL(last layer ‖ layer)"]
    for ax, column in zip(axes, ("mi", "loss", "accuracy", "kl")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for objective in ("lm", "mlm"):
            line = lines[objective]
            assert line.get_color() == COLOURS[objective]  # the MI section's colour of the model
            assert list(line.get_xdata()) == list(range(L + 1))
            if column == "loss":
                np.testing.assert_allclose(line.get_ydata(), READOUT[objective][1])
            if column == "mi":
                np.testing.assert_allclose(line.get_ydata(), [1.0 + 0.3 * layer for layer in range(L + 1)])
        assert ax.collections, "the bootstrap interval is drawn as a band"


def test_a_missing_table_says_not_measured_and_why(tmp_path):
    _experiment(tmp_path / "results", readout=False)
    s = _section(_page(tmp_path / "results", tmp_path / "reports"), "readout")
    assert "Not measured: the logit-lens readout.</strong> The readout was not measured" in s
    assert "readout.csv not found" in s and "<img " not in s
    s = _section(_page(tmp_path / "results", tmp_path / "reports2", "dump.readout=false"), "readout")
    assert "dump.readout is false" in s
    only_mt = ["workflow.objectives=[mt]", "workflow.seeds={mt:[1]}"]
    s = _section(_page(tmp_path / "results", tmp_path / "reports3", *only_mt), "readout")
    assert "the experiment has no LM or MLM model" in s and "MT encoder has no output head" in s


@pytest.mark.parametrize("with_readout", [True, False])
def test_the_evolution_section_has_a_readout_heat_map_when_it_has_readout_rows(tmp_path, with_readout):
    _experiment(tmp_path / "results", evolution_readout=with_readout)
    s = _section(_page(tmp_path / "results", tmp_path / "reports"), "evolution")
    heading = "What each layer predicts over training (logit lens)"
    assert (heading in s) is with_readout
    # the distance heat map and the curves over training, plus the readout heat map
    assert s.count("<img ") == 2 + with_readout
    if with_readout:
        assert "lm seed 1: the heat map&#x27;s numbers (readout loss, nats)" in s
        after = s[s.index(heading):]
        # layer 1 at steps 0, 40 and the finished model (step 120): 6.9 - done - 0.25 + 0.001 step
        assert "<td>1</td><td>6.650</td><td>6.357</td><td>5.770</td>" in after.replace(' class="num"', "")

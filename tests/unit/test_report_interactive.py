"""The report's interactive views (analysis/report/interactive.py, explore.js): their data against the tables
they come from, the page's policy, and in a real browser (headless Chromium through Selenium and Debian's
chromedriver): hover, layer pickers, the neighbours explorer, seed toggles, the model matrix, and no network
request with scripts on or off."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time

import numpy as np
import pytest

from analysis.report import interactive
from analysis.report.criteria import Criteria
from analysis.report.estimates import main_clusters
from analysis.report.interactive import classical_mds, complete_subset, examples_data, matrix_data, tsne_data
from analysis.report.stage import run
from pipeline.config.compose import compose
from tests import browser as web
from tests.unit.test_report import EXAMPLE_K, EXAMPLE_SENTENCES, L, _examples_rows

K = EXAMPLE_K
SENTENCES = EXAMPLE_SENTENCES


@pytest.fixture
def page(experiment):
    """The whole synthetic experiment's report (its examples table included; tests/unit/conftest.py):
    (path, results folder)."""
    return experiment[1], experiment[0]


def _views(text: str) -> list[tuple[str, dict]]:
    """(kind, data) of every live view of a page."""
    out = []
    for kind, ident in re.findall(r'<div class="live" data-view="(\w+)" data-src="([\w-]+)"', text):
        block = re.search(rf'<script type="application/json" id="{ident}">(.*?)</script>', text, re.DOTALL)
        out.append((kind, json.loads(block.group(1))))
    return out


# ---------------------------------------------------------------- the data, without a browser

def test_only_the_inline_script_may_run_and_no_data_block_can_end_early(page):
    text = page[0].read_text(encoding="utf-8")
    policy = re.search(r'Content-Security-Policy" content="([^"]+)"', text).group(1)
    scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
    assert len(scripts) == 1  # every other <script> is inert JSON
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "unsafe" not in policy.split("script-src")[1]
    assert "default-src 'none'" in policy
    hostile = interactive.view("tsne", {"sentences": ["</script><script>alert(1)</script> <!--"]}, "x")
    assert hostile.count("</script>") == 1 and "<!--" not in hostile and "<script>" not in hostile
    data = json.loads(re.search(r'application/json" id="[\w-]+">(.*)</script>', hostile).group(1))
    assert data["sentences"][0].startswith("</script>")  # the text itself round-trips


def test_the_curves_on_hover_are_the_tables_values_intervals_seeds_and_n(page):
    results = page[1]
    from analysis.io.tables import read_table

    mi = {(r["objective"], int(r["seed"]), int(r["layer"]), r["target"], int(r["n_clusters"])): r
          for r in read_table(results / "metrics" / "mi.csv", "mi")}
    views = _views(page[0].read_text(encoding="utf-8"))
    curves = [d for kind, d in views if kind == "curves"]
    assert len(curves) >= 6  # MI in, MI out, sweep, similarity, change x2, neighbours, readout ...
    panel = next(p for d in curves for p in d["panels"] if p["title"] == "mt: input")
    series = next(s for s in panel["series"] if s["label"] == "corrected")
    # the figure's cluster count, as the report picks it (the smoke experiment's 50 is not in this table)
    clusters = main_clusters([{"n_clusters": k[4]} for k in mi], Criteria.from_cfg(compose(["experiment=smoke"])))
    seeds = dict(series["seeds"])
    assert set(seeds) == {"seed 1", "seed 2"}
    for seed in (1, 2):
        points = seeds[f"seed {seed}"]
        assert [p[0] for p in points] == list(range(L + 1))
        for x, y, lo, hi, n in points:
            (row,) = [r for k, r in mi.items() if k[:4] == ("mt", seed, int(x), "input") and k[4] == clusters]
            assert y == pytest.approx(float(row["mi_corrected"]), abs=1e-6)
            assert (lo, hi) == (pytest.approx(float(row["corrected_ci_low"]), abs=1e-6),
                                pytest.approx(float(row["corrected_ci_high"]), abs=1e-6))
            assert n == int(row["n_tokens"])
    logs = [p for d in curves for p in d["panels"] if p["log"]]
    assert logs, "the change figures are log-scaled: their live twins too"


def test_tsne_data_keeps_each_occurrence_once_and_scales_every_layer():
    rows = [{"set": "verbs", "objective": "mt", "seed": 1, "layer": layer, "x": float(i * (layer + 1)),
             "y": float(-i), "token": "is" if i % 2 else "are", "position": i % 5, "sentence_id": i, "masked": 0,
             "pieces": "▁a ▁b ▁c ▁d ▁e"} for layer in range(3) for i in range(40)]
    data = tsne_data("verbs", rows, ["mt"], "token", max_points=25)
    (m,) = data["models"]
    assert len(m["tok"]) == 25 and m["layers"] == [0, 1, 2] and data["tokens"] == ["are", "is"]
    assert data["sentences"] == ["▁a ▁b ▁c ▁d ▁e"]  # one sentence, stored once
    for layer in ("0", "1", "2"):
        xy = np.array(m["xy"][layer]).reshape(-1, 2)
        assert xy.min() == 0 and xy.max() == 1000
        # the same occurrences at every layer, in the same order: x grows with the sentence id
        assert list(np.argsort(xy[:, 0], kind="stable")) == list(np.argsort(m["sid"], kind="stable"))


def test_examples_data_lines_up_queries_and_keeps_each_flag():
    rows = [r for r in _examples_rows([("mt", 1), ("lm", 1)])]
    data = examples_data(rows, ["mt", "lm"])
    assert data["k"] == K and data["models"] == ["mt", "lm"] and len(data["queries"]) == 4
    q = next(i for i, q in enumerate(data["queries"]) if q["key"] == "1:are:0")
    assert data["queries"][q]["pos"] == 5 and data["sentences"][data["queries"][q]["sent"]] == SENTENCES[1]
    layers = data["hits"]["mt"][q]
    assert len(layers) == L + 1 and all(len(flat) == 4 * K for flat in layers)
    expected = {r["rank"]: r for r in rows if r["objective"] == "mt" and r["query"] == "1:are:0" and r["layer"] == 2}
    flat = layers[2]
    for rank in range(1, K + 1):
        sent, pos, sim, flags = flat[4 * (rank - 1):4 * rank]
        r = expected[rank]
        assert data["sentences"][sent] == r["pieces"] and pos == r["position"] and sim == pytest.approx(r["similarity"])
        assert flags == r["same_token"] + 2 * r["same_position"] + 4 * r["same_left"] + 8 * r["same_right"]


def test_mds_recovers_a_configuration_and_the_map_leaves_out_a_model_with_missing_pairs():
    points = np.array([[0, 0], [3, 0], [0, 4], [3, 4], [1.5, 2]])
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    xy, stress = classical_mds(d)
    assert stress < 1e-9
    assert np.allclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), d, atol=1e-9)
    missing = np.zeros((4, 4), dtype=bool)
    missing[1, 3] = missing[3, 1] = missing[2, 3] = missing[3, 2] = True
    assert complete_subset(missing) == [0, 1, 2]


def test_a_pair_with_too_few_shared_rows_is_missing_not_a_number():
    models = [("mt", 1), ("lm", 1), ("mlm", 1), ("bert", 0)]
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            if b == ("mlm", 1) and a == ("lm", 1):
                continue  # never measured
            rows.append({"measure": "pwcca", "objective_a": a[0], "seed_a": a[1], "objective_b": b[0],
                         "seed_b": b[1], "layer": 1, "distance": 0.3, "ci_low": 0.29, "ci_high": 0.31,
                         "n_tokens": 500 if "bert" in (a[0], b[0]) else 9000})
    floor = {m: 10 * (768 if m[0] == "bert" else 128) for m in models}
    label = {m: f"{m[0]} {m[1]}" for m in models}
    data = matrix_data(rows, "pwcca", models, label, floor, {}, "layer", "probe token")
    cells = data["cells"]["1"]
    assert cells[0][1][0] == 0.3 and cells[1][0][3] == 9000
    assert cells[1][2][0] is None and "no row" in cells[1][2][4]
    assert cells[0][3][0] is None and "500" in cells[0][3][4] and "7,680" in cells[0][3][4]
    assert all(cells[i][3][0] is None for i in range(3))
    assert "1" not in data["mds"]  # only mt and lm have each other: too few for a map
    rows.append({**rows[0], "objective_a": "lm", "seed_a": 1, "objective_b": "mlm", "seed_b": 1})
    data = matrix_data(rows, "pwcca", models, label, floor, {}, "layer", "probe token")
    assert data["mds"]["1"]["models"] == [0, 1, 2] and data["mds"]["1"]["left_out"] == [3]


def test_interactive_off_gives_the_static_page_without_a_script(tmp_path, page):
    results = page[1]
    cfg = compose(["experiment=smoke", f"paths.results={results}", f"paths.report={tmp_path}",
                   "analysis.report.interactive=false"])
    text = run(cfg).read_text(encoding="utf-8")
    assert "<script" not in text and "script-src" not in text
    live = page[0].read_text(encoding="utf-8")
    assert text.count("<img ") == live.count("<img ")  # the same figures either way


# ---------------------------------------------------------------- in a real browser

browser_only = pytest.mark.skipif(web.missing() is not None, reason=web.missing() or "")


def _hover(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(element).perform()
    tip = driver.find_element("css selector", "div.tip")
    assert tip.is_displayed()
    return tip


@browser_only
def test_in_chromium_hover_pick_and_toggle_with_no_request(page):
    from selenium.webdriver.support.ui import Select

    path = page[0]
    with web.browser() as driver:
        started = time.perf_counter()
        web.open_page(driver, path)
        paint = driver.execute_script(
            "return performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0]")
        views = driver.find_elements("css selector", "div.live[data-view]")
        kinds = sorted({v.get_attribute("data-view") for v in views})
        assert kinds == ["curves", "matrix", "neighbours", "tsne"]
        for v in views:
            web.start_view(driver, v)
        # t-SNE: the static figure gives way; hover names the token and shows its sentence, token marked
        tsne = next(v for v in views if v.get_attribute("data-view") == "tsne")
        figure = tsne.find_element("xpath", "./ancestor::figure")
        assert not figure.find_element("css selector", "img").is_displayed()
        points = tsne.find_elements("css selector", "circle.pt")
        assert len(points) == 48  # 4 words x 12 occurrences, one model at one layer
        tip = _hover(driver, points[5])
        head, detail = tip.find_element("css selector", ".tip-head").text, tip.text
        assert head in ("is", "▁is", "are", "▁are", "was", "▁was", "were", "▁were")
        assert "position" in detail and "sentence" in detail
        assert tip.find_elements("css selector", "mark"), "the token is highlighted in its sentence"
        before = [(p.get_attribute("cx"), p.get_attribute("cy")) for p in points]
        layer = Select(tsne.find_element("css selector", "select.layer"))
        layer.select_by_value("0")
        after = [(p.get_attribute("cx"), p.get_attribute("cy"))
                 for p in tsne.find_elements("css selector", "circle.pt")]
        assert len(after) == len(before) and after != before
        # the explorer: filter, pick an occurrence, see K neighbours at each layer with their flags
        nbrs = next(v for v in views if v.get_attribute("data-view") == "neighbours")
        nbrs.find_element("css selector", "input.search").send_keys("are —")  # the word "are", not "we are"
        options = Select(nbrs.find_element("css selector", "select.occurrences"))
        assert len(options.options) == 2 and all(o.text.startswith("are") for o in options.options)
        options.select_by_index(1)
        cells = nbrs.find_elements("css selector", "td.nbr")
        assert len(cells) == K * (L + 1)
        assert len(nbrs.find_elements("css selector", "tbody tr")) == L + 1
        assert all(c.find_elements("css selector", "mark") for c in cells)
        assert nbrs.find_elements("css selector", ".badges .on")
        # a curve: hover gives value, interval, seed and n; unticking seed 2 hides its curves
        curves = next(v for v in views if v.get_attribute("data-view") == "curves")
        seed2 = curves.find_elements("css selector", ".s1 circle.pt")
        tip = _hover(driver, seed2[0])
        assert "seed 2" in tip.text and "n = " in tip.text and re.search(r"\[[-\d.e]+, [-\d.e]+\]", tip.text)
        curves.find_element("css selector", "input[data-seed='1']").click()
        assert not seed2[0].is_displayed()
        # the matrix: every cell has a tooltip; a measured pair gives its distance and n
        matrix = next(v for v in views if v.get_attribute("data-view") == "matrix")
        tip = _hover(driver, matrix.find_elements("css selector", "rect.cell")[1])
        assert "PWCCA" in tip.text or "missing" in tip.text
        # in print the static figures come back and the live views go
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert figure.find_element("css selector", "img").is_displayed() and not tsne.is_displayed()
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        assert web.console_errors(driver) == []
        asked = web.requests(driver)
        assert asked == [path.resolve().as_uri()], f"the page asked for {asked}"
        print(f"first contentful paint {paint:.0f} ms; browser checks {time.perf_counter() - started:.1f} s")
        assert paint is not None and paint < 2000


@browser_only
def test_in_chromium_without_scripts_the_static_figures_show_and_nothing_is_asked(page):
    path = page[0]
    with web.browser(scripts=False) as driver:
        web.open_page(driver, path)
        assert driver.find_elements("css selector", "div.live[data-view]")
        assert not any(v.is_displayed() for v in driver.find_elements("css selector", "div.live"))
        images = driver.find_elements("css selector", "figure img")
        assert images and all(i.is_displayed() for i in images)
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        assert any(n.is_displayed() for n in driver.find_elements("css selector", "p.note"))
        assert web.requests(driver) == [path.resolve().as_uri()]


@browser_only
def test_the_request_log_would_see_a_page_that_fetches(tmp_path):
    """The check above can fail: a page that loads an image from an address shows up in the log."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>')
    with web.browser() as driver:
        web.open_page(driver, leaky)
        time.sleep(0.5)
        assert any("example.invalid" in url for url in web.requests(driver))


def test_tooltip_values_keep_six_places_and_drop_what_is_not_a_number():
    """explore.js prints values to 3-4 places; the JSON keeps 6 (a tooltip never shows more than the table)."""
    assert interactive._finite(1 / 3) == 0.333333 and interactive._finite(float("nan")) is None
    assert interactive._finite("x") is None and math.isclose(interactive._finite(2.0), 2.0)

"""The HTML report (analysis.report) built from small synthetic experiments: every section and the claim
table are there, missing or malformed inputs become "not measured" notes, the page fetches nothing,
and (where Chromium is installed) a headless browser renders every figure without console errors."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from analysis.io.tables import REPLICATED, REPLICATES, pair_kind, write_table
from analysis.report.stage import build, run
from pipeline.config.compose import compose
from pipeline.config.stages import report_config
from pipeline.errors import PipelineError
from pipeline.records.files import write_json

REPO = Path(__file__).resolve().parents[2]
L = 3  # layers of the smoke experiment's tiny model
GRID = [("mt", 1), ("mt", 2), ("lm", 1), ("lm", 2), ("mlm", 1), ("mlm", 2), ("mt_td", 1), ("lm_td", 1)]
BUCKETS = ["1-10", "10-25", "25-50", "50-100"]
FULL = [*GRID, ("init", 1), ("init", 2)]  # with the step-0 control of both seeds (dumped and measured, not trained)
SECTIONS = ["setup", "convergence", "claims", "mi", "readout", "similarity", "change", "influence", "neighbours", "tsne",
            "evolution", "provenance"]


# ---------------------------------------------------------------- a synthetic, study-shaped experiment

def _mi_rows(grid):
    input_mi = {"mt": [5.2, 5.1, 5.0, 4.8], "lm": [5.3, 5.1, 4.7, 4.0], "mlm": [5.2, 4.9, 4.8, 5.0],
                "mt_td": [5.2, 5.1, 4.9, 4.7], "lm_td": [5.3, 5.0, 4.6, 4.1], "init": [5.2, 4.6, 4.1, 3.7]}
    extra = {("lm", "output"): [1.8, 2.0, 2.2, 2.35], ("mlm", "output"): [0.7, 1.2, 1.8, 2.4],
             ("mlm", "input_masked"): [6.9, 4.0, 2.0, 0.9]}
    rows = []
    for objective, seed in grid:
        curves = {"input": input_mi[objective], **{t: c for (o, t), c in extra.items() if o == objective}}
        for target, curve in curves.items():
            for k in ([500, 100, 1000] if seed == 1 else [500]):
                for layer, value in enumerate(curve):
                    corrected = value * (1 + 0.02 * float(np.log(k / 500))) + 0.004 * seed
                    chance = 0.3 * k / 500
                    rows.append({"objective": objective, "seed": seed, "layer": layer, "target": target,
                                 "n_clusters": k, "mi": corrected + chance, "mi_shuffled": chance,
                                 "mi_corrected": corrected, "n_tokens": 4000})
    return rows


def _similarity_rows(grid):
    slope = {("mlm", "mt"): (0.42, 0.03), ("lm", "mt"): (0.45, 0.05), ("lm", "mlm"): (0.43, 0.05)}
    rows = []
    for i, (a, sa) in enumerate(grid):
        for b, sb in grid[i + 1:]:
            if a == b:
                start, step = 0.25, 0.02
            elif tuple(sorted((a, b))) in slope:
                start, step = slope[tuple(sorted((a, b)))]
            elif "init" in (a, b):
                start, step = 0.05, 0.08
            else:
                continue
            for measure, scale in (("pwcca", 1.0), ("svcca", 0.9), ("cka", 0.6)):
                for layer in range(1, L + 1):
                    rows.append({"measure": measure, "pair": pair_kind((a, sa), (b, sb)),
                                 "objective_a": a, "seed_a": sa, "objective_b": b, "seed_b": sb,
                                 "layer": layer, "distance": scale * (start + step * layer + 0.003 * (sa + sb)),
                                 "shuffled": 0.9 * scale, "n_tokens": 3000})
    return rows


def _change_rows(grid):
    curves = {"mt": [0.064, 0.05, 0.039], "lm": [0.08, 0.09, 0.085], "mlm": [0.07, 0.06, 0.1],
              "mt_td": [0.06, 0.05, 0.04], "lm_td": [0.08, 0.085, 0.08], "init": [0.03, 0.03, 0.03]}
    rows = []
    for objective, seed in grid:
        for layer_to, value in enumerate(curves[objective], start=1):
            for i, bucket in enumerate(["all", *BUCKETS]):
                rows.append({"measure": "pwcca", "objective": objective, "seed": seed, "layer_from": layer_to - 1,
                             "layer_to": layer_to, "bucket": bucket,
                             "distance": value * (1 + 0.1 * i) + 0.001 * seed, "shuffled": 0.8, "n_tokens": 2000})
    return rows


def _influence_rows(grid):
    rarest = {"mt": 0.006, "lm": 0.005, "mlm": 0.002, "mt_td": 0.0022, "lm_td": 0.0021, "init": 0.002}
    rows = []
    for objective, seed in grid:
        for layer in range(1, L + 1):
            for i, bucket in enumerate(BUCKETS):
                value = rarest[objective] / layer if i == len(BUCKETS) - 1 else 0.002 - 0.0001 * i
                rows.append({"measure": "pwcca", "objective": objective, "seed": seed, "layer": layer,
                             "bucket": bucket, "affected": "later" if objective.startswith("lm") else "all",
                             "distance": value + 0.0001 * seed, "shuffled": 0.85, "n_pairs": 900,
                             "n_influencers": 150})
    return rows


def _neighbour_rows(grid):
    ends = {("mt", "identity"): (0.99, 0.915), ("lm", "identity"): (0.99, 0.77), ("mlm", "identity"): (0.99, 0.97),
            ("mt", "position"): (1.3, 4.5), ("lm", "position"): (2.7, 7.8), ("mlm", "position"): (2.4, 8.0)}
    rows = []
    for objective, seed in grid:
        for prop in ("identity", "position", "left_token", "right_token"):
            first, last = ends.get((objective.split("_")[0], prop), (0.3, 0.2))
            for layer in range(L + 1):
                rows.append({"objective": objective, "seed": seed, "layer": layer, "property": prop, "k": 50,
                             "metric": "cosine", "value": first + (last - first) * layer / L, "n_queries": 300})
    return rows


def _tsne_rows(grid, rng):
    rows = []
    for objective, seed in grid:
        for name in ("verbs", "verbs_masked", "it"):
            if name == "verbs_masked" and objective != "mlm":
                continue
            for layer in range(L + 1):
                for i, token in enumerate(["▁is", "▁are", "▁was", "▁were"] if name != "it" else ["▁it"] * 4):
                    for j in range(12):  # occurrence j of the i-th word: at position j of sentence 12 i + j
                        pieces = " ".join(["▁we"] * j + [token] + ["▁here"])
                        rows.append({"set": name, "objective": objective, "seed": seed, "layer": layer,
                                     "x": i * 5 + float(rng.normal()), "y": float(rng.normal()), "token": token,
                                     "position": j, "sentence_id": 12 * i + j,
                                     "masked": (j % 4) if name == "verbs_masked" else 0, "pieces": pieces})
    return rows


EXAMPLE_K = 3
EXAMPLE_SENTENCES = {s: f"▁Tom ▁is ▁here ▁and ▁we ▁are ▁{s}" for s in range(12)}  # "is" at 1, "are" at 5


def _examples_rows(grid):
    """The neighbours explorer's table for the first seed of each model: two queries of "is" and of "are";
    neighbour r of query q at layer l sits in sentence (q + r + l) % 12, at the query's position when r is odd
    (same token and position), else at position 6."""
    rows = []
    for objective, seed in [(o, s) for o, s in grid if s == 1]:
        for q, (word, sid) in enumerate([(w, s) for w in ("is", "are") for s in (0, 1)]):
            pos = 1 if word == "is" else 5
            for layer in range(L + 1):
                base = {"objective": objective, "seed": seed, "layer": layer, "query": f"{sid}:{word}:0", "word": word}
                rows.append({**base, "rank": 0, "sentence_id": sid, "position": pos, "token": f"▁{word}",
                             "similarity": 1.0, "same_token": 1, "same_position": 1, "same_left": 1, "same_right": 1,
                             "pieces": EXAMPLE_SENTENCES[sid]})
                for rank in range(1, EXAMPLE_K + 1):
                    other, npos = (q + rank + layer) % 12, pos if rank % 2 else 6
                    rows.append({**base, "rank": rank, "sentence_id": other, "position": npos,
                                 "token": EXAMPLE_SENTENCES[other].split(" ")[npos], "similarity": 0.9 - 0.1 * rank,
                                 "same_token": int(npos == pos), "same_position": rank % 2, "same_left": 0,
                                 "same_right": int(rank == 1), "pieces": EXAMPLE_SENTENCES[other]})
    return rows


EVOLUTION_STEPS = (0, 40, 80)  # the kept steps of mt, lm and mlm seed 1; their finished model is step 120


def _evolution_rows(grid):
    """mt, lm and mlm seed 1 over training: at each kept step the values of the tables above moved
    from the step-0 control's by the share of training done; the distance to the finished model
    falls with training and is smaller in lower layers (which settle first)."""
    mi = {(r["objective"], r["layer"], r["target"]): r for r in _mi_rows(grid) if r["seed"] == 1
          and r["n_clusters"] == 500}
    change = {(r["objective"], r["layer_to"]): r["distance"] for r in _change_rows(grid)
              if r["seed"] == 1 and r["bucket"] == "all"}
    nbrs = {(r["objective"], r["layer"], r["property"]): r["value"] for r in _neighbour_rows(grid) if r["seed"] == 1}
    rows = []
    for objective in [o for o in ("mt", "lm", "mlm") if (o, 1) in grid]:
        for step, final in (*((s, 0) for s in EVOLUTION_STEPS), (120, 1)):
            done = step / 120

            def row(quantity, measure, target, layer, value):
                rows.append({"objective": objective, "seed": 1, "step": step, "final": final, "quantity": quantity,
                             "measure": measure, "target": target, "layer": layer, "value": value,
                             "ci_low": value - 0.005, "ci_high": value + 0.005, "n_tokens": 2000})

            for layer in range(L + 1):
                for measure in ("pwcca", "cka"):
                    row("to_final", measure, "final", layer, 0.3 * (1 - done) * (layer + 1) / (L + 1))
                for prop in ("identity", "position", "left_token", "right_token"):
                    start = nbrs.get(("init", layer, prop), 0.3)
                    row("neighbours", prop, "", layer, start + (nbrs[objective, layer, prop] - start) * done)
                if layer:
                    start = change.get(("init", layer), change[objective, layer])
                    for measure in ("pwcca", "cka"):
                        row("change", measure, "all", layer, start + (change[objective, layer] - start) * done)
                for (o, lay, target), r in mi.items():
                    if o == objective and lay == layer:
                        start = mi.get(("init", layer, target), r)
                        corrected = start["mi_corrected"] + (r["mi_corrected"] - start["mi_corrected"]) * done
                        row("mi", "plugin", target, layer, corrected + r["mi_shuffled"])
                        row("mi", "corrected", target, layer, corrected)
    return rows


def with_replicates(rows: list[dict], table: str, rng: np.random.Generator, sd: float = 1e-4,
                    resamples: int = 20) -> list[dict]:
    """Each row's bootstrap replicates (its estimate plus independent noise of sd `sd`) and the normal
    intervals they give, as a measurement writes them."""
    for row in rows:
        for column in REPLICATED[table]:
            reps = row[column] + sd * rng.normal(size=resamples)
            prefix = "corrected_" if column == "mi_corrected" else ""
            row.update({f"{prefix}ci_low": row[column] - 1.96 * sd, f"{prefix}ci_high": row[column] + 1.96 * sd})
            row.setdefault(REPLICATES, {})[column] = reps
    return rows


TABLE_ROWS = {"mi": _mi_rows, "similarity": _similarity_rows, "change": _change_rows,
              "influence": _influence_rows, "neighbours": _neighbour_rows, "evolution": _evolution_rows}


def write_experiment(results: Path, tables=("similarity", "change", "influence", "mi", "neighbours", "tsne",
                                           "evolution", "examples"),
                     models: bool = True, grid=GRID, falling=()) -> None:
    """A finished run of `grid` under `results`: tables, summaries, logs, records, benchmarks. Every
    dev loss has levelled off by the last quarter (converged) but for the models in `falling`."""
    rng = np.random.default_rng(0)
    for name in tables:
        rows = (_tsne_rows(grid, rng) if name == "tsne" else _examples_rows(grid) if name == "examples"
                else with_replicates(TABLE_ROWS[name](grid), name, rng))
        write_table(results / "metrics" / f"{name}.csv", name, rows, {"synthetic": True}, time.perf_counter())
    if not models:
        return
    write_json(results / "data" / "stage.json", {"stage": "data", "archive_sha256": "ab" * 32,
                                                 "counts": {"train_pairs": 3600, "probe_sentences": 200},
                                                 "config": {"data": {"name": "tatoeba-deu-eng", "max_len": 48}}})
    write_json(results / "tokenizer" / "stage.json", {"stage": "tokenizer", "vocab_size": 1000})
    quality = {"mt": {"bleu": 3.2}, "lm": {"perplexity": 80.0}, "mlm": {"accuracy": 0.21}}
    for objective, seed in grid:
        if objective == "init":  # the step-0 control: a dump, no training
            write_json(results / "dumps" / objective / f"seed{seed}" / "meta.json",
                       {"n_tokens": 2100, "n_layers": L, "objective": objective, "seed": seed, "kind": "init"})
            continue
        kind = objective.split("_")[0]
        folder = results / "models" / objective / f"seed{seed}"
        dev = [6.0, 5.2, 4.4] if (objective, seed) in falling else [6.0, 4.5, 4.49]
        write_json(folder / "summary.json", {"objective": objective, "kind": kind, "seed": seed, "steps": 120,
                                             "best_step": 120, "stop_reason": "max_steps", "wall_time_s": 30.5,
                                             "device": "cpu", "dev": {"loss": 4.5, **quality[kind]}})
        (folder / "log.jsonl").write_text("".join(
            json.dumps({"step": s, "train_loss": 7 - s / 40, "dev_loss": d}) + "\n"
            for s, d in zip((40, 80, 120), dev)))
        write_json(results / "dumps" / objective / f"seed{seed}" / "meta.json",
                   {"n_tokens": 2100, "n_layers": L, "objective": objective, "seed": seed})
        for stage in ("train", "dump", "mi"):
            bench = results / "benchmarks" / stage / objective / f"seed{seed}.tsv"
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                             "12.5\t0:00:12\t512.0\t900.0\t400.0\t450.0\t1.0\t2.0\t95.0\t11.0\n")
    (results / "benchmarks" / "prepare.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n4.0\t0:00:04\tNA\t3.0\n")


# The whole synthetic experiment and its report: the fixture `experiment` (tests/unit/conftest.py).


def _cfg(results: Path, reports: Path, *overrides: str):
    return compose(["experiment=smoke", f"paths.results={results}", f"paths.report={reports}", *overrides])


class _Page(HTMLParser):
    """Sections, images, claim rows and every URL-bearing attribute of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.images, self.urls, self.tags, self.verdicts = [], [], [], [], []
        self._verdict = False
        self.feed(text)
        self.close()  # flush: the script at the end of the body is only parsed on close

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs)
        self.urls += [(tag, k, v) for k, v in attrs.items() if k in ("src", "href", "srcset", "data", "action")]
        self._verdict = tag == "span" and "verdict" in (attrs.get("class") or "")

    def handle_data(self, data):
        if self._verdict:
            self.verdicts.append(data)
            self._verdict = False


# ---------------------------------------------------------------- what the report holds

def test_report_has_every_section_figure_and_the_claim_table(experiment):
    results, path, _ = experiment
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    assert page.ids == SECTIONS
    for anchor in SECTIONS:
        assert f'href="#{anchor}"' in text, f"table of contents lacks {anchor}"
    # training curves, dev loss per model, MI input/output/sweep, similarity, change all/by bucket, influence,
    # neighbours, 3 t-SNE sets, the heat maps and the curves over training
    assert len(page.images) == 15
    assert all(img["src"].startswith("data:image/svg+xml;base64,") and img["alt"] for img in page.images)
    assert page.verdicts == ["holds"] * 7, "the study-shaped synthetic run satisfies every claim"
    readout = text[text.index('<section id="readout">'):text.index('<section id="similarity">')]
    assert "Not measured" not in text.replace(readout, "")  # no readout table here (tests/unit/test_report_readout.py)
    for expected in ("5.30 → 3.97", "BLEU", "perplexity", "masked accuracy", "git commit", "matplotlib",
                     "peak RSS", "experiment_name: smoke", "tatoeba-deu-eng"):
        assert expected in text, expected


def test_the_report_writes_claims_csv_and_its_claim_table_is_that_file(experiment):
    """metrics/claims.csv: every judged contrast with its interval, level and verdicts, readable as a plain
    CSV, with its record; the page's verdicts and reasons are the file's."""
    import csv

    results, path, _ = experiment
    table = results / "metrics" / "claims.csv"
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    record = json.loads(table.with_suffix(".json").read_text())
    assert record["table"] == "claims" and set(record["outputs"]) == {"claims.csv"}
    assert {r["claim"] for r in rows} == {str(n) for n in range(1, 8)}
    assert all(r["basis"] == "paired bootstrap replicates" and float(r["ci_low"]) <= float(r["estimate"])
               <= float(r["ci_high"]) and r["outcome"] == "above" for r in rows if r["seed_verdict"] == "holds"
               and "rise" not in r["contrast"])
    assert {r["n"] for r in rows if r["claim"] == "1"} == {"4000"}  # every contrast says its sample size
    first = {r["claim"]: r for r in reversed(rows)}
    claims_html = _claim_rows(path.read_text(encoding="utf-8"))
    for number, row in claims_html.items():
        assert html.escape(first[str(number)]["reason"], quote=True) in row
        assert f'>{first[str(number)]["verdict"]}</span>' in row
    text = path.read_text(encoding="utf-8")
    assert "Claim 4: its" in text and "Bonferroni" in text and "How each verdict is decided" in text


def test_provenance_sums_benchmark_wall_time_per_stage(experiment):
    text = experiment[1].read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td>(\w+)</td><td class=\"num\">(\d+)</td><td class=\"num\">([\d.,]+)</td>"
                      r"<td>([\d:]+)</td>", text)
    # 8 jobs of 12.5 s for each of train, dump, mi; prepare 4 s; in pipeline order
    assert rows == [("prepare", "1", "4.000", "0:00:04"), ("train", "8", "100.0", "0:01:40"),
                    ("dump", "8", "100.0", "0:01:40"), ("mi", "8", "100.0", "0:01:40"),
                    ("total", "25", "304.0", "0:05:04")]
    assert "512.0" in text  # peak RSS (MB)


def test_report_requests_nothing_from_the_network(experiment):
    text = experiment[1].read_text(encoding="utf-8")
    page = _Page(text)
    for tag, attr, value in page.urls:
        assert value.startswith(("data:", "#")), f"<{tag} {attr}={value[:60]!r}> would be fetched"
    assert not {"link", "iframe", "object", "embed", "base"} & set(page.tags)
    # scripts: the one inline script of the live views (no src: page.urls has none) and inert JSON data blocks
    assert len(re.findall(r"<script>", text)) == 1
    assert page.tags.count("script") == 1 + text.count('<script type="application/json"')
    assert "url(" not in text.split("</style>")[0], "the stylesheet loads nothing"
    assert "default-src 'none'" in text  # the page forbids itself any request


def test_report_replaces_the_old_one_atomically(tmp_path):
    (tmp_path / "results").mkdir()
    old = tmp_path / "reports" / "report.html"
    old.parent.mkdir()
    old.write_text("old")
    assert run(_cfg(tmp_path / "results", tmp_path / "reports")) == old
    assert old.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in old.parent.iterdir()) == ["report.html", "report.json"], \
        "no temporary file left behind (report.json: the page's record)"


def test_report_config_leaves_out_runtime_settings():
    cfg = compose(["experiment=smoke"])
    plain = report_config(cfg)
    assert "hydra" not in plain and "device" not in plain["train"] and "progress" not in plain["train"]
    assert report_config(compose(["experiment=smoke", "train.threads=3"])) == plain
    assert report_config(compose(["experiment=smoke", "analysis.report.claims.mi_tolerance=0.1"])) != plain


# ---------------------------------------------------------------- missing and malformed inputs

def test_report_without_any_input_says_not_measured(tmp_path):
    (tmp_path / "results").mkdir()
    text = build(_cfg(tmp_path / "results", tmp_path / "reports"), probe_hardware=False)
    page = _Page(text)
    assert page.ids == SECTIONS
    assert page.verdicts == ["not measured"] * 7
    assert page.images == []
    for name in ("mi", "similarity", "change", "influence", "neighbours", "tsne", "evolution"):
        assert f"metrics/{name}.csv not found" in text
    assert "not trained" in text and "no benchmark files" in text


def test_missing_tables_only_blank_their_sections(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, tables=("similarity", "change", "influence", "neighbours"))
    text = build(_cfg(results, tmp_path / "reports"), probe_hardware=False)
    page = _Page(text)
    mi = text[text.index('<section id="mi">'):text.index('<section id="similarity">')]
    assert "Not measured: mutual information" in mi and "mi.csv not found" in mi
    assert "Not measured: t-SNE pictures" in text
    assert len(page.images) == 1 + 1 + 1 + 2 + 1 + 1  # training, dev loss, similarity, change x2, influence, neighbours
    assert page.verdicts[:3] == ["not measured"] * 3  # the MI claims
    assert page.verdicts[3:] == ["holds"] * 4


def test_malformed_table_is_named_not_raised(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, tables=("change",), models=False)
    (results / "metrics" / "mi.csv").write_text("objective,seed,layer\nlm,1,0\n")
    bad = results / "metrics" / "neighbours.csv"
    bad.write_text("objective,seed,layer,property,k,metric,value,n_queries\nlm,1,zero,identity,50,cosine,0.9,10\n")
    text = build(_cfg(results, tmp_path / "reports"), probe_hardware=False)
    assert "mi.csv, line 1: expected the columns" in text
    assert "neighbours.csv, line 2: column layer holds &#x27;zero&#x27;, not a number" in text


def test_one_model_and_a_failed_estimate(tmp_path):
    """A grid of one LM: the LM claim is checked, the others need more models; a NaN is left out."""
    results = tmp_path / "results"
    write_experiment(results, grid=[("lm", 1)])
    rows = _mi_rows([("lm", 1)])
    rows[0]["mi_corrected"] = float("nan")
    write_table(results / "metrics" / "mi.csv", "mi", rows, {})
    cfg = _cfg(results, tmp_path / "reports", "workflow.objectives=[lm]", "workflow.seeds={lm:[1]}")
    text = build(cfg, probe_hardware=False)
    page = _Page(text)
    assert page.verdicts == ["holds"] + ["not measured"] * 6
    assert "similarity.csv has no rows" in text  # one seed: no pair to compare
    # training, dev loss, MI x3, change x2, influence, neighbours, t-SNE verbs and it, LM's evolution x2
    assert len(page.images) == 13
    assert "Not measured: t-SNE set verbs_masked" in text


def test_buckets_below_the_floor_are_named_with_their_n_and_the_floor(tmp_path):
    """The parts' records name the buckets each model left out; the report says which, their n, the
    floor, and for which models; a configured bucket no record names is still listed."""
    results = tmp_path / "results"
    write_experiment(results, tables=("change", "influence"), models=False)
    gone = {"bucket": "100-250", "n": 700, "floor": 1280, "reason": "700 tokens < floor 1280"}
    parts = [{"part": f"change/{o}/seed{s}.csv", "model": f"{o}/seed{s}", "floor": 1280, "left_out": [gone]}
             for o, s in GRID]
    write_table(results / "metrics" / "change.csv", "change", _change_rows(GRID), {}, parts=parts)
    few = {"bucket": "100-250", "n": 5000, "floor": 1280, "reason": "60 influencing tokens < "
           "analysis.influence.min_influencers = 100"}
    write_table(results / "metrics" / "influence.csv", "influence", _influence_rows(GRID), {},
                parts=[{"part": "influence/mt/seed1.csv", "model": "mt/seed1", "floor": 1280, "left_out": [few]}])
    text = build(_cfg(results, tmp_path / "reports", "analysis.buckets=[1,10,25,50,100,250]"), probe_hardware=False)
    assert ("Buckets left out (each estimate needs at least analysis.min_samples_per_dim = "
            f"{compose(['experiment=smoke']).analysis.min_samples_per_dim} samples per feature): "
            "100-250: 700 tokens &lt; floor 1280 (every model).") in text
    assert "100-250: 60 influencing tokens &lt; analysis.influence.min_influencers = 100 (mt/seed1)" in text
    assert "rows shuffled" in text and "Tokens affected: all (mt, mlm, mt_td); later (lm, lm_td)." in text


def test_a_failing_claim_is_shown_as_failing(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, tables=("similarity",), models=False)
    rows = _similarity_rows(GRID)
    for row in rows:  # seed baselines above every cross-task distance
        if row["objective_a"] == row["objective_b"]:
            row["distance"] = 0.9
    write_table(results / "metrics" / "similarity.csv", "similarity", rows, {})
    page = _Page(build(_cfg(results, tmp_path / "reports"), probe_hardware=False))
    assert page.verdicts[3] == "does not hold"


def test_step0_control_is_a_reference_not_a_trained_model(experiment):
    text = experiment[1].read_text(encoding="utf-8")
    setup = text[text.index('<section id="setup">'):text.index('<section id="convergence">')]
    assert "step-0 control" in setup and "init seed" not in setup  # no dev quality, never "not trained"
    similarity = text[text.index('<section id="similarity">'):text.index('<section id="change">')]
    for label in ("same_init", "different_init", "seed_baseline", "init–mt", "init seeds"):
        assert f"<td>{label}</td>" in similarity, label
    assert "untrained stack" in text[text.index('<section id="mi">'):text.index('<section id="similarity">')]


def _claim_rows(text: str) -> dict[int, str]:
    claims = text[text.index('<section id="claims">'):text.index('<section id="mi">')]
    return {int(n): row for n, row in re.findall(r'<tr><td class="num">(\d)</td>(.*?)</tr>', claims, re.DOTALL)}


def test_unconverged_model_is_flagged_beside_every_claim_that_reads_it(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, falling={("lm", 2)})
    text = build(_cfg(results, tmp_path / "reports"), probe_hardware=False)
    rows = _claim_rows(text)
    assert sorted(rows) == list(range(1, 8))
    flagged = {n for n, row in rows.items() if "not converged: lm seed 2" in row}
    assert flagged == {1, 3, 4, 6, 7}  # every claim reading LM; 2 (MLM) and 5 (MT, MLM) do not
    assert all("not converged" not in rows[n] and "converged" in rows[n] for n in (2, 5))
    convergence = text[text.index('<section id="convergence">'):text.index('<section id="claims">')]
    assert "lm seed 2: NOT converged" not in convergence  # the titles are inside the figure
    assert convergence.count("<td>NO</td>") == 1 and convergence.count("<td>yes</td>") == len(GRID) - 1
    assert "15.38%" in convergence  # (5.2 - 4.4) / 5.2: the last quarter's improvement


def test_converged_models_raise_no_flag(experiment):
    rows = _claim_rows(experiment[1].read_text(encoding="utf-8"))
    assert not any("not converged" in row for row in rows.values())


def test_png_figures_and_fewer_tsne_layers(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, tables=("tsne",), models=False)
    cfg = _cfg(results, tmp_path / "reports", "analysis.report.figure_format=png", "analysis.report.tsne_layers=[0,3]")
    page = _Page(build(cfg, probe_hardware=False))
    assert len(page.images) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in page.images)


@pytest.mark.parametrize("override,key", [("analysis.report.figure_format=jpg", "figure_format"),
                                          ("analysis.report.claims.mi_tolerance=-1", "mi_tolerance"),
                                          ("analysis.report.tsne_layers=[a]", "tsne_layers")])
def test_bad_settings_are_named(tmp_path, override, key):
    (tmp_path / "results").mkdir()
    with pytest.raises(PipelineError, match=key):
        build(_cfg(tmp_path / "results", tmp_path / "reports", override), probe_hardware=False)


def test_missing_results_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist: run the workflow first"):
        run(_cfg(tmp_path / "nowhere", tmp_path / "reports"))


def test_command_line_entry_point(tmp_path):
    results = tmp_path / "results"
    write_experiment(results, tables=("mi",), models=False)
    cmd = [sys.executable, "-m", "analysis.report", "experiment=smoke", f"paths.results={results}",
           f"paths.report={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="claims"' in html and 'id="mi"' in html and "<img" in html  # the claim table, MI and its figures
    bad = subprocess.run([*cmd[:-3], f"paths.results={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'h2'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: paths.results=" in bad.stderr


# ---------------------------------------------------------------- in a real browser, offline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Injected into a copy of the report: after load, record every image's rendered size, every resource
# the page requested, every blocked request and every error, into a <pre id="check"> as JSON.
CHECK = """<script>
const seen = {errors: [], blocked: []};
window.addEventListener('error', e => seen.errors.push(String(e.message || (e.target && e.target.src) || e)), true);
document.addEventListener('securitypolicyviolation', e => seen.blocked.push(e.blockedURI));
const error = console.error; console.error = (...a) => { seen.errors.push(a.join(' ')); error(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const images = [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.getBoundingClientRect().width]);
  const requests = performance.getEntriesByType('resource').map(r => r.name);
  const out = document.createElement('pre'); out.id = 'check';
  out.textContent = JSON.stringify({images, requests, ...seen});
  document.body.appendChild(out);
}, 50));
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1366,900"]


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def _browser_check(report: Path, tmp: Path) -> tuple[dict, str]:
    """Open a copy of `report` with CHECK injected (the page's policy still forbids every request;
    only the inline check may run); returns what CHECK saw and Chromium's log."""
    text = report.read_text(encoding="utf-8")
    text = text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    (tmp / "checked.html").write_text(text.replace("</body>", CHECK + "</body>", 1), encoding="utf-8")
    done = _chromium(tmp / "checked.html", tmp / "profile", "--dump-dom")
    match = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"the check did not run: {done.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1))), done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_renders_every_figure_offline(experiment, tmp_path):
    started = time.perf_counter()
    seen, log = _browser_check(experiment[1], tmp_path)
    figures = experiment[1].read_text(encoding="utf-8").count("<img ")
    assert figures >= 13 and len(seen["images"]) == figures  # every section's figure, convergence included
    for alt, complete, natural, shown in seen["images"]:
        assert complete and natural > 0 and shown > 0, f"figure {alt!r} did not render"
    assert seen["requests"] == [] and seen["blocked"] == [], "the page asked for something"
    assert seen["errors"] == [] and "Uncaught" not in log
    shot = tmp_path / "shot.png"
    done = _chromium(experiment[1], tmp_path / "profile2", f"--screenshot={shot}")
    assert shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (900, 1366) and pixels.std() > 5, "the screenshot is blank"
    print(f"chromium checks took {time.perf_counter() - started:.1f} s")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_browser_check_catches_a_network_request(experiment, tmp_path):
    """The check above would see a page that loads something from an address."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text(experiment[1].read_text(encoding="utf-8").replace(
        "</main>", '<img alt="remote" src="http://example.invalid/x.png"></main>', 1), encoding="utf-8")
    seen, _ = _browser_check(leaky, tmp_path)
    assert seen["blocked"] or seen["requests"]
    assert any(natural == 0 for _, _, natural, _ in seen["images"])


# ---------------------------------------------------------------- the Snakemake rule

MINI_SNAKEFILE = """from snakemake.utils import validate
configfile: "workflow/config.yaml"
validate(config, "schemas/config.schema.json")
include: "rules/common.smk"
include: "rules/report.smk"
"""


def test_snakemake_rule_makes_the_report_and_flags_it(tmp_path):
    """workflow/rules/report.smk in a Snakefile of its own: the rule runs the report on finished tables,
    its config hash reruns it when a report setting changes, and `snakemake --report` includes the page."""
    pytest.importorskip("snakemake")
    for name in ("conf", "pipeline", "analysis"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    (tmp_path / "workflow").mkdir()
    for name in ("rules", "schemas", "report", "config.yaml"):
        (tmp_path / "workflow" / name).symlink_to(REPO / "workflow" / name)
    (tmp_path / "workflow" / "Snakefile").write_text(MINI_SNAKEFILE)
    write_experiment(tmp_path / "results" / "smoke", models=False)
    # the grid's LM and MLM models have a readout (pipeline.plan.READOUT_KINDS): its table is an input too
    write_table(tmp_path / "results" / "smoke" / "metrics" / "readout.csv", "readout",
                [{"objective": "lm", "seed": 1, "layer": 0, "lens": "logit", "quantity": "loss", "target": "next", "value": 5.0,
                  "ci_low": 4.9, "ci_high": 5.1, "n_tokens": 100, "n_sentences": 10}], {"synthetic": True})
    # and the neighbours explorer's examples (analysis.measures.examples)
    write_table(tmp_path / "results" / "smoke" / "metrics" / "examples.csv", "examples",
                [{"objective": "lm", "seed": 1, "layer": 0, "query": "0:is:0", "word": "is", "rank": 0, "sentence_id": 0,
                  "position": 1, "token": "▁is", "similarity": 1.0, "same_token": 1, "same_position": 1,
                  "same_left": 1, "same_right": 0, "pieces": "▁it ▁is"}], {"synthetic": True})

    def snakemake(*args: str, overrides: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        # no model keeps snapshots: this Snakefile has no rule for the evolution table
        overrides = ("snapshots.models=null", *overrides)
        cmd = [sys.executable, "-m", "snakemake", "report", "--cores", "1", *args, "--config", "experiment=smoke",
               f"overrides={json.dumps(list(overrides))}"]
        done = subprocess.run(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-4000:]
        return done.stdout

    snakemake()
    assert (tmp_path / "reports" / "smoke" / "report.html").is_file()
    assert (tmp_path / "reports" / "smoke" / "hydra" / ".hydra" / "config.yaml").is_file()
    assert "wrote reports/smoke/report.html" in (tmp_path / "logs" / "smoke" / "report.log").read_text()
    assert (tmp_path / "results" / "smoke" / "benchmarks" / "report.tsv").is_file()
    assert "Nothing to be done" in snakemake("-n")
    assert "Nothing to be done" in snakemake("-n", overrides=("train.progress=false",))
    rerun = snakemake("-n", overrides=("analysis.report.claims.mi_tolerance=0.05",))
    assert re.search(r"report\s+1", rerun), rerun
    snakemake("--report", str(tmp_path / "snakemake_report.html"))
    assert "seven claims" in (tmp_path / "snakemake_report.html").read_text(encoding="utf-8")


def test_captions_render_as_snakemake_renders_them():
    """Jinja then reStructuredText, as `snakemake --report` does: the merge rule's one caption file
    (metrics.rst, keyed on its wildcard) describes each table, similarity.rst and report.rst stand alone."""
    jinja2, core = pytest.importorskip("jinja2"), pytest.importorskip("docutils.core")
    folder = REPO / "workflow" / "report"
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

    def render(name: str, **wildcards) -> str:
        text = env.from_string((folder / name).read_text()).render(snakemake={"wildcards": wildcards})
        return core.publish_parts(text, writer="html", settings_overrides={"report_level": 2,
                                                                         "halt_level": 2})["body"]

    texts = {m: render("metrics.rst", measure=m) for m in ("change", "influence", "mi", "neighbours", "tsne", "examples")}
    for measure, word in (("change", "adjacent layers"), ("influence", "attention key"), ("mi", "k-means"),
                          ("neighbours", "share of its"), ("tsne", "t-SNE"), ("examples", "explorer")):
        assert word in texts[measure] and sum(word in t for t in texts.values()) == 1
    assert "seed baselines" in render("similarity.rst") and "seven claims" in render("report.rst")

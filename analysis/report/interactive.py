"""The report's interactive views, still one self-contained page that fetches nothing: each view is a
<div class="live"> with its data in an inert <script type="application/json"> block beside it, drawn by the one
inline script `explore.js` (allowed by its sha256 in the page's Content-Security-Policy, nothing else may run).
The static figure stays in the page: what a reader sees with scripts off, and in print.

Views: layer-wise curves with every value, interval, seed and n on hover (recorded while the figures draw,
`curve_spec`), t-SNE points with their token and sentence (`tsne_data`), the nearest neighbours of a probe
occurrence (`examples_data`) and every pair of models at one layer with an MDS map (`matrix_data`)."""
from __future__ import annotations

import base64
import contextvars
import hashlib
import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = (Path(__file__).with_name("explore.js")).read_text(encoding="utf-8")
N_COLUMNS = ("n_tokens", "n_queries", "n_pairs", "n_sentences")  # a row's sample size, by table
SEED_COLUMNS = ("seed", "seed_a", "seed_b")  # a row's seed (a pair's two seeds); plotting draws by them too
DASHES = {"--": "5 3", ":": "1.5 2.5", "-.": "6 2 1.5 2", "dashed": "5 3", "dotted": "1.5 2.5", "dashdot": "6 2 1.5 2"}
FLAG_BITS = (("same_token", 1), ("same_position", 2), ("same_left", 4), ("same_right", 8))
# analysis.report.interactive of the page being built (analysis.report.stage.build sets it): False, no live views
LIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("live", default=True)


def script_hash() -> str:
    """The CSP source that allows the inline script, and only it."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii") + "'"


def script_tag() -> str:
    return f"<script>{SCRIPT}</script>"


def _json(data: Any) -> str:
    """Compact JSON safe inside <script type="application/json">: every "<" written as \\u003c, so that no
    "</script>" or "<!--" in a sentence can end the block (JSON.parse reads it back as "<")."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c")


def view(kind: str, data: Any, label: str) -> str:
    """A live view of `kind` (tsne, neighbours, curves, matrix) on `data`: hidden until the script draws it.
    Its id is its content's hash, so that a rerun writes the same bytes. Nothing when LIVE is off."""
    if not LIVE.get():
        return ""
    text = _json(data)
    ident = f"{kind}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"
    return (f'<div class="live" data-view="{kind}" data-src="{ident}" aria-label="{html.escape(label, quote=True)}" hidden></div>'
            f'<script type="application/json" id="{ident}">{text}</script>')


def needs_script(what: str) -> str:
    """What a reader without scripts sees where a view has no static twin."""
    if not LIVE.get():
        return ""
    return f'<noscript><p class="note">{html.escape(what)} needs JavaScript (the page runs one inline script and fetches nothing).</p></noscript>'


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if math.isfinite(value) else None


# ---------------------------------------------------------------- curves, recorded as the figures draw them

def record(ax, rows: Sequence[Mapping[str, Any]], x: str, value: str, colour: Any, label: str, ls: str, lw: float,
           where: Mapping[str, Any], intervals: tuple[str, str] | None) -> None:
    """Keep on `ax` what one curve of a figure drew: per seed (SEED_COLUMNS), its points (x, value, interval,
    n), for `curve_spec` to put beside the figure."""
    from matplotlib.colors import to_hex

    seeds: dict[str, list] = defaultdict(list)
    for row in rows:
        if not all(row.get(k) == v for k, v in where.items()):
            continue
        y = _finite(row.get(value))
        if y is None:
            continue
        seed = list(dict.fromkeys(row[c] for c in SEED_COLUMNS if row.get(c) is not None))  # a pair of one seed: once
        name = ("seed " if len(seed) == 1 else "seeds ") + "–".join(map(str, seed)) if seed else "—"
        lo, hi = (_finite(row.get(c)) for c in intervals) if intervals else (None, None)
        n = next((int(row[c]) for c in N_COLUMNS if _finite(row.get(c)) is not None), None)
        seeds[name].append([row[x] if isinstance(row[x], str) else _finite(row[x]), y, lo, hi, n])
    if not seeds:
        return
    described = ", ".join(f"{v}" for k, v in where.items() if k not in SEED_COLUMNS)
    series = {"label": "" if label.startswith("_") else label, "name": f"{value} ({described})" if described else value,
              "colour": to_hex(colour), "dash": DASHES.get(ls, ""), "width": round(max(1.0, float(lw)), 1),
              "seeds": [[name, sorted(points, key=lambda p: str(p[0]) if isinstance(p[0], str) else p[0])]
                        for name, points in sorted(seeds.items())]}
    ax.__dict__.setdefault("_live", []).append(series)


def record_reference(ax, xs: Sequence[float], values: Sequence[float], colour: Any, label: str | None) -> None:
    """The study's values drawn on `ax`: a curve without seeds, intervals or n."""
    from matplotlib.colors import to_hex

    ax.__dict__.setdefault("_live", []).append({
        "label": label or "", "name": "the study", "colour": to_hex(colour), "dash": DASHES["--"], "width": 1.1,
        "seeds": [["study", [[_finite(x), _finite(v), None, None, None] for x, v in zip(xs, values)]]]})


def curve_spec(fig) -> dict | None:
    """The panels of `fig` whose curves were recorded (`record`): title, axis labels, log scale, series."""
    panels = []
    for ax in fig.axes:
        series = ax.__dict__.get("_live")
        if not series or not ax.get_visible():
            continue
        xs = [p[0] for s in series for _, points in s["seeds"] for p in points]
        categories = list(dict.fromkeys(x for x in xs if isinstance(x, str))) or None
        panels.append({"title": ax.get_title(), "x": ax.get_xlabel() or "x", "y": ax.get_ylabel(),
                       "log": ax.get_yscale() == "log", "series": series,
                       **({"categories": categories} if categories else {})})
    return {"panels": panels} if panels else None


# ---------------------------------------------------------------- t-SNE

class _Strings:
    """Each distinct sentence once (`items`), points and neighbours naming it by its index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._seen: dict[str, int] = {}

    def index(self, text: str) -> int:
        if text not in self._seen:
            self._seen[text] = len(self.items)
            self.items.append(text)
        return self._seen[text]


def tsne_data(name: str, rows: Sequence[Mapping[str, Any]], objectives: Sequence[str], colour_by: str,
              max_points: int, seed: int = 0) -> dict:
    """One t-SNE set for the live view: per model (its first seed, as the static figure), each occurrence's
    token, position, sentence and masking once, and its coordinates at every layer scaled to 0..1000 (the
    same seeded subset of at most `max_points` occurrences at every layer)."""
    tokens = sorted({str(r["token"]) for r in rows})
    store = _Strings()
    models = []
    for objective in objectives:
        mine = [r for r in rows if r["objective"] == objective]
        if not mine:
            continue
        by_layer: dict[int, dict[tuple[int, int], Mapping]] = defaultdict(dict)
        for r in mine:
            by_layer[int(r["layer"])][(int(r["sentence_id"]), int(r["position"]))] = r
        layers = sorted(by_layer)
        keys = sorted(set.intersection(*(set(v) for v in by_layer.values())))
        if len(keys) > max_points:
            keys = [keys[i] for i in sorted(np.random.default_rng(seed).choice(len(keys), max_points, replace=False))]
        first = by_layer[layers[0]]
        xy = {}
        for layer in layers:
            pts = np.array([[float(by_layer[layer][k]["x"]), float(by_layer[layer][k]["y"])] for k in keys])
            lo, span = pts.min(0), np.maximum(np.ptp(pts, 0), 1e-12)
            xy[str(layer)] = np.rint((pts - lo) / span * 1000).astype(int).ravel().tolist()
        masked = [int(first[k].get("masked") or 0) for k in keys]
        models.append({"label": objective, "seed": int(first[keys[0]]["seed"]) if keys else None, "layers": layers,
                       "tok": [tokens.index(str(first[k]["token"])) for k in keys], "pos": [k[1] for k in keys],
                       "sid": [k[0] for k in keys],
                       "sent": [store.index(str(first[k].get("pieces") or "")) for k in keys],
                       **({"masked": masked} if any(masked) else {}), "xy": xy})
    return {"name": name, "colour_by": colour_by, "tokens": tokens, "sentences": store.items, "models": models}


# ---------------------------------------------------------------- the neighbours explorer

def examples_data(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> dict:
    """The explorer's data from the `examples` table: every query occurrence (by its key, the same in every
    model that shares a tokenizer), and per model and query, per layer, its k neighbours as flat
    [sentence, position, similarity, flags] (flags: bits of same token / position / left / right)."""
    store = _Strings()
    queries: dict[str, dict] = {}
    hits: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(dict))
    layers: dict[str, set[int]] = defaultdict(set)
    k = 0
    for r in sorted(rows, key=lambda r: (int(r["layer"]), int(r["rank"]))):
        model, key, layer, rank = str(r["objective"]), str(r["query"]), int(r["layer"]), int(r["rank"])
        layers[model].add(layer)
        sent = store.index(str(r.get("pieces") or ""))
        if rank == 0:
            queries.setdefault(key, {"key": key, "word": str(r["word"]), "sent": sent, "pos": int(r["position"])})
            hits[model][key].setdefault(layer, [])
            continue
        k = max(k, rank)
        flags = sum(bit for column, bit in FLAG_BITS if int(float(r[column] or 0)))
        hits[model][key].setdefault(layer, []).extend([sent, int(r["position"]), _finite(r["similarity"]), flags])
    order = sorted(queries, key=lambda q: (queries[q]["word"], q))
    models = [o for o in objectives if o in hits]
    metric = next((str(r["metric"]) for r in rows if r.get("metric")), "cosine")
    return {"k": k, "metric": metric, "models": models, "sentences": store.items,
            "queries": [queries[q] for q in order],
            "layers": {m: sorted(layers[m]) for m in models},
            "hits": {m: [[hits[m][q].get(layer, []) for layer in sorted(layers[m])] if q in hits[m] else None
                         for q in order] for m in models}}


# ---------------------------------------------------------------- every pair of models at one layer

def classical_mds(d: np.ndarray) -> tuple[np.ndarray, float]:
    """Torgerson's classical MDS of a full symmetric distance matrix into 2-d, and Kruskal's stress-1 of
    the map's distances against `d`."""
    n = len(d)
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d ** 2) @ j
    values, vectors = np.linalg.eigh(b)
    top = np.argsort(values)[::-1][:2]
    xy = vectors[:, top] * np.sqrt(np.clip(values[top], 0, None))
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    fitted = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    upper = np.triu_indices(n, 1)
    stress = math.sqrt(((fitted[upper] - d[upper]) ** 2).sum() / max((d[upper] ** 2).sum(), 1e-300))
    return xy, stress


def complete_subset(missing: np.ndarray) -> list[int]:
    """The models kept for the map: dropping, one at a time, the model with the most missing pairs
    (ties: the later one) until every pair of those kept is measured."""
    keep = list(range(len(missing)))
    while True:
        counts = [int(missing[i, keep].sum()) for i in keep]
        if not any(counts):
            return keep
        worst = max(range(len(keep)), key=lambda i: (counts[i], i))
        keep.pop(worst)


def matrix_data(rows: Sequence[Mapping[str, Any]], measure: str, models: Sequence[tuple[str, int]],
                label: Mapping[tuple[str, int], str], floor: Mapping[tuple[str, int], int],
                colours: Mapping[str, str], depth: str, unit: str) -> dict:
    """Per layer step, the `measure` distance of every pair of `models` ((objective, seed)) with its
    interval and n; a pair is missing (with why) when no row holds it, its distance is not a number, or
    its n is below what either model needs (`floor`: min_samples_per_dim x the model's width), never a
    number read from too few rows. Beside each layer, the classical MDS map of the models whose pairs are
    all there."""
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    steps = sorted({int(r["layer"]) for r in rows if r["measure"] == measure})
    cells, maps = {}, {}
    for step in steps:
        grid: list[list[Any]] = [[None] * n for _ in range(n)]
        for i in range(n):
            grid[i][i] = [0.0, None, None, None, ""]
        for r in rows:
            if r["measure"] != measure or int(r["layer"]) != step:
                continue
            a, b = (r["objective_a"], int(r["seed_a"])), (r["objective_b"], int(r["seed_b"]))
            if a not in index or b not in index:
                continue
            distance, count = _finite(r["distance"]), _finite(r.get("n_tokens"))
            need = max(floor.get(a, 0), floor.get(b, 0))
            if distance is None:
                cell = [None, None, None, count, "the distance is not a number"]
            elif count is not None and count < need:
                why = f"only {int(count):,} shared {unit}s, fewer than the {need:,} analysis.min_samples_per_dim asks"
                cell = [None, None, None, int(count), f"{why} of these widths"]
            else:
                cell = [distance, _finite(r.get("ci_low")), _finite(r.get("ci_high")),
                        None if count is None else int(count), ""]
            grid[index[a]][index[b]] = grid[index[b]][index[a]] = cell
        for i in range(n):
            for j in range(n):
                if grid[i][j] is None:
                    grid[i][j] = [None, None, None, None, "no row in metrics/similarity.csv"]
        cells[str(step)] = grid
        missing = np.array([[grid[i][j][0] is None for j in range(n)] for i in range(n)])
        keep = complete_subset(missing)
        if len(keep) >= 3:
            d = np.array([[grid[i][j][0] for j in keep] for i in keep], dtype=float)
            xy, stress = classical_mds((d + d.T) / 2)
            maps[str(step)] = {"models": keep, "xy": np.round(xy, 5).ravel().tolist(), "stress": round(stress, 5),
                               "left_out": [i for i in range(n) if i not in keep]}
    return {"measure": measure.upper(), "depth": depth, "unit": unit, "layers": steps,
            "models": [label[m] for m in models], "colours": [colours.get(m[0], "#444444") for m in models],
            "cells": cells, "mds": maps}

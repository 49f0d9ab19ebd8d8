"""The metric tables' rows as the claims read them: seed means for reading, and per seed the estimates
with their bootstrap replicates (analysis.stats.verdicts.Stat) for deciding. `crit` is an analysis.report.claims.Criteria
(its n_clusters, k, metric and measure pick the main estimate out of a table)."""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Callable, Mapping, Sequence

from analysis.stats.verdicts import Stat, stat_of

Rows = Sequence[Mapping[str, Any]]
Curves = dict[Any, dict[Any, Stat]]  # seed -> key (a layer, a bucket) -> estimate with replicates


def mean_by(rows: Rows, x: str, value: str, **where: Any) -> dict[Any, float]:
    """Mean of `value` over the rows matching `where` (e.g. over seeds), per value of `x`, sorted;
    NaN values are left out."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and not math.isnan(float(row[value])):
            groups[row[x]].append(float(row[value]))  # a NaN is a failed estimate: left out, as unmeasured
    return {key: statistics.fmean(groups[key]) for key in sorted(groups)}


def by_seed(rows: Rows, x: str | Callable[[Mapping[str, Any]], Any], value: str, n: str = "n_tokens",
            seed: str = "seed", **where: Any) -> Curves:
    """Per seed, per value of `x` (a column, or a function of the row), the row's estimate `value` with
    its replicates and sample size (column `n`); rows not matching `where`, or with a NaN estimate, are
    left out."""
    out: Curves = defaultdict(dict)
    for row in rows or ():
        if all(row.get(k) == v for k, v in where.items()) and not math.isnan(float(row[value])):
            key = x(row) if callable(x) else row[x]
            out[row[seed]][key] = stat_of(row, value, str(row.get(n, "")))
    return {s: dict(sorted(c.items(), key=lambda kv: order(kv[0]))) for s, c in sorted(out.items())}


def order(key: Any) -> Any:
    return (bucket_start(key), key) if isinstance(key, str) else (key, "")


def fmt(value: float) -> str:
    size = abs(value)
    return f"{value:.1f}" if size >= 10 else f"{value:.3f}" if size >= 0.01 or size == 0 else f"{value:.4f}"


def path(curve: Mapping[Any, float]) -> str:
    return " → ".join(fmt(v) for v in curve.values())


def seed_means(curves: Curves) -> dict[Any, float]:
    keys = sorted({k for c in curves.values() for k in c}, key=order)
    return {k: statistics.fmean(c[k].value for c in curves.values() if k in c) for k in keys}


def main_clusters(rows: Rows, crit: Any) -> int:
    """The cluster count MI is read at: `crit.n_clusters` when some row has it, else the most used."""
    counts = Counter(r["n_clusters"] for r in rows)
    return crit.n_clusters if crit.n_clusters in counts else counts.most_common(1)[0][0]


def mi_rows(mi: Rows | None, objective: str, target: str, crit: Any) -> list[Mapping[str, Any]]:
    rows = [r for r in mi or () if r["objective"] == objective and r["target"] == target]
    return [r for r in rows if r["n_clusters"] == main_clusters(rows, crit)] if rows else []


def mi_curve(mi: Rows | None, objective: str, target: str, crit: Any,
             value: str = "mi_corrected") -> dict[int, float]:
    """Seed-mean corrected MI (or `value`: mi, the plug-in) per layer, at the main cluster count."""
    return mean_by(mi_rows(mi, objective, target, crit), "layer", value)


def mi_stats(mi: Rows | None, objective: str, target: str, crit: Any, value: str = "mi_corrected") -> Curves:
    return by_seed(mi_rows(mi, objective, target, crit), "layer", value)


def common(*curves: Curves) -> list[Any]:
    """The seeds every one of `curves` has (contrasts between objectives pair the models of one seed)."""
    seeds = [set(c) for c in curves]
    return sorted(set.intersection(*seeds)) if seeds else []


def bucket_start(bucket: str) -> float:
    try:
        return float(bucket.split("-")[0])
    except ValueError:
        return float("-inf")


def influence_by_bucket(rows: Rows | None, objective: str, crit: Any) -> tuple[int | None, dict[str, float]]:
    """(lowest measured layer, seed-mean influence per bucket there, frequent to rare)."""
    mine = [r for r in rows or () if r["objective"] == objective and r["measure"] == crit.measure
            and r["bucket"] != "all"]
    if not mine:
        return None, {}
    layer = min(r["layer"] for r in mine)
    means = mean_by(mine, "bucket", "distance", layer=layer)
    return layer, dict(sorted(means.items(), key=lambda kv: bucket_start(kv[0])))


def neighbour_rows(rows: Sequence[dict], crit: Any) -> list[dict]:
    """The neighbours rows of the configured (k, metric), or of the most common pair when the table
    holds other settings only."""
    if not rows:
        return []
    settings = Counter((r["k"], r["metric"]) for r in rows)
    k, metric = (crit.k, crit.metric) if (crit.k, crit.metric) in settings else settings.most_common(1)[0][0]
    return [r for r in rows if r["k"] == k and r["metric"] == metric]

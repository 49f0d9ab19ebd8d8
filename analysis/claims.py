"""The study's seven conclusions (METHODS.md §9) checked against this run's metric tables.

Each check is a function of the tables (name -> typed rows as `analysis.gather.load_table` reads
them, or None when the table is missing) and the `Criteria`; it returns a `Verdict`: "holds",
"does not hold" or "not measured", this run's numbers as text, and a one-line reason. A check is
made of parts; the verdict is "does not hold" when a measured part fails, else "not measured" when
a part lacks its data, else "holds". Values are means over seeds (NaN estimates left out); MI is
the corrected MI at `analysis.mi.n_clusters` clusters when measured, else at the most used count.
The criteria, one per claim:

1. LM: corrected MI with the input never rises by more than `mi_tolerance` from a layer to the
   next and ends lower than it starts; corrected MI with the next token ends higher than it starts
   (by more than `mi_tolerance`).
2. MLM: corrected MI with the (unmasked) input reaches its minimum at an inner layer, at least
   `mi_tolerance` below both the first and the last layer; the plug-in MI as well.
3. MT: corrected input MI falls by more than `mi_tolerance` from the first to the last layer
   (refined with context; the first above the last on the plug-in MI too, with intervals), yet the last layer keeps at least `mt_keep_share` of the first layer's
   MI and a larger share than LM's; MT's mean all-token change over layers is below LM's and MLM's.
4. Similarity (`measure`, PWCCA by default), layers >= 1: every cross-task distance among mt, lm,
   mlm between models of the same seed, i.e. the same initialisation (the study's design; rows of
   pair same_init, see `cross_task`; the different-initialisation pairs are shown beside them, not
   read) exceeds the largest same-objective seed baseline (pair seed_baseline) at that layer; the
   mean MT–MLM distance is below the mean LM–MT and LM–MLM distances.
5. Change (`measure`, all tokens): MT's change never rises by more than `change_tolerance` from
   one transition to the next and ends lower than it starts; MLM's largest change is at the top
   transition (L-1 -> L).
6. Influence at the lowest measured layer: in mt and lm the rarest measured bucket influences
   most; the token-dropout variant's excess (rarest / median of the other buckets - 1) is at most
   `dropout_excess_factor` times its base objective's.
7. Neighbours (`k`, `metric` as set, else the most common): at the top layer MLM's identity share
   exceeds MT's and LM's; MT's mean position distance over layers >= 1 is below LM's and MLM's.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig

from .tables import SAME_INIT, SEED_BASELINE

Rows = Sequence[Mapping[str, Any]]
Tables = Mapping[str, "Rows | None"]
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # holds | does not hold | inconclusive | not measured
    numbers: str  # this run's numbers behind the verdict
    reason: str   # one line


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the checks (conf/analysis/default.yaml, `report.claims`) and the analysis
    settings that pick the main estimate out of a table."""

    mi_tolerance: float = 0.02
    change_tolerance: float = 0.002
    mt_keep_share: float = 0.5
    dropout_excess_factor: float = 0.5
    measure: str = "pwcca"
    n_clusters: int | None = None
    k: int | None = None
    metric: str | None = None

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "Criteria":
        c, a = cfg.analysis.report.claims, cfg.analysis
        return cls(mi_tolerance=float(c.mi_tolerance), change_tolerance=float(c.change_tolerance),
                   mt_keep_share=float(c.mt_keep_share), dropout_excess_factor=float(c.dropout_excess_factor),
                   measure=str(c.measure), n_clusters=int(a.mi.n_clusters), k=int(a.neighbours.k),
                   metric=str(a.neighbours.metric))


@dataclass(frozen=True)
class Part:
    ok: bool | None  # None: not measured
    text: str
    inconclusive: bool = False  # measured, but within the intervals (ok is then None)


def combine(parts: Sequence[Part], numbers: Sequence[str]) -> Verdict:
    numbers_text = "; ".join(n for n in numbers if n) or "—"
    failed = [p.text for p in parts if p.ok is False]
    if failed:
        return Verdict(FAILS, numbers_text, "; ".join(failed))
    missing = [p.text for p in parts if p.ok is None and not p.inconclusive]
    if missing:
        return Verdict(NOT_MEASURED, numbers_text, "; ".join(missing))
    unsure = [p.text for p in parts if p.inconclusive]
    if unsure:
        return Verdict(INCONCLUSIVE, numbers_text, "; ".join(unsure))
    return Verdict(HOLDS, numbers_text, "; ".join(p.text for p in parts))


# ---------------------------------------------------------------- estimates with intervals

@dataclass(frozen=True)
class Estimate:
    """A seed-mean estimate, its interval (the seed means of the rows' bounds; nan: none) and the
    per-seed values it averages."""

    value: float
    low: float
    high: float
    seeds: Mapping[Any, float]

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def text(self) -> str:
        return f"{_fmt(self.value)} [{_fmt(self.low)}, {_fmt(self.high)}]" if self.has_interval else _fmt(self.value)


def estimates_by(rows: Rows, x: str, value: str, low: str = "ci_low", high: str = "ci_high",
                 seed: str = "seed", **where: Any) -> dict[Any, Estimate]:
    """`mean_by` with intervals: per value of `x`, the seed mean of `value`, of its interval bounds
    (`low`, `high`; nan when a row has none) and the values per `seed`."""
    groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and not math.isnan(float(row[value])):
            groups[row[x]].append(row)
    out = {}
    for key in sorted(groups):
        g = groups[key]
        bounds = [(float(r.get(low, math.nan)), float(r.get(high, math.nan))) for r in g]
        out[key] = Estimate(statistics.fmean(float(r[value]) for r in g), statistics.fmean(b[0] for b in bounds),
                            statistics.fmean(b[1] for b in bounds), {r.get(seed): float(r[value]) for r in g})
    return out


def ordered(a: Estimate, b: Estimate, what: str, margin: float = 0.0, otherwise: str | None = None) -> Part:
    """The claim `what`, a > b: beyond the intervals and for every seed both have (holds), the opposite
    so (does not hold, said as `otherwise` when given), else inconclusive; without intervals,
    a > b + margin on the point estimates (the rule before intervals)."""
    if not (a.has_interval and b.has_interval):
        ok = a.value > b.value + margin
        return Part(ok, f"{what if ok else otherwise or 'not: ' + what}: {_fmt(a.value)} vs {_fmt(b.value)} "
                        "(point estimates: no intervals)")
    common = [s for s in a.seeds if s in b.seeds]
    above = a.low > b.high and all(a.seeds[s] > b.seeds[s] for s in common)
    below = a.high < b.low and all(a.seeds[s] < b.seeds[s] for s in common)
    numbers = f"{a.text()} vs {b.text()}"
    if above:
        return Part(True, f"{what}: {numbers}, beyond the intervals")
    if below:
        return Part(False, f"{otherwise or 'not: ' + what}: the opposite, {numbers}, beyond the intervals")
    return Part(None, f"{what}: {numbers}, within the intervals or not for every seed", inconclusive=True)


def all_parts(parts: Sequence[Part], what: str) -> Part:
    """One part of several orderings: fails when one fails, inconclusive when one is, else holds."""
    for p in parts:
        if p.ok is False:
            return p
    unsure = [p for p in parts if p.inconclusive]
    if unsure:
        return unsure[0]
    return Part(True, f"{what}: " + "; ".join(p.text for p in parts[:2]) + (" …" if len(parts) > 2 else ""))


# ---------------------------------------------------------------- helpers over rows

def mean_by(rows: Rows, x: str, value: str, **where: Any) -> dict[Any, float]:
    """Mean of `value` over the rows matching `where` (e.g. over seeds), per value of `x`, sorted;
    NaN values are left out."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and not math.isnan(float(row[value])):
            groups[row[x]].append(float(row[value]))  # a NaN is a failed estimate: left out, as unmeasured
    return {key: statistics.fmean(groups[key]) for key in sorted(groups)}


def _fmt(value: float) -> str:
    size = abs(value)
    return f"{value:.1f}" if size >= 10 else f"{value:.3f}" if size >= 0.01 or size == 0 else f"{value:.4f}"


def _path(curve: Mapping[Any, float]) -> str:
    return " → ".join(_fmt(v) for v in curve.values())


def main_clusters(rows: Rows, crit: Criteria) -> int:
    """The cluster count MI is read at: `crit.n_clusters` when some row has it, else the most used."""
    counts = Counter(r["n_clusters"] for r in rows)
    return crit.n_clusters if crit.n_clusters in counts else counts.most_common(1)[0][0]


def mi_curve(mi: Rows | None, objective: str, target: str, crit: Criteria,
             value: str = "mi_corrected") -> dict[int, float]:
    """Seed-mean corrected MI (or `value`: mi, the plug-in) per layer, at `crit.n_clusters` if
    measured, else the most used count."""
    rows = [r for r in mi or () if r["objective"] == objective and r["target"] == target]
    if not rows:
        return {}
    return mean_by(rows, "layer", value, n_clusters=main_clusters(rows, crit))


def mi_estimates(mi: Rows | None, objective: str, target: str, crit: Criteria,
                 corrected: bool = True) -> dict[int, Estimate]:
    """`mi_curve` with intervals: the corrected MI (corrected_ci_*) or the plug-in MI (ci_*)."""
    rows = [r for r in mi or () if r["objective"] == objective and r["target"] == target]
    if not rows:
        return {}
    value, low, high = (("mi_corrected", "corrected_ci_low", "corrected_ci_high") if corrected
                        else ("mi", "ci_low", "ci_high"))
    return estimates_by(rows, "layer", value, low, high, n_clusters=main_clusters(rows, crit))


def mi_ordered(mi: Rows | None, objective: str, target: str, crit: Criteria, rising: bool, what: str,
               otherwise: str) -> Part:
    """Last layer above the first (`rising`) or below it, on both the plug-in and the corrected MI."""
    parts = []
    for corrected in (False, True):
        est = mi_estimates(mi, objective, target, crit, corrected)
        first, last = est[min(est)], est[max(est)]
        # the numbers come in the order named: "a vs b" of ordered(a, b)
        kind = f" ({'corrected' if corrected else 'plug-in'}, {'last vs first' if rising else 'first vs last'} layer)"
        parts.append(ordered(last, first, what + kind, crit.mi_tolerance, otherwise + kind) if rising
                     else ordered(first, last, what + kind, 0.0, otherwise + kind))
    return all_parts(parts, what)


def _missing(table: str, what: str) -> Part:
    return Part(None, f"{what} not measured (metrics/{table}.csv)")


def _ends(curve: Mapping[int, float]) -> tuple[float, float]:
    values = list(curve.values())
    return values[0], values[-1]


def _falls(curve: Mapping[int, float], tol: float, what: str) -> Part:
    """Non-increasing within `tol` from layer to layer, and lower at the end than at the start."""
    keys = list(curve)
    rises = [(a, b) for a, b in zip(keys, keys[1:]) if curve[b] > curve[a] + tol]
    first, last = _ends(curve)
    if rises:
        a, b = rises[0]
        return Part(False, f"{what} rises from layer {a} to {b} ({_fmt(curve[a])} → {_fmt(curve[b])}, "
                           f"tolerance {tol:g})")
    if not last < first:
        return Part(False, f"{what} does not fall overall ({_fmt(first)} → {_fmt(last)})")
    return Part(True, f"{what} falls {_fmt(first)} → {_fmt(last)}")


# ---------------------------------------------------------------- the claims

def claim_lm_mi(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    inp, out = mi_curve(mi, "lm", "input", crit), mi_curve(mi, "lm", "output", crit)
    parts = [_falls(inp, crit.mi_tolerance, "input MI") if len(inp) > 1 else _missing("mi", "LM input MI")]
    if len(inp) > 1:
        parts.append(mi_ordered(mi, "lm", "input", crit, False, "input MI falls", "input MI does not fall"))
    if len(out) > 1:
        parts.append(mi_ordered(mi, "lm", "output", crit, True, "next-token MI rises", "next-token MI does not rise"))
    else:
        parts.append(_missing("mi", "LM next-token MI"))
    return combine(parts, [inp and f"input {_path(inp)}", out and f"next token {_path(out)}"])


def claim_mlm_mi(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    inp = mi_curve(mi, "mlm", "input", crit)
    extra = [mi_curve(mi, "mlm", t, crit) for t in ("input_masked", "output")]
    numbers = [inp and f"input {_path(inp)}",
               *(c and f"{t} (masked) {_fmt(_ends(c)[0])} → {_fmt(_ends(c)[1])}"
                 for t, c in zip(("input", "output"), extra))]
    if len(inp) < 3:
        return combine([_missing("mi", "MLM input MI at 3 or more layers")], numbers)
    plugin = mi_curve(mi, "mlm", "input", crit, "mi")  # the claim must hold on the plug-in MI as well
    return combine([_dip(inp, crit.mi_tolerance, "corrected"), _dip(plugin, crit.mi_tolerance, "plug-in")], numbers)


def _dip(inp: Mapping[int, float], tol: float, kind: str) -> Part:
    """The curve reaches its minimum at an inner layer, more than `tol` below both ends."""
    layers = list(inp)
    low = min(layers, key=inp.get)
    first, last = _ends(inp)
    if low in (layers[0], layers[-1]):
        return Part(False, f"input MI ({kind}) is lowest at layer {low}, not at an inner layer")
    if first - inp[low] <= tol or last - inp[low] <= tol:
        return Part(False, f"the dip ({kind}) at layer {low} ({_fmt(inp[low])}) is within {tol:g} of an end")
    return Part(True, f"input MI ({kind}) falls to {_fmt(inp[low])} at layer {low}, then rises to {_fmt(last)}")


def _mean_change(change: Rows | None, objective: str, crit: Criteria) -> dict[int, float]:
    return mean_by(change or (), "layer_to", "distance", objective=objective, bucket="all", measure=crit.measure)


def claim_mt_identity(tables: Tables, crit: Criteria) -> Verdict:
    mi = tables.get("mi")
    mt, lm = mi_curve(mi, "mt", "input", crit), mi_curve(mi, "lm", "input", crit)
    parts, numbers = [], []
    if len(mt) > 1 and len(lm) > 1 and _ends(mt)[0] > 0 and _ends(lm)[0] > 0:
        keep_mt, keep_lm = _ends(mt)[1] / _ends(mt)[0], _ends(lm)[1] / _ends(lm)[0]
        numbers.append(f"input MI kept at the top: MT {keep_mt:.0%}, LM {keep_lm:.0%}")
        first, last = _ends(mt)
        parts.append(Part(last < first - crit.mi_tolerance,
                          f"MT input MI {'falls' if last < first - crit.mi_tolerance else 'does not fall'} "
                          f"{_fmt(first)} → {_fmt(last)}"))
        parts.append(mi_ordered(mi, "mt", "input", crit, False, "MT input MI falls", "MT input MI does not fall"))
        kept = keep_mt >= crit.mt_keep_share and keep_mt > keep_lm
        parts.append(Part(kept, f"MT keeps {keep_mt:.0%} of its input MI (LM {keep_lm:.0%}; "
                                f"needs >= {crit.mt_keep_share:.0%} and more than LM)"))
    else:
        parts.append(_missing("mi", "MT and LM input MI"))
    means = {o: _mean_change(tables.get("change"), o, crit) for o in ("mt", "lm", "mlm")}
    if all(means.values()):
        avg = {o: statistics.fmean(c.values()) for o, c in means.items()}
        numbers.append("mean change " + ", ".join(f"{o.upper()} {_fmt(v)}" for o, v in avg.items()))
        less = avg["mt"] < avg["lm"] and avg["mt"] < avg["mlm"]
        parts.append(Part(less, f"MT's mean change {_fmt(avg['mt'])} is {'below' if less else 'not below'} "
                                f"LM's {_fmt(avg['lm'])} and MLM's {_fmt(avg['mlm'])}"))
    else:
        parts.append(_missing("change", "all-token change of MT, LM and MLM"))
    return combine(parts, numbers)


def cross_task(rows: Rows) -> list[Mapping[str, Any]]:
    """The rows comparing two different objectives of the same seed, i.e. the same initialisation
    (pair same_init: only the objective differs, METHODS §1). Rows of different seeds
    (different_init) add the difference the initialisation makes: they are shown, never read."""
    return [r for r in rows if r["pair"] == SAME_INIT]


def claim_similarity(tables: Tables, crit: Criteria) -> Verdict:
    rows = [r for r in tables.get("similarity") or () if r["measure"] == crit.measure and r["layer"] >= 1]
    base = {"mt", "lm", "mlm"}
    rows = [r for r in rows if r["objective_a"] in base and r["objective_b"] in base]
    cross: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["pair"] == SEED_BASELINE:
            seeds[r["layer"]].append(r["distance"])
    for r in cross_task(rows):
        cross[tuple(sorted((r["objective_a"], r["objective_b"])))][r["layer"]].append(r["distance"])
    pairs = [("mlm", "mt"), ("lm", "mt"), ("lm", "mlm")]
    if not all(p in cross for p in pairs):
        return combine([_missing("similarity", f"{crit.measure} between all of MT, LM and MLM of one seed "
                                               "(the same initialisation)")], [])
    means = {p: {layer: statistics.fmean(v) for layer, v in sorted(cross[p].items())} for p in pairs}
    numbers = [f"{a.upper()}–{b.upper()} {_path(means[tuple(sorted((a, b)))])}"
               for a, b in (("mt", "mlm"), ("lm", "mt"), ("lm", "mlm"))]
    parts = []
    if not seeds:
        parts.append(Part(None, "no seed baseline (a second seed of mt, lm or mlm)"))
    else:
        numbers.append("seed baselines " + f"{_fmt(min(map(min, seeds.values())))}–"
                                           f"{_fmt(max(map(max, seeds.values())))}")
        layers = sorted({layer for p in pairs for layer in cross[p]})
        unbased = [layer for layer in layers if layer not in seeds]
        with_ci = [r for r in rows if not math.isnan(float(r.get("ci_low", math.nan)))]
        below = [(layer, p) for layer in layers if layer in seeds for p in pairs
                 if min(cross[p].get(layer, [float("inf")])) <= max(seeds[layer])]
        if below:
            layer, (a, b) = below[0]
            parts.append(Part(False, f"{a.upper()}–{b.upper()} at layer {layer} is not above the seed baseline "
                                     f"{_fmt(max(seeds[layer]))}"))
        elif unbased:
            parts.append(Part(None, f"no seed baseline at layers {unbased}"))
        elif with_ci:  # every layer's cross-task distances against its largest seed baseline, with intervals
            est = {p: estimates_by([r for r in cross_task(rows) if tuple(sorted((r["objective_a"], r["objective_b"])))
                                    == p], "layer", "distance", seed="seed_a") for p in pairs}
            base = {layer: max((r for r in rows if r["pair"] == SEED_BASELINE and r["layer"] == layer),
                               key=lambda r: r["distance"]) for layer in layers}
            base_est = {layer: Estimate(r["distance"], float(r.get("ci_low", math.nan)),
                                        float(r.get("ci_high", math.nan)), {}) for layer, r in base.items()}
            parts.append(all_parts([ordered(est[p][layer], base_est[layer],
                                            f"{p[0].upper()}–{p[1].upper()} vs the seed baseline at layer {layer}")
                                    for layer in layers for p in pairs if layer in est[p]],
                                   "every cross-task distance exceeds the largest seed baseline"))
        else:
            parts.append(Part(True, "every cross-task distance exceeds the largest seed baseline "
                                    "(point estimates: no intervals)"))
    avg = {p: statistics.fmean(m.values()) for p, m in means.items()}
    closer = avg[("mlm", "mt")] < min(avg[("lm", "mt")], avg[("lm", "mlm")])
    parts.append(Part(closer, f"mean MT–MLM {_fmt(avg[('mlm', 'mt')])} is {'below' if closer else 'not below'} "
                              f"LM–MT {_fmt(avg[('lm', 'mt')])} and LM–MLM {_fmt(avg[('lm', 'mlm')])}"))
    return combine(parts, numbers)


def _change_estimates(change: Rows | None, objective: str, crit: Criteria) -> dict[int, Estimate]:
    return estimates_by(change or (), "layer_to", "distance", objective=objective, bucket="all", measure=crit.measure)


def claim_change(tables: Tables, crit: Criteria) -> Verdict:
    mt, mlm = (_mean_change(tables.get("change"), o, crit) for o in ("mt", "mlm"))
    parts = [_falls(mt, crit.change_tolerance, "MT's change") if len(mt) > 1
             else _missing("change", "MT's all-token change")]
    if len(mt) > 1:
        est = _change_estimates(tables.get("change"), "mt", crit)
        parts.append(ordered(est[min(est)], est[max(est)], "MT's first vs last change"))
    if len(mlm) > 1:
        est = _change_estimates(tables.get("change"), "mlm", crit)
        top = max(est)
        parts.append(all_parts([ordered(est[top], est[t], f"MLM's change at {top - 1}→{top} vs {t - 1}→{t}", 0.0,
                                        f"MLM's change is larger at {t - 1}→{t}, not at the top {top - 1}→{top}")
                                for t in est if t != top], f"MLM's largest change is at the top {top - 1}→{top}"))
    else:
        parts.append(_missing("change", "MLM's all-token change"))
    return combine(parts, [mt and f"MT {_path(mt)}", mlm and f"MLM {_path(mlm)}"])


def _bucket_start(bucket: str) -> float:
    try:
        return float(bucket.split("-")[0])
    except ValueError:
        return float("-inf")


def influence_by_bucket(rows: Rows | None, objective: str, crit: Criteria) -> tuple[int | None, dict[str, float]]:
    """(lowest measured layer, seed-mean influence per bucket there, frequent to rare)."""
    mine = [r for r in rows or () if r["objective"] == objective and r["measure"] == crit.measure
            and r["bucket"] != "all"]
    if not mine:
        return None, {}
    layer = min(r["layer"] for r in mine)
    means = mean_by(mine, "bucket", "distance", layer=layer)
    return layer, dict(sorted(means.items(), key=lambda kv: _bucket_start(kv[0])))


def _excess(means: Mapping[str, float]) -> float:
    values = list(means.values())
    return values[-1] / statistics.median(values[:-1]) - 1 if statistics.median(values[:-1]) > 0 else float("inf")


def claim_influence(tables: Tables, crit: Criteria) -> Verdict:
    rows = tables.get("influence")
    parts, numbers, excess, base_excess = [], [], {}, {}
    for objective in ("mt", "lm", "mt_td", "lm_td"):
        layer, means = influence_by_bucket(rows, objective, crit)
        if len(means) < 2:
            continue
        rarest = list(means)[-1]
        excess[objective] = _excess(means)
        name = objective if "_" in objective else objective.upper()
        numbers.append(f"{name} layer {layer}: rarest {rarest} {_fmt(means[rarest])} vs others "
                       f"≤ {_fmt(max(list(means.values())[:-1]))}")
        if objective in ("mt", "lm"):
            est = estimates_by([r for r in rows if r["objective"] == objective and r["measure"] == crit.measure],
                               "bucket", "distance", layer=layer)
            part = all_parts([ordered(est[rarest], est[b], f"{objective.upper()} influence of {rarest} vs {b}",
                                      0.0, f"in {objective.upper()} bucket {b}, not the rarest {rarest}, "
                                           "influences at least as much")
                              for b in means if b != rarest],
                             f"in {objective.upper()} the rarest bucket {rarest} influences most")
            parts.append(part)
            base_excess[objective] = part.ok is True  # beyond the intervals (or, without any, on the points)
    for objective in ("mt", "lm"):
        if objective not in excess:
            parts.append(_missing("influence", f"{objective.upper()} influence in 2 or more buckets"))
        elif f"{objective}_td" not in excess:
            parts.append(_missing("influence", f"{objective}_td (token dropout) influence"))
        elif not base_excess.get(objective):
            # token dropout can only be said to remove an excess the base model shows beyond its interval
            numbers.append(f"{objective}_td not judged: {objective.upper()} shows no rare-token excess beyond "
                           "its interval")
        else:
            td, plain = excess[f"{objective}_td"], excess[objective]
            ok = td <= crit.dropout_excess_factor * plain
            parts.append(Part(ok, f"{objective}_td rare-token excess {td:+.0%} vs {objective.upper()} {plain:+.0%}"
                                  + ("" if ok else f" (needs <= {crit.dropout_excess_factor:g}x)")))
    return combine(parts, numbers)


def neighbour_rows(rows: Sequence[dict], crit: Criteria) -> list[dict]:
    """The neighbours rows of the configured (k, metric), or of the most common pair when the table
    holds other settings only."""
    if not rows:
        return []
    settings = Counter((r["k"], r["metric"]) for r in rows)
    k, metric = (crit.k, crit.metric) if (crit.k, crit.metric) in settings else settings.most_common(1)[0][0]
    return [r for r in rows if r["k"] == k and r["metric"] == metric]


def claim_neighbours(tables: Tables, crit: Criteria) -> Verdict:
    rows = neighbour_rows(list(tables.get("neighbours") or ()), crit)
    ident = {o: mean_by(rows, "layer", "value", objective=o, property="identity") for o in ("mt", "lm", "mlm")}
    pos = {o: mean_by([r for r in rows if r["layer"] >= 1], "layer", "value", objective=o, property="position")
           for o in ("mt", "lm", "mlm")}
    parts, numbers = [], []
    if all(ident.values()):
        top = {o: c[max(c)] for o, c in ident.items()}
        numbers.append("identity at the top " + ", ".join(f"{o.upper()} {_fmt(v)}" for o, v in top.items()))
        est = {o: estimates_by(rows, "layer", "value", objective=o, property="identity") for o in ident}
        est = {o: e[max(e)] for o, e in est.items()}
        parts.append(all_parts([ordered(est["mlm"], est[o], f"top-layer identity MLM vs {o.upper()}")
                                for o in ("mt", "lm")], "MLM keeps identity best at the top"))
    else:
        parts.append(_missing("neighbours", "identity of MT, LM and MLM"))
    if all(pos.values()):
        avg = {o: statistics.fmean(c.values()) for o, c in pos.items()}
        numbers.append("mean position distance " + ", ".join(f"{o.upper()} {_fmt(v)}" for o, v in avg.items()))
        best = avg["mt"] < min(avg["lm"], avg["mlm"])
        parts.append(Part(best, f"MT {'keeps' if best else 'does not keep'} position best"))
    else:
        parts.append(_missing("neighbours", "position of MT, LM and MLM"))
    return combine(parts, numbers)


# ---------------------------------------------------------------- the claim table

@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    study: str  # the study's numbers (METHODS.md)
    check: Callable[[Tables, Criteria], Verdict]
    reads: tuple[str, ...] = ()  # the objectives whose models (every seed) the check reads


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "LM: MI with the input falls monotonically with depth while MI with the next token rises",
          "input 5.30 → 3.97 nats (layers 0→6); next token 1.82 → 2.35", claim_lm_mi, ("lm",)),
    Claim(2, "MLM: MI with the input falls, then rises at the top layers",
          "input 5.21 → 4.93 (layer 4) → 5.10; masked: input 6.90 → 0.93, output 0.72 → 2.38", claim_mlm_mi,
          ("mlm",)),
    Claim(3, "MT: refined with context but keeps most token identity; less change",
          "input 5.21 → 4.47 (86% kept; LM 75%); change .064 → .039", claim_mt_identity, ("mt", "lm", "mlm")),
    Claim(4, "PWCCA: cross-task distances > seed baselines; MT–MLM < LM–MT and LM–MLM",
          "MT–MLM .42→.54, LM–MT .45→.60, LM–MLM .41→.60; seeds .26–.37", claim_similarity,
          ("mt", "lm", "mlm")),
    Claim(5, "Change: MT decreases with depth; MLM largest at the top",
          "MT .064 → .039; MLM U-shaped, largest at 5→6", claim_change, ("mt", "mlm")),
    Claim(6, "Influence: rare tokens influence most in MT and LM; token dropout removes the excess",
          "MT layer 1: rarest ≈ .006 vs ≤ .002 for the other buckets", claim_influence,
          ("mt", "lm", "mt_td", "lm_td")),
    Claim(7, "Neighbours: MLM keeps identity best at the top; MT keeps position best",
          "identity at layer 6: MT .915, LM .77, MLM .97; position 6: MT 4.5, LM 7.8, MLM 8.0",
          claim_neighbours, ("mt", "lm", "mlm")),
)


def check_all(tables: Tables, crit: Criteria) -> list[tuple[Claim, Verdict]]:
    """Every claim's verdict; a check that fails on malformed rows is reported, not raised."""
    out = []
    for claim in CLAIMS:
        try:
            verdict = claim.check(tables, crit)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            verdict = Verdict(NOT_MEASURED, "—", f"the tables could not be checked: {type(e).__name__}: {e}")
        out.append((claim, verdict))
    return out

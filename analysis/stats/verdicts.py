"""Verdict rules: each part of a claim decided from contrasts with paired bootstrap intervals (METHODS.md §10).

A *contrast* is the difference of two estimates made on the same probe sentences -- layer l against layer
l + 1 of one model, model A against model B at one layer, one bucket against another -- or a function of
several (a mean over layers, a ratio), signed so that the claimed direction is positive, with a margin
(a tolerance setting; 0 by default). Every table draws its replicates from one resampling plan
(analysis.bootstrap): resample r holds the same sentences in every table, model, layer and bucket, so
the contrast has its own replicates, the same difference under each resample (`Stat`), and its interval
comes from them by the plan's method (normal: estimate +- z x their standard deviation). Both sides of a
contrast move together under resampling, so this interval is much narrower than two marginal intervals
compared for overlap where they are correlated, and it exists where a rule on point estimates had none.

Every interval of one claim is made at the level Bonferroni-corrected over the m contrasts that claim
reads in one seed: 1 - (1 - level) / m (`family_level`), so that all of a seed's statements hold together
with the nominal coverage. A contrast is then *above* its margin when its whole interval is, *below* when
its whole interval is below it, else *within*; with no interval (no replicates kept, or fewer than two
finite ones, or no estimate) it is *missing*. A table made with resamples switched off
(analysis.bootstrap.resamples.<table> = 0: replicates of length 0) is read on its point estimates, and
every statement made so says so.

The rules, per seed (`decide`):
- ordered: holds when its one contrast is above, does not hold when it is below;
- every: holds when all its contrasts are above, does not hold when one is below;
- falls (a trend with depth): does not hold when a step between consecutive layers rises above its
  tolerance beyond its interval, or the last layer lies above the first beyond its interval; holds when
  no step does and the first lies above the last beyond its interval (and no step's interval is missing);
- dip (a U-shape): holds when some inner layer lies below both ends by more than the tolerance beyond
  the intervals; does not hold when every inner layer lies above one end (within the tolerance) beyond
  its interval;
- anything else is inconclusive. Across seeds (`across_seeds`): a part holds when it holds in every seed,
  does not hold when it does not hold in every seed, and is inconclusive otherwise, saying whether the
  seeds disagree or which seed is undecided.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from analysis.stats.bootstrap import interval as bootstrap_interval

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
ABOVE, BELOW, WITHIN, MISSING = "above", "below", "within", "no interval"
RULES = ("ordered", "every", "falls", "dip")


# ---------------------------------------------------------------- estimates with replicates

@dataclass(frozen=True)
class Stat:
    """An estimate and its replicates (B,) under the shared plan's resamples. `reps` None: none kept (a
    table made before they were, or a row without any); an empty array: the table was made with
    resamples switched off, so only the point estimate decides. `n`: its sample size, as text."""

    value: float
    reps: np.ndarray | None
    n: str = ""

    def __sub__(self, other: Stat) -> Stat:
        return combine(lambda a, b: a - b, self, other)

    def __add__(self, other: Stat) -> Stat:
        return combine(lambda a, b: a + b, self, other)

    def __truediv__(self, other: Stat) -> Stat:
        return combine(divide, self, other)

    def scaled(self, factor: float) -> Stat:
        return combine(lambda a: a * factor, self)

    def shifted(self, offset: float) -> Stat:
        return combine(lambda a: a + offset, self)


def divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(b) != 0, np.divide(a, np.where(np.asarray(b) != 0, b, 1.0)), np.nan)


def combine(fn: Callable[..., Any], *stats: Stat) -> Stat:
    """fn of the estimates, and of the replicates resample by resample (the first B of each, B the fewest
    any has: resample r is the same draw in every table). None when any has none kept; empty when any was
    made without resamples."""
    value = float(fn(*(np.float64(s.value) for s in stats)))
    if any(s.reps is None for s in stats):
        reps = None
    else:
        b = min(len(s.reps) for s in stats)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            reps = np.asarray(fn(*(np.asarray(s.reps[:b], dtype=np.float64) for s in stats)), dtype=np.float64)
    sizes = list(dict.fromkeys(s.n for s in stats if s.n))
    return Stat(value, reps, "/".join(sizes))


def mean_of(stats: Sequence[Stat]) -> Stat:
    """The mean of several estimates (over layers, say), replicate by replicate."""
    return combine(lambda *xs: sum(xs) / len(xs), *stats)


def stat_of(row: Mapping[str, Any], column: str, n: str = "") -> Stat:
    """A table row's estimate in `column` with its replicates (analysis.tables.REPLICATES)."""
    reps = (row.get("replicates") or {}).get(column) if "replicates" in row else None
    return Stat(float(row[column]), None if reps is None else np.asarray(reps, dtype=np.float64), n)


# ---------------------------------------------------------------- contrasts and their intervals

@dataclass(frozen=True)
class Contrast:
    """A difference whose claimed direction is positive: `stat` > `margin`."""

    what: str
    stat: Stat
    margin: float = 0.0


@dataclass(frozen=True)
class Judged:
    """A contrast with its interval at `level` and where that interval lies against its margin."""

    contrast: Contrast
    low: float
    high: float
    level: float
    outcome: str    # above | below | within | no interval
    points: bool    # decided on the point estimate (the table has no resamples)

    def text(self) -> str:
        c = self.contrast
        margin = f" vs margin {c.margin:g}" if c.margin else ""
        if self.points:
            return f"{c.what} {_fmt(c.stat.value)}{margin} (point estimate: no resamples)"
        if self.outcome == MISSING:
            return f"{c.what} {_fmt(c.stat.value)} (no interval)"
        return f"{c.what} {_fmt(c.stat.value)} [{_fmt(self.low)}, {_fmt(self.high)}]{margin}"


def family_level(level: float, m: int) -> float:
    """Bonferroni: the level of each of m intervals that hold together at `level`."""
    return 1.0 - (1.0 - level) / max(1, m)


def judge(contrast: Contrast, level: float, method: str) -> Judged:
    """The contrast's interval (the plan's `method` at `level`) from its replicates, and its outcome."""
    s, margin = contrast.stat, contrast.margin
    if s.reps is not None and len(s.reps) == 0 and math.isfinite(s.value):  # made without resamples
        outcome = ABOVE if s.value > margin else BELOW if s.value < margin else WITHIN
        return Judged(contrast, math.nan, math.nan, level, outcome, True)
    low, high = (math.nan, math.nan) if s.reps is None else bootstrap_interval(s.reps, level, s.value, method)
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(s.value)):
        return Judged(contrast, math.nan, math.nan, level, MISSING, False)
    outcome = ABOVE if low > margin else BELOW if high < margin else WITHIN
    return Judged(contrast, low, high, level, outcome, False)


# ---------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Rule:
    """One seed's part of a claim: a rule (RULES) over its contrasts. falls: the steps between consecutive
    layers (claimed: no rise above the margin, i.e. stated as rises) then first minus last; dip: per inner
    layer, (first minus it, last minus it)."""

    kind: str
    contrasts: tuple[Contrast, ...]

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"unknown rule {self.kind!r}: {', '.join(RULES)}")


def decide(rule: Rule, judged: Sequence[Judged]) -> tuple[str, str]:
    """(verdict, reason) of one seed's part from its judged contrasts (module docstring)."""
    out = [j.outcome for j in judged]
    if rule.kind == "ordered" or rule.kind == "every":
        below = [j for j in judged if j.outcome == BELOW]
        if below:
            return FAILS, "the opposite: " + _texts(below)
        if all(o == ABOVE for o in out):
            return HOLDS, _texts(judged)
        return INCONCLUSIVE, "not beyond the interval: " + _texts([j for j in judged if j.outcome != ABOVE])
    if rule.kind == "falls":
        steps, overall = judged[:-1], judged[-1]
        rises = [j for j in steps if j.outcome == ABOVE]
        if rises or overall.outcome == BELOW:
            return FAILS, ("rises: " + _texts(rises) if rises else "") + (
                ("; " if rises else "") + "the last layer above the first: " + overall.text()
                if overall.outcome == BELOW else "")
        if overall.outcome == ABOVE and all(j.outcome != MISSING for j in steps):
            return HOLDS, "falls: " + overall.text() + f"; no step rises beyond its interval ({len(steps)} steps)"
        return INCONCLUSIVE, ("no interval: " + _texts([j for j in steps if j.outcome == MISSING])
                              if any(j.outcome == MISSING for j in steps) else "not beyond the interval: " + overall.text())
    # dip: pairs (first - inner, last - inner) per inner layer
    pairs = [(judged[i], judged[i + 1]) for i in range(0, len(judged), 2)]
    dips = [p for p in pairs if p[0].outcome == ABOVE and p[1].outcome == ABOVE]
    if dips:
        return HOLDS, "below both ends: " + _texts(dips[0])
    if all(p[0].outcome == BELOW or p[1].outcome == BELOW for p in pairs):
        return FAILS, "no inner layer below both ends: " + _texts([p[0] if p[0].outcome == BELOW else p[1]
                                                                   for p in pairs])
    return INCONCLUSIVE, "no inner layer below both ends beyond the intervals, none clearly above an end: " + \
        _texts([j for p in pairs for j in p if j.outcome != BELOW][:4])


def _texts(judged: Sequence[Judged], most: int = 4) -> str:
    judged = list(judged)
    more = f" (and {len(judged) - most} more)" if len(judged) > most else ""
    return "; ".join(j.text() for j in judged[:most]) + more


# ---------------------------------------------------------------- a claim's parts

@dataclass
class Part:
    """One part of a claim: a rule per seed, or the reason it is not measured."""

    name: str
    seeds: dict[Any, Rule] = field(default_factory=dict)
    missing: str | None = None


@dataclass(frozen=True)
class Line:
    """One judged contrast of a claim, as claims.csv holds it."""

    part: str
    seed: Any
    judged: Judged
    seed_verdict: str


@dataclass(frozen=True)
class PartVerdict:
    name: str
    verdict: str
    reason: str


def across_seeds(per_seed: Mapping[Any, tuple[str, str]]) -> tuple[str, str]:
    """A part's verdict from its verdict in each seed: unanimous, else inconclusive (said why)."""
    verdicts = {seed: v for seed, (v, _) in per_seed.items()}
    label = lambda seed: f"seed {seed}"  # noqa: E731
    if verdicts and all(v == HOLDS for v in verdicts.values()):
        return HOLDS, "; ".join(f"{label(s)}: {r}" for s, (_, r) in per_seed.items())
    if verdicts and all(v == FAILS for v in verdicts.values()):
        return FAILS, "; ".join(f"{label(s)}: {r}" for s, (_, r) in per_seed.items())
    held = [s for s, v in verdicts.items() if v == HOLDS]
    failed = [s for s, v in verdicts.items() if v == FAILS]
    if held and failed:
        return INCONCLUSIVE, (f"the seeds disagree: holds in {', '.join(map(label, held))}, does not hold in "
                              f"{', '.join(map(label, failed))} ({'; '.join(per_seed[s][1] for s in failed)})")
    return INCONCLUSIVE, "; ".join(f"{label(s)}: {'undecided, ' if v == INCONCLUSIVE else v + ': '}{per_seed[s][1]}"
                                   for s, v in verdicts.items())


def evaluate(parts: Sequence[Part], level: float, method: str) -> tuple[list[PartVerdict], list[Line], int, float]:
    """Judge every part's contrasts at the claim's Bonferroni level (m = the most contrasts any one seed
    reads) and decide each part per seed and across seeds. Returns (part verdicts, judged lines, m, the
    level used)."""
    per_seed: dict[Any, int] = {}
    for part in parts:
        for seed, rule in part.seeds.items():
            per_seed[seed] = per_seed.get(seed, 0) + len(rule.contrasts)
    m = max(per_seed.values(), default=1)
    used = family_level(level, m)
    verdicts, lines = [], []
    for part in parts:
        if part.missing is not None or not part.seeds:
            verdicts.append(PartVerdict(part.name, NOT_MEASURED, part.missing or f"{part.name}: not measured"))
            continue
        decided = {}
        for seed, rule in part.seeds.items():
            judged = [judge(c, used, method) for c in rule.contrasts]
            decided[seed] = decide(rule, judged)
            lines += [Line(part.name, seed, j, decided[seed][0]) for j in judged]
        verdict, reason = across_seeds(decided)
        points = any(line.judged.points for line in lines if line.part == part.name)
        verdicts.append(PartVerdict(part.name, verdict, f"{part.name}: {reason}"
                                    + (" [point estimates: the table was made without resamples]" if points else "")))
    return verdicts, lines, m, used


def overall(parts: Sequence[PartVerdict]) -> tuple[str, str]:
    """A claim's verdict from its parts': does not hold when one part does not, not measured when one part
    is not (and none fails), inconclusive when one is, else holds."""
    for verdict in (FAILS, NOT_MEASURED, INCONCLUSIVE):
        found = [p.reason for p in parts if p.verdict == verdict]
        if found:
            return verdict, " | ".join(found)
    return HOLDS, " | ".join(p.reason for p in parts)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "nan"
    size = abs(value)
    return f"{value:.1f}" if size >= 10 else f"{value:.3f}" if size >= 0.01 or size == 0 else f"{value:.2e}"

"""What a claim is decided on: its criteria (margins, tolerances, the resampling level), the verdict it reaches, and the shapes its parts take (a curve that falls, contrasts that hold in every seed, ordered ends)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig

from analysis.report.estimates import Curves
from analysis.stats import verdicts as rules
from analysis.stats.verdicts import HOLDS, INCONCLUSIVE, NOT_MEASURED, Contrast, Line, Part, Rule


@dataclass(frozen=True)
class Verdict:
    verdict: str  # holds | does not hold | inconclusive | not measured
    numbers: str  # this run's numbers behind the verdict (seed means, for reading)
    reason: str   # what decided it
    lines: tuple[Line, ...] = ()  # every judged contrast (claims.csv)
    parts: tuple[rules.PartVerdict, ...] = ()
    contrasts: int = 0            # m: the contrasts one seed reads (Bonferroni)
    level: float = math.nan       # the level of each contrast's interval


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the checks (conf/analysis/default.yaml, `report.claims`), the analysis settings that
    pick the main estimate out of a table, and the bootstrap's level and interval method."""

    mi_tolerance: float = 0.02
    change_tolerance: float = 0.002
    mt_keep_share: float = 0.5
    dropout_excess_factor: float = 0.5
    measure: str = "pwcca"
    n_clusters: int | None = None
    k: int | None = None
    metric: str | None = None
    level: float = 0.95
    method: str = "normal"

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "Criteria":
        c, a = cfg.analysis.report.claims, cfg.analysis
        return cls(mi_tolerance=float(c.mi_tolerance), change_tolerance=float(c.change_tolerance),
                   mt_keep_share=float(c.mt_keep_share), dropout_excess_factor=float(c.dropout_excess_factor),
                   measure=str(c.measure), n_clusters=int(a.mi.n_clusters), k=int(a.neighbours.k),
                   metric=str(a.neighbours.metric), level=float(a.bootstrap.level), method=str(a.bootstrap.method))


def finish(parts: Sequence[Part], numbers: Sequence[str], crit: Criteria,
           requires: Mapping[str, str] | None = None) -> Verdict:
    """The claim's verdict from its parts (analysis.stats.verdicts.evaluate); `requires`: part -> the part it is
    judged only after (a token-dropout part after its base objective's excess)."""
    verdicts, lines, m, level = rules.evaluate(parts, crit.level, crit.method)
    by_name = {v.name: v for v in verdicts}
    for i, v in enumerate(verdicts):
        base = (requires or {}).get(v.name)
        if base is not None and by_name[base].verdict != HOLDS and v.verdict != NOT_MEASURED:
            verdicts[i] = rules.PartVerdict(v.name, INCONCLUSIVE, f"{v.name}: not judged, since {base} does not "
                                                                  "hold beyond its intervals")
    verdict, reason = rules.overall(verdicts)
    if lines and not all(line.judged.points for line in lines):
        reason += f" (intervals at {100 * level:.3g}%: Bonferroni over {m} contrasts per seed)"
    return Verdict(verdict, "; ".join(n for n in numbers if n) or "—", reason, lines=tuple(lines), parts=tuple(verdicts),
                   contrasts=m, level=level)


def layer(key: Any) -> str:
    return f"layer {key}"


def transition(key: Any) -> str:
    """A change row's key (its layer_to) as the transition it measures."""
    return f"{key - 1}→{key}"


def falls(name: str, curves: Curves, tolerance: float, table: str, label: Callable[[Any], str] = layer) -> Part:
    """Per seed: no step from one key to the next rises by more than `tolerance` beyond its interval, and
    the first lies above the last beyond its interval (rule falls); `label` names a key."""
    if not curves or any(len(c) < 2 for c in curves.values()):
        return Part(name, missing=f"{name}: not measured at 2 or more layers (metrics/{table}.csv)")
    seeds = {}
    for seed, c in curves.items():
        keys = list(c)
        steps = [Contrast(f"rise from {label(a)} to {label(b)}", c[b] - c[a], tolerance) for a, b in zip(keys, keys[1:])]
        seeds[seed] = Rule("falls", (*steps, Contrast(f"{label(keys[0])} − {label(keys[-1])}",
                                                      c[keys[0]] - c[keys[-1]])))
    return Part(name, seeds)


def ordered(name: str, seeds: Mapping[Any, Contrast], missing: str) -> Part:
    return Part(name, {s: Rule("ordered", (c,)) for s, c in seeds.items()}) if seeds else Part(name, missing=missing)


def every(name: str, seeds: Mapping[Any, Sequence[Contrast]], missing: str) -> Part:
    seeds = {s: cs for s, cs in seeds.items() if cs}
    return Part(name, {s: Rule("every", tuple(cs)) for s, cs in seeds.items()}) if seeds else Part(name, missing=missing)


def ends(curves: Curves, margin: float, rising: bool) -> dict[Any, Contrast]:
    """Per seed: the last layer minus the first (`rising`), or the first minus the last."""
    out = {}
    for seed, c in curves.items():
        if len(c) >= 2:
            first, last = list(c)[0], list(c)[-1]
            out[seed] = (Contrast(f"layer {last} − layer {first}", c[last] - c[first], margin) if rising
                         else Contrast(f"layer {first} − layer {last}", c[first] - c[last], margin))
    return out

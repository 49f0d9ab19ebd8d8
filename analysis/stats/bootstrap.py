"""Bootstrap intervals over probe sentences (Efron & Tibshirani 1993, ch. 12-13), from one resampling
plan that every table shares.

The probe sentences are the independent units: tokens of one sentence share its context, so the
resampling draws whole sentences, never single tokens. One plan serves every table, model, layer and
bucket (`analysis.bootstrap`): each probe sentence belongs to one of `groups` groups, by a seeded hash of
its id alone (`unit_of`), and resample r draws `groups` groups with replacement (multinomial counts from
a generator seeded with (seed, r) alone, `draws`). So resample r holds the same sentences, the same
number of times, wherever it is used -- two layers of one model, two models, two buckets, a snapshot and
the finished model, a table of 20 resamples and one of 200 (its first 20 are the same) -- and the
difference of two estimates made on the same probe sentences has its own paired replicates: the
difference under each resample. Groups of sentences dealt by a hash are i.i.d. like the sentences
themselves (a cluster bootstrap); with more groups than sentences the counts per sentence approach
independent Poisson(1) draws (the Poisson bootstrap, Hanley & MacGibbon 2006). Groups bound what the CCA
family keeps: one d x d product per group, not per sentence.

Every estimate is recomputed on each resample (its *replicates*, kept beside the table: analysis.tables);
the interval (`analysis.bootstrap.method`, level `analysis.bootstrap.level`, 0.95) is
- `normal` (the default): the estimate +- z * the replicates' standard deviation. Centred on the
  estimate whatever the replicates' centre: a resample repeats whole sentences, which for the
  estimates that depend on the number of *distinct* rows (plug-in MI and its chance level, CCA
  distances near n = 10 d) shifts every replicate the same way -- on the default run the percentile
  intervals of the corrected MI lay wholly below their estimate. That shift is a property of
  resampling, not noise of the estimate; the spread is what the interval is for;
- `percentile`: the (1 - level) / 2 and (1 + level) / 2 percentiles of the replicates;
- `basic`: the percentile interval reflected about the estimate (2 e - q_high, 2 e - q_low).

Kept cheap by sufficient statistics, so that a resample is a weighted sum and no pass over the tokens:
- the CCA family (PWCCA, SVCCA, CKA) needs only the covariances: each group's sums of x, y, x x^T,
  y y^T and x y^T, combined with the resample's counts (`resampled_covariances`);
- MI from a fixed clustering: the plug-in MI of the contingency counts reweighted by the counts;
- neighbours: per-query values under the resample's weights of the queries and of the pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.stats.cca import Covariances, Spectrum
from pipeline.config.analysis import METHODS, setting

NO_INTERVAL = (float("nan"), float("nan"))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Plan:
    """How one table's replicates are drawn: `resamples` (0: none, ci columns nan), seed, level, groups,
    method (normal | percentile | basic). Every table's plan has the same seed and groups, so resample r
    is the same in all of them (module docstring)."""

    resamples: int
    seed: int
    level: float
    groups: int
    method: str = "normal"

    def describe(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level, "groups": self.groups,
                "method": self.method, "unit": "group of probe sentences (a seeded hash of the sentence id)"}

    def units(self, sentence_ids: np.ndarray) -> np.ndarray:
        """The group (0..groups - 1) of each row, from its sentence id (`unit_of`)."""
        return unit_of(sentence_ids, self.groups, self.seed)

    def draws(self) -> np.ndarray | None:
        """(resamples, groups) counts of every resample (`draws`); None when resamples is 0."""
        return draws(self.groups, self.resamples, self.seed) if self.resamples else None

    def interval(self, values, estimate: float) -> tuple[float, float]:
        """This plan's interval of `estimate` from its replicates `values`."""
        return interval(values, self.level, estimate, self.method)

    def summary(self, estimate: float, values: np.ndarray | None, prefix: str = "") -> dict:
        """The columns `<prefix>ci_low`, `<prefix>ci_high` of `estimate` from its replicates (nan without)."""
        low, high = NO_INTERVAL if values is None else self.interval(values, estimate)
        return {f"{prefix}ci_low": low, f"{prefix}ci_high": high}


def plan(cfg: DictConfig, table: str) -> Plan:
    """The bootstrap settings of `table` (analysis.bootstrap.*), checked, errors naming the setting."""
    resamples = setting(cfg, f"analysis.bootstrap.resamples.{table}")
    seed, level = setting(cfg, "analysis.bootstrap.seed"), setting(cfg, "analysis.bootstrap.level")
    groups, method = setting(cfg, "analysis.bootstrap.groups"), setting(cfg, "analysis.bootstrap.method")
    return Plan(int(resamples), int(seed), float(level), int(groups), str(method))


def unit_of(sentence_ids: np.ndarray, groups: int, seed: int) -> np.ndarray:
    """(n,) the group of each row: a seeded hash (splitmix64) of its sentence id, modulo `groups`. A
    function of the id alone, so every row of a sentence, in any table, subset or dump, is in one group."""
    ids = np.asarray(sentence_ids).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = ids * _GOLDEN + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(groups)).astype(np.int64)


def draws(groups: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, groups) multinomial counts: how often each group is drawn in each resample. Resample r
    comes from a generator seeded with (seed, r) alone, so it is the same however many are drawn."""
    if groups < 2:
        raise ValueError(f"a bootstrap over {groups} group(s): need at least 2")
    p = np.full(groups, 1.0 / groups)
    return np.stack([np.random.default_rng([seed, 0xB007, r]).multinomial(groups, p) for r in range(resamples)]) \
        if resamples else np.zeros((0, groups), dtype=np.int64)


def interval(values: np.ndarray | list[float], level: float, estimate: float | None = None,
             method: str = "normal") -> tuple[float, float]:
    """The `method` interval (module docstring) at `level` of `estimate` from its replicates (nan ones,
    e.g. an empty resample, dropped); `normal` and `basic` need the estimate."""
    if method not in METHODS:
        raise ValueError(f"unknown bootstrap interval method {method!r}: {' | '.join(METHODS)}")
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2 or (method != "percentile" and (estimate is None or not np.isfinite(estimate))):
        return NO_INTERVAL
    if method == "normal":
        half = float(_z(level) * values.std(ddof=1))
        return float(estimate) - half, float(estimate) + half
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    if method == "basic":
        return 2 * float(estimate) - float(high), 2 * float(estimate) - float(low)
    return float(low), float(high)


def _z(level: float) -> float:
    """The standard normal quantile of (1 + level) / 2."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 * (1 + level)))


def weighted_means(values: np.ndarray, unit: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(resamples,) means of per-row `values` (n,) under each resample's unit counts `draws` (B, G);
    rows with nan values are left out of their mean (nan when a resample keeps none)."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    g = draws.shape[1]
    sums = np.bincount(unit[ok], weights=values[ok], minlength=g)
    ns = np.bincount(unit[ok], minlength=g).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (draws @ sums) / (draws @ ns)


# ---------------------------------------------------------------- the CCA family: covariances

def _by_unit(unit: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """(order of the rows that puts each unit's rows together, (n_units + 1,) bounds of each unit's run)."""
    order = np.argsort(unit, kind="stable")
    return order, np.searchsorted(unit[order], np.arange(n_units + 1))


def unit_products(a: torch.Tensor, b: torch.Tensor, bounds: np.ndarray, draws: np.ndarray) -> torch.Tensor:
    """(B, d_a, d_b): Σ_g draws[r, g] Σ_{i in unit g} a_i b_i^T for every resample r, from a (n, d_a)
    and b (n, d_b) whose rows are ordered by unit (unit g: rows bounds[g]:bounds[g + 1]): each unit's
    product once (n x d_a x d_b in all), then one weighted sum per block of units."""
    w = torch.as_tensor(draws, dtype=a.dtype, device=a.device)  # (B, G)
    out = torch.zeros(len(draws), a.shape[1], b.shape[1], dtype=a.dtype, device=a.device)
    chunk = max(1, (1 << 22) // max(1, a.shape[1] * b.shape[1]))  # units per block: ~32 MiB of products
    block = torch.empty(min(chunk, draws.shape[1]), a.shape[1], b.shape[1], dtype=a.dtype, device=a.device)
    for start in range(0, draws.shape[1], chunk):
        stop = min(start + chunk, draws.shape[1])
        for g in range(start, stop):
            torch.matmul(a[bounds[g]:bounds[g + 1]].T, b[bounds[g]:bounds[g + 1]], out=block[g - start])
        out += (w[:, start:stop] @ block[:stop - start].reshape(stop - start, -1)).reshape(out.shape)
    return out


class Resampled:
    """One view's resampled sums, shared by all its pairs: n_r, Σ x_i, Σ x_i x_i^T per resample
    (its rows kept in unit order, for the cross products with the other view)."""

    def __init__(self, x: torch.Tensor, unit: np.ndarray, draws: np.ndarray) -> None:
        w = torch.as_tensor(draws, dtype=x.dtype, device=x.device)
        g = draws.shape[1]
        self.order, self.bounds = _by_unit(unit, g)
        x = x[torch.as_tensor(self.order, device=x.device)]
        sizes = torch.as_tensor(np.diff(self.bounds), dtype=x.dtype, device=x.device)
        sums = torch.stack([x[self.bounds[i]:self.bounds[i + 1]].sum(0) for i in range(g)])
        self.x, self.unit, self.draws = x, unit, draws
        self.n = w @ sizes              # (B,)
        self.sum = w @ sums             # (B, d)
        self.square = unit_products(x, x, self.bounds, draws)  # (B, d, d)
        self._spectra: dict[int, Spectrum] = {}
    def covariance(self, r: int) -> torch.Tensor:
        n = self.n[r]
        return (self.square[r] - torch.outer(self.sum[r], self.sum[r]) / n) / (n - 1)

    def spectrum(self, r: int) -> Spectrum:
        """Resample r's covariance, decomposed once for every pair and measure it enters."""
        if r not in self._spectra:
            self._spectra[r] = Spectrum.of(self.covariance(r))
        return self._spectra[r]


def resampled_covariances(x: Resampled, y: Resampled, cross: torch.Tensor | None = None) -> list[Covariances]:
    """The covariances of x and y on every resample (the views' rows must be the same tokens);
    `cross` (B, d1, d2): their resampled products, when already formed (else formed here)."""
    if cross is None:
        if not np.array_equal(x.unit, y.unit) or x.draws is not y.draws and not np.array_equal(x.draws, y.draws):
            raise ValueError("resampled views of different units or draws: they must hold the same tokens")
        cross = unit_products(x.x, y.x, x.bounds, x.draws)
    out = []
    for r in range(len(x.draws)):
        n = x.n[r]
        sxy = (cross[r] - torch.outer(x.sum[r], y.sum[r]) / n) / (n - 1)
        out.append(Covariances(x.spectrum(r), sxy, y.spectrum(r), int(round(float(n)))))
    return out


# ---------------------------------------------------------------- MI of a fixed clustering

def _xlogx(v: np.ndarray) -> float:
    v = v[v > 0]
    return float((v * np.log(v)).sum())


def resampled_mi(labels: np.ndarray, clusters: np.ndarray, unit: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(B,) plug-in MI (nats) of labels x clusters with each row weighted by its unit's count: the
    non-empty (label, cluster, unit) cells once, then per resample the weighted counts of the
    (label, cluster) cells and their margins, MI = (Σ n_ab log n_ab - Σ n_a log n_a - Σ n_b log n_b
    + n log n) / n."""
    g = draws.shape[1]
    ia = np.unique(labels, return_inverse=True)[1].ravel().astype(np.int64)
    ib = np.unique(clusters, return_inverse=True)[1].ravel().astype(np.int64)
    nb = int(ib.max()) + 1
    cell_of, rows_in = np.unique((ia * nb + ib) * g + unit, return_counts=True)
    pair_id, pair_of = np.unique(cell_of // g, return_inverse=True)
    unit_of, la, cb = cell_of % g, pair_id // nb, pair_id % nb
    out = np.empty(len(draws))
    for r, w in enumerate(draws):
        n_ab = np.bincount(pair_of, weights=rows_in * w[unit_of], minlength=len(pair_id))
        n = float(n_ab.sum())
        mi = _xlogx(n_ab) - _xlogx(np.bincount(la, weights=n_ab)) - _xlogx(np.bincount(cb, weights=n_ab))
        out[r] = max(0.0, (mi + n * np.log(n)) / n)
    return out

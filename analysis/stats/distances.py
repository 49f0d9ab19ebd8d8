"""The distance measures by name, as the per-model measurements (change, influence) call them, and
running moments for paired views too large (or too many) to keep in memory.

Every measurement reports a symmetric distance: PWCCA (asymmetric by definition, Morcos et al.
2018) enters as the mean of its two directions; SVCCA (Raghu et al. 2017) and linear CKA
(Kornblith et al. 2019) are symmetric already. See analysis.similarity for the definitions; the
ridge and SVCCA's kept variance are the settings of `analysis.similarity`.

Every distance comes with its no-correspondence level at the same n: the same two views with the
rows of the second one permuted (one seeded permutation), measured the same way (`paired`). Row
permutations leave each view's covariance as it is, so only the cross-covariance is formed again,
and each view's decomposition is shared by the distance and its shuffled level.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.stats import bootstrap
from analysis.stats.cca import Covariances, Spectrum, View, centre, distance_from_covariances
from pipeline.config.analysis import MEASURES
from pipeline.errors import PipelineError


def check_measure(measure: str, key: str) -> str:
    """`measure` when it names a distance measure; else an error naming the setting `key`."""
    if measure not in MEASURES:
        raise PipelineError(f"setting {key}: unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")
    return measure


def distance(measure: str, cov: Covariances, cfg: DictConfig) -> float:
    """The symmetric distance `measure` from the covariances of two views."""
    s = cfg.analysis.similarity
    # The group sizes are checked by the callers (analysis.buckets): n > d is all CCA itself needs.
    return distance_from_covariances(measure, cov, float(s.ridge), float(s.svcca_variance), min_ratio=1.0)


def paired(x: View, y: View, perm: np.ndarray, device: torch.device | str | None = None
           ) -> tuple[Covariances, Covariances]:
    """Covariances of x (n, d1) and y (n, d2), and of x and y[perm] (the no-correspondence level):
    the same Σxx and Σyy (decomposed once, as Spectra), two cross-covariances."""
    xc, yc = centre(x, device=device), centre(y, device=device)
    n = xc.shape[0]
    if yc.shape[0] != n or len(perm) != n:
        raise ValueError(f"x has {n} rows, y {yc.shape[0]}, the permutation {len(perm)}: expected the same")
    sx, sy = Spectrum.of(xc.T @ xc / (n - 1)), Spectrum.of(yc.T @ yc / (n - 1))
    index = torch.as_tensor(np.asarray(perm), device=yc.device)
    return (Covariances(sx, xc.T @ yc / (n - 1), sy, n), Covariances(sx, xc.T @ yc[index] / (n - 1), sy, n))


def replicates(measures: list[str], x: View, y: View, sentence_ids: np.ndarray, cfg: DictConfig,
               boot: bootstrap.Plan, device: torch.device | str | None = None,
               x_resampled: bootstrap.Resampled | None = None) -> tuple[dict[str, np.ndarray | None],
                                                                       bootstrap.Resampled | None]:
    """Every measure's distance between x (n, d1) and y (n, d2) (rows: the same tokens, of the sentences
    `sentence_ids` (n,)) under each resample of the shared plan `boot` (analysis.bootstrap): resampled
    covariances from per-group sums, x's decompositions shared by the measures. Returns ({measure:
    (resamples,) replicates}, y's resampled sums, to pass back as `x_resampled` when y is the next
    pair's x); ({measure: None}, None) when boot.resamples is 0."""
    if not boot.resamples:
        return {m: None for m in measures}, None
    unit, draws = boot.units(sentence_ids), boot.draws()
    rx = x_resampled or bootstrap.Resampled(centre(x, device=device), unit, draws)
    ry = bootstrap.Resampled(centre(y, device=device), unit, draws)
    covs = bootstrap.resampled_covariances(rx, ry)
    return {m: np.array([distance(m, c, cfg) for c in covs]) for m in measures}, ry


class Moments:
    """Running float64 sums of paired rows (a_i, b_i): enough for the covariances of the two views.

    `add` takes (m, d) tensors of any float dtype on the moments' device; memory stays O(d^2).
    Rows are shifted by the first batch's means before they are summed, so that features whose
    mean is large next to their spread do not lose their precision to cancellation.
    """

    def __init__(self, d_a: int, d_b: int | None = None, device: torch.device | str = "cpu") -> None:
        d_b = d_a if d_b is None else d_b
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.shift_a = self.shift_b = None
        self.sum_a, self.sum_b = torch.zeros(d_a, **kw), torch.zeros(d_b, **kw)
        self.aa, self.bb, self.ab = torch.zeros(d_a, d_a, **kw), torch.zeros(d_b, d_b, **kw), torch.zeros(d_a, d_b, **kw)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        if self.shift_a is None:
            self.shift_a, self.shift_b = a.mean(0), b.mean(0)
        a, b = a - self.shift_a, b - self.shift_b
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.aa += a.T @ a
        self.bb += b.T @ b
        self.ab += a.T @ b

    def covariances(self) -> Covariances:
        """The centred covariances (divided by n - 1) of the rows added so far."""
        if self.n < 2:
            raise ValueError(f"covariances need at least 2 rows, have {self.n}")
        ma, mb = self.sum_a / self.n, self.sum_b / self.n
        scale = 1.0 / (self.n - 1)
        return Covariances(sxx=(self.aa - self.n * torch.outer(ma, ma)) * scale,
                           sxy=(self.ab - self.n * torch.outer(ma, mb)) * scale,
                           syy=(self.bb - self.n * torch.outer(mb, mb)) * scale, n=self.n)


def distance_from_moments(measure: str, moments: Moments, cfg: DictConfig, key: str) -> float:
    """The symmetric distance `measure` between the two views accumulated in `moments`."""
    return distance(check_measure(measure, key), moments.covariances(), cfg)

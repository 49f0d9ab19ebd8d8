"""Distances between two views of the same samples: PWCCA, SVCCA and linear CKA (METHODS.md §4-6).

A view is an (n_samples, n_features) array: n token occurrences (the same in both views) by d
features. Features are centred first; every measure depends only on the covariances Σxx (d1, d1),
Σxy (d1, d2), Σyy (d2, d2), so after the Gram products all the work is d x d (decompositions of
these, never the n x d canonical variates), and each view's covariance is decomposed once
(`Spectrum`) for all its pairs. Torch, float64 unless `dtype` says otherwise, on the inputs' device
(CUDA tensors stay on their GPU; numpy arrays run on the CPU). Rank-deficient views (duplicated or
constant features) stay finite without a ridge: CCA works in the directions of each view above its
numerical rank (eigenvalues above λ_max x d x eps, numpy's matrix_rank rule), so a view with one feature
at 1000x the others' spread -- the outlier dimensions of real Transformers -- is measured without the
~1e-3 bias a ridge of 1e-6 x the mean variance gave it (tests/unit/test_similarity.py). A ridge can
still be asked for (analysis.similarity.ridge, relative to the mean variance; 0 by default). A view
without any variance shares nothing with the other: distance 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config.analysis import MEASURES

RIDGE = 0.0            # default ridge, relative to the mean variance (setting analysis.similarity.ridge)


SVCCA_KEEP = 0.99      # default share of each view's variance SVCCA keeps (analysis.similarity.svcca_variance)


View = np.ndarray | torch.Tensor


def check_samples(n: int, d1: int, d2: int, min_ratio: float = 1.0) -> None:
    """Raise ValueError unless n > max(d1, d2) and n >= min_ratio * max(d1, d2)."""
    if not min_ratio > 0:
        raise ValueError(f"min_ratio={min_ratio!r}: expected a positive number of samples per feature")
    d = max(d1, d2)
    least = max(d + 1, math.ceil(min_ratio * d))
    if n < least:
        raise ValueError(f"{n} samples for views of {d1} and {d2} features: need at least {least} "
                         f"(n must exceed max(d1, d2) = {d} and reach min_ratio = {min_ratio} times it), "
                         f"{least - n} samples short")


def _unit(value: float) -> float:
    """Clamp into [0, 1] what rounding pushed out of it."""
    return min(max(value, 0.0), 1.0)


def centre(x: View, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """A new (n, d) tensor of `x` (n, d) in `dtype` with every feature's mean removed. The first
    sample is subtracted before the mean, so a constant feature becomes exactly zero."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device or x.device, dtype=dtype, copy=True)
    else:
        t = torch.from_numpy(np.array(x, dtype=torch.empty((), dtype=dtype).numpy().dtype))
        t = t.to(device or "cpu")
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"a view must be an (n_samples, n_features) array with n >= 2, got shape {tuple(t.shape)}")
    t -= t[0].clone()
    t -= t.mean(0)
    return t


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One view's covariance and its eigendecomposition: computed once per view, reused for every
    pair the view is part of (the ridge is applied when it is used, so it is not part of it)."""

    matrix: torch.Tensor        # (d, d) Σ
    eigenvalues: torch.Tensor   # (d,) descending, rounding below zero clamped to 0
    eigenvectors: torch.Tensor  # (d, d), column i belongs to eigenvalues[i]

    @classmethod
    def of(cls, matrix: torch.Tensor | Spectrum) -> Spectrum:
        if isinstance(matrix, Spectrum):
            return matrix
        if not torch.isfinite(matrix).all():
            raise ValueError("a covariance holds NaN or infinite values: the view has non-finite entries")
        values, vectors = torch.linalg.eigh(matrix)  # ascending; symmetric PSD, so eigh, not a general inverse
        return cls(matrix, values.flip(0).clamp_min(0), vectors.flip(1))

    @property
    def d(self) -> int:
        return self.matrix.shape[0]

    @property
    def rank(self) -> int:
        """Numerical rank, by numpy's matrix_rank rule: eigenvalues above λ_max x d x eps."""
        tol = float(self.eigenvalues[0]) * self.d * torch.finfo(self.eigenvalues.dtype).eps
        return int((self.eigenvalues > tol).sum())

    def kept(self, keep: float) -> int:
        """SVCCA's reduction: the fewest top directions explaining the share `keep` of the variance."""
        total = self.eigenvalues.sum()
        if total <= 0:
            return 1
        share = torch.cumsum(self.eigenvalues, 0) / total
        return min(int((share < keep - 1e-12).sum()) + 1, self.d)

    def whitening(self, ridge: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Basis (d, k') of the top k' = min(k, rank) eigenvectors and the scales (λ_i + r)^-1/2 (k',)
        that whiten the view inside it; r = ridge x the mean of those eigenvalues (0 by default). The
        directions beyond the numerical rank (`rank`) hold rounding, not variance: they are left out,
        which keeps rank-deficient views finite without biasing the others (a ridge r shrinks every
        correlation by about sqrt(λ / (λ + r)), most in the directions of least variance)."""
        k = min(k, self.rank)
        values = self.eigenvalues[:k]
        mean = float(values.mean()) if k else 0.0
        r = ridge * (mean if mean > 0 else 1.0)
        return self.eigenvectors[:, :k], (values + r).rsqrt()


@dataclass(frozen=True, eq=False)
class Covariances:
    """Covariances of two centred views over the same n samples (normalised by n - 1). Σxx and Σyy
    may be Spectra, so that a view's decomposition is shared by all its pairs."""

    sxx: torch.Tensor | Spectrum  # (d1, d1)
    sxy: torch.Tensor             # (d1, d2)
    syy: torch.Tensor | Spectrum  # (d2, d2)
    n: int

    def swapped(self) -> Covariances:
        return Covariances(self.syy, self.sxy.T, self.sxx, self.n)

    def spectra(self, min_ratio: float = 1.0) -> tuple[Spectrum, Spectrum]:
        """Both views' Spectra, after checking n against the widths (`check_samples`)."""
        sx, sy = Spectrum.of(self.sxx), Spectrum.of(self.syy)
        check_samples(self.n, sx.d, sy.d, min_ratio)
        return sx, sy


def covariances(x: View, y: View, dtype: torch.dtype = torch.float64, min_ratio: float = 1.0,
                device: torch.device | str | None = None) -> Covariances:
    """Σxx, Σxy, Σyy of x (n, d1) and y (n, d2), centred, on `device` (default: the first CUDA
    input's device, else the CPU); ValueError when n is too small (`check_samples`)."""
    device = device or next((v.device for v in (x, y) if isinstance(v, torch.Tensor) and v.device.type != "cpu"),
                            "cpu")
    xc, yc = centre(x, dtype, device), centre(y, dtype, device)
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(f"the views must hold the same samples: x has {xc.shape[0]} rows, y has {yc.shape[0]}")
    n = xc.shape[0]
    check_samples(n, xc.shape[1], yc.shape[1], min_ratio)
    return Covariances(xc.T @ xc / (n - 1), xc.T @ yc / (n - 1), yc.T @ yc / (n - 1), n)


@dataclass(frozen=True, eq=False)
class CCA:
    """Canonical correlation analysis of two views (in SVCCA: of the kept dimensions)."""

    correlations: torch.Tensor  # (k,) descending, in [0, 1]; k = min(d1, d2, rank X, rank Y)
    x_directions: torch.Tensor  # (d1, k): variates h = X_c @ x_directions have unit variance
    y_directions: torch.Tensor  # (d2, k): the same for Y, paired with x_directions column by column
    x_projections: torch.Tensor  # (k, d1): <h_i, x_j> / (n - 1), the canonical variates against X's neurons
    y_projections: torch.Tensor  # (k, d2)
    n: int


def _cca(sx: Spectrum, sxy: torch.Tensor, sy: Spectrum, n: int, ridge: float, kx: int, ky: int) -> CCA:
    """CCA inside the top kx / ky eigendirections of each view (all of them: plain CCA; fewer: SVCCA).
    One code path for both argument orders: the SVD returns min(kx, ky) pairs whichever is wider.
    There are at most min(rank X, rank Y) canonical pairs: beyond them the correlations are 0 and
    the directions arbitrary (so would be their PWCCA weights), and they are left out."""
    if not ridge >= 0:
        raise ValueError(f"ridge={ridge!r}: expected a number >= 0 (relative to the mean variance)")
    bx, ax = sx.whitening(ridge, kx)  # (d1, kx'), (kx',): kx' = min(kx, rank X)
    by, ay = sy.whitening(ridge, ky)
    kx, ky = len(ax), len(ay)
    m = ax[:, None] * (bx.T @ sxy @ by) * ay[None, :]  # (kx, ky): Σxx^-1/2 Σxy Σyy^-1/2 in the eigenbases
    u, s, vh = torch.linalg.svd(m, full_matrices=False)  # (kx, k), (k,), (k, ky)
    k = min(kx, ky)
    u, s, vh = u[:, :k], s[:k], vh[:k]
    ux, uy = ax[:, None] * u, ay[:, None] * vh.T
    # W^T Σ = u^T diag(a λ) B^T, because B^T Σ = diag(λ) B^T for eigenvectors: no n x d variates needed.
    px = (ux * sx.eigenvalues[:kx, None]).T @ bx.T
    py = (uy * sy.eigenvalues[:ky, None]).T @ by.T
    return CCA(s.clamp(0.0, 1.0), bx @ ux, by @ uy, px, py, n)


def cca_from_covariances(cov: Covariances, ridge: float = RIDGE, min_ratio: float = 1.0) -> CCA:
    """CCA (Hotelling 1936) from the covariances of two views."""
    sx, sy = cov.spectra(min_ratio)
    return _cca(sx, cov.sxy, sy, cov.n, ridge, sx.d, sy.d)


def cca(x: View, y: View, ridge: float = RIDGE, min_ratio: float = 1.0, dtype: torch.dtype = torch.float64) -> CCA:
    """CCA of x (n, d1) and y (n, d2) over the same n samples, features centred."""
    return cca_from_covariances(covariances(x, y, dtype, min_ratio), ridge, min_ratio)


def _projection_weights(projections: torch.Tensor) -> torch.Tensor:
    """α_i = Σ_j |<h_i, x_j>|, normalised to sum 1 (k = 0 pairs: empty)."""
    alpha = projections.abs().sum(1)
    total = alpha.sum()
    return alpha / total if total > 0 else alpha


@dataclass(frozen=True, eq=False)
class PWCCA:
    """Projection-weighted CCA. PWCCA is asymmetric: `x_distance` weighs the correlations by how much
    of the FIRST view X each canonical variate accounts for (Morcos et al. 2018; google/svcca's
    compute_pwcca takes the view with fewer neurons instead); `y_distance` by the second view;
    `distance` is x_distance, or the mean of both when `symmetric`."""

    cca: CCA
    x_weights: torch.Tensor  # (k,) α from X's neurons, sum 1
    y_weights: torch.Tensor  # (k,) the same from Y's neurons
    symmetric: bool

    @property
    def x_distance(self) -> float:
        return _unit(1.0 - float(self.x_weights @ self.cca.correlations))

    @property
    def y_distance(self) -> float:
        return _unit(1.0 - float(self.y_weights @ self.cca.correlations))

    @property
    def distance(self) -> float:
        return (self.x_distance + self.y_distance) / 2 if self.symmetric else self.x_distance


def pwcca_from_covariances(cov: Covariances, symmetric: bool = False, ridge: float = RIDGE,
                           min_ratio: float = 1.0) -> PWCCA:
    """PWCCA (Morcos, Raghu & Bengio 2018, "Insights on representational similarity in neural
    networks with canonical correlation") from the covariances of two views."""
    c = cca_from_covariances(cov, ridge, min_ratio)
    return PWCCA(c, _projection_weights(c.x_projections), _projection_weights(c.y_projections), symmetric)


def pwcca(x: View, y: View, symmetric: bool = False, ridge: float = RIDGE, min_ratio: float = 1.0,
          dtype: torch.dtype = torch.float64) -> PWCCA:
    """PWCCA of x (n, d1) and y (n, d2): distance 1 - Σ_i α_i ρ_i with α_i = Σ_j |<h_i, x_j>| over
    X's neurons x_j (n,) and X's canonical variates h_i (n,), normalised to sum 1. The weights come
    from the first view x; `symmetric=True` makes `.distance` the mean of both orders."""
    return pwcca_from_covariances(covariances(x, y, dtype, min_ratio), symmetric, ridge, min_ratio)


def pwcca_distance(x: View, y: View, symmetric: bool = False, ridge: float = RIDGE, min_ratio: float = 1.0,
                   dtype: torch.dtype = torch.float64) -> float:
    """1 - PWCCA similarity in [0, 1], weights from x (the mean of both orders when `symmetric`)."""
    return pwcca(x, y, symmetric, ridge, min_ratio, dtype).distance


@dataclass(frozen=True, eq=False)
class SVCCA:
    """SVCCA: CCA of the views reduced to their top directions; distance = 1 - mean correlation."""

    cca: CCA          # in the reduced views: k = min(x_kept, y_kept)
    x_kept: int       # directions of X kept by the SVD step
    y_kept: int

    @property
    def distance(self) -> float:
        rho = self.cca.correlations
        return _unit(1.0 - float(rho.mean())) if len(rho) else 1.0  # no pairs: a view without variance


def svcca_from_covariances(cov: Covariances, keep: float = SVCCA_KEEP, ridge: float = RIDGE,
                           min_ratio: float = 1.0) -> SVCCA:
    """SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017) from covariances: the SVD of the
    centred view X_c is X_c = U S V^T with V the eigenvectors of Σxx and S^2 / (n - 1) its
    eigenvalues, so the reduction to the top directions explaining the share `keep` of each view's
    variance is read off the eigendecomposition; the ridge is relative to the kept variance."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep!r}: expected the share of variance SVCCA keeps, in (0, 1]")
    sx, sy = cov.spectra(min_ratio)
    kx, ky = sx.kept(keep), sy.kept(keep)
    return SVCCA(_cca(sx, cov.sxy, sy, cov.n, ridge, kx, ky), kx, ky)


def svcca(x: View, y: View, keep: float = SVCCA_KEEP, ridge: float = RIDGE, min_ratio: float = 1.0,
          dtype: torch.dtype = torch.float64) -> SVCCA:
    """SVCCA of x (n, d1) and y (n, d2) over the same samples (symmetric in x and y)."""
    return svcca_from_covariances(covariances(x, y, dtype, min_ratio), keep, ridge, min_ratio)


def svcca_distance(x: View, y: View, keep: float = SVCCA_KEEP, ridge: float = RIDGE,
                   min_ratio: float = 1.0, dtype: torch.dtype = torch.float64) -> float:
    """1 - mean SVCCA correlation, in [0, 1]."""
    return svcca(x, y, keep, ridge, min_ratio, dtype).distance


@dataclass(frozen=True, eq=False)
class CKA:
    """Linear CKA = ||Σxy||_F^2 / (||Σxx||_F ||Σyy||_F); 0 when a view has no variance."""

    cross: float   # ||Σxy||_F^2
    x_norm: float  # ||Σxx||_F
    y_norm: float  # ||Σyy||_F

    @property
    def similarity(self) -> float:
        denominator = self.x_norm * self.y_norm
        return _unit(self.cross / denominator) if denominator > 0 else 0.0

    @property
    def distance(self) -> float:
        return 1.0 - self.similarity


def linear_cka_from_covariances(cov: Covariances, min_ratio: float = 1.0) -> CKA:
    """Linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of neural network
    representations revisited") from the covariances of two views."""
    sx, sy = cov.spectra(min_ratio)
    return CKA(float(cov.sxy.square().sum()), float(torch.linalg.matrix_norm(sx.matrix)),
               float(torch.linalg.matrix_norm(sy.matrix)))


def linear_cka(x: View, y: View, min_ratio: float = 1.0, dtype: torch.dtype = torch.float64) -> CKA:
    """Linear CKA of x (n, d1) and y (n, d2); invariant to orthogonal maps and isotropic scaling."""
    return linear_cka_from_covariances(covariances(x, y, dtype, min_ratio), min_ratio)


def linear_cka_distance(x: View, y: View, min_ratio: float = 1.0, dtype: torch.dtype = torch.float64) -> float:
    """1 - linear CKA, in [0, 1]."""
    return linear_cka(x, y, min_ratio, dtype).distance


def distance_from_covariances(measure: str, cov: Covariances, ridge: float = RIDGE, keep: float = SVCCA_KEEP,
                              min_ratio: float = 1.0) -> float:
    """The distance `measure` (pwcca: the symmetric mean of both orders; svcca; cka) of two views."""
    if measure == "pwcca":
        return pwcca_from_covariances(cov, True, ridge, min_ratio).distance
    if measure == "svcca":
        return svcca_from_covariances(cov, keep, ridge, min_ratio).distance
    if measure == "cka":
        return linear_cka_from_covariances(cov, min_ratio).distance
    raise ValueError(f"unknown measure {measure!r}: expected one of {', '.join(MEASURES)}")

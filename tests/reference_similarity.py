"""A plain float64 numpy implementation of PWCCA, SVCCA and linear CKA, written straight from the
papers' equations (numpy.linalg only), to check analysis.similarity against and to time it by.

Textbook on purpose: centred views, covariances, whitening by the inverse square roots of the
covariances (their pseudo-inverses inside each view's numerical rank, plus an optional ridge), the SVD
of Σxx^-1/2 Σxy Σyy^-1/2, explicit canonical variates h = X_c W (n, k) and explicit inner products
<h_i, x_j> with X's neurons. The conventions are those of analysis.similarity: directions beyond numpy's
matrix_rank tolerance left out, ridge x the mean variance of the view (0 by default) added to the
rest, and at most min(rank X, rank Y) canonical pairs.
"""
from __future__ import annotations

import numpy as np


def centred(x: np.ndarray) -> np.ndarray:
    """(n, d) float64 with every column's mean removed."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def inv_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    """(Σ + r I)^-1/2 inside the numerical rank of the symmetric Σ (0 beyond it), r = ridge x the mean of
    the eigenvalues kept, by its eigendecomposition."""
    values, vectors = np.linalg.eigh(cov)
    keep = values > values.max() * len(cov) * np.finfo(np.float64).eps
    mean = values[keep].mean() if keep.any() else 0.0
    r = ridge * (mean if mean > 0 else 1.0)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, values + r, 1.0)), 0.0)
    return (vectors * scale) @ vectors.T


def cca(x: np.ndarray, y: np.ndarray, ridge: float = 0.0):
    """Canonical correlations rho (k,), directions wx (d1, k), wy (d2, k) of centred x (n, d1), y (n, d2)."""
    n = len(x)
    sxx, syy, sxy = x.T @ x / (n - 1), y.T @ y / (n - 1), x.T @ y / (n - 1)
    kx, ky = inv_sqrt(sxx, ridge), inv_sqrt(syy, ridge)
    u, rho, vt = np.linalg.svd(kx @ sxy @ ky, full_matrices=False)
    k = min(np.linalg.matrix_rank(sxx), np.linalg.matrix_rank(syy))  # canonical pairs: min(rank X, rank Y)
    return np.clip(rho[:k], 0.0, 1.0), kx @ u[:, :k], ky @ vt[:k].T


def pwcca_distance(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> float:
    """Morcos et al. 2018: 1 - Σ_i α_i ρ_i, α_i = Σ_j |<h_i, x_j>| normalised, h = X_c W_x."""
    x, y = centred(x), centred(y)
    rho, wx, _ = cca(x, y, ridge)
    h = x @ wx                                # (n, k) canonical variates of x
    inner = h.T @ x                           # (k, d1): <h_i, x_j> for every variate and neuron of x
    alpha = np.abs(inner).sum(axis=1)
    alpha = alpha / alpha.sum()
    return float(np.clip(1.0 - alpha @ rho, 0.0, 1.0))


def svcca_distance(x: np.ndarray, y: np.ndarray, variance: float = 0.99, ridge: float = 0.0) -> float:
    """Raghu et al. 2017: keep the top singular directions of each centred view explaining
    `variance` of its variance, then 1 - mean canonical correlation of the reduced views."""
    reduced = []
    for view in (centred(x), centred(y)):
        u, s, _ = np.linalg.svd(view, full_matrices=False)
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        k = min(int(np.searchsorted(share, variance - 1e-12)) + 1, len(s))
        reduced.append(u[:, :k] * s[:k])      # (n, k): the view in its top k directions
    rho, _, _ = cca(reduced[0], reduced[1], ridge)
    return float(np.clip(1.0 - rho.mean(), 0.0, 1.0))


def linear_cka_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: 1 - ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred views."""
    x, y = centred(x), centred(y)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(1.0 - cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))

"""k-means in torch: the discretisation step of the mutual-information estimate (METHODS.md §3).

Lloyd's algorithm (full passes) for the default sizes, Sculley's mini-batch k-means ("Web-scale
k-means clustering", WWW 2010) when `batch_size` is set and smaller than the data; seeded greedy k-means++
initialisation (Arthur and Vassilvitskii 2007) on a subsample of the points. Squared distances come from one matrix
product per block of rows, ||x||^2 - 2 x.c + ||c||^2, so memory stays at `CHUNK_ELEMENTS` floats per
block whatever the data size; the same code runs on the CPU and on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 22  # rows x clusters scores per block (16 MiB of float32)
INIT_MIN, INIT_PER_CLUSTER = 8192, 16  # k-means++ runs on a seeded subsample of max(8192, 16 k) points


@dataclass(frozen=True)
class KMeansResult:
    """`labels` (n,) int64 cluster of each point; `centroids` (k, d) float32 on the input's device;
    `inertia`: mean squared distance of a point to its centre; `n_passes`: passes over the data."""

    labels: np.ndarray
    centroids: torch.Tensor
    inertia: float
    n_passes: int


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of x (n, d) among `centroids` (k, d), both float32 on one device.
    Returns (labels (n,) int64, squared distances (n,)), computed block by block."""
    c_sq = (centroids * centroids).sum(1)  # (k,)
    step = max(1, CHUNK_ELEMENTS // max(1, len(centroids)))
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), step):
        block = x[start:start + step]  # (b, d)
        scores = torch.addmm(c_sq, block, centroids.T, beta=1.0, alpha=-2.0)  # (b, k): ||c||^2 - 2 x.c
        best, idx = scores.min(dim=1)
        labels[start:start + step] = idx
        dist[start:start + step] = (best + (block * block).sum(1)).clamp_(min=0.0)
    return labels, dist


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k centres (k, d) drawn from the rows of x (n, d) by greedy k-means++: at each step 2 + ln k
    candidates are drawn by D^2 sampling and the one that lowers the total squared distance most is
    kept (Arthur and Vassilvitskii 2007, section 6; it gives clearly lower final inertia than one
    candidate). Once every point is a chosen centre, the rest are drawn uniformly (duplicates, later
    relocated as empty clusters)."""
    n, trials = len(x), 2 + int(math.log(k))
    x_sq = (x * x).sum(1)  # (n,)
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device))
    centres[0] = x[first]
    d2 = _sq_dist(x, x_sq, x[first:first + 1])[0]  # (n,) squared distance to the nearest chosen centre
    for j in range(1, k):
        if float(d2.sum()) <= 0:
            centres[j] = x[int(torch.randint(n, (1,), generator=gen, device=gen.device))]
            continue
        picks = torch.multinomial(d2, trials, replacement=True, generator=gen)  # (trials,)
        candidate_d2 = torch.minimum(d2[None], _sq_dist(x, x_sq, x[picks]))  # (trials, n)
        best = int(candidate_d2.sum(1).argmin())
        centres[j] = x[picks[best]]
        d2 = candidate_d2[best]
    return centres


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(m, n) squared distances between the rows of c (m, d) and of x (n, d), x_sq = ||x||^2."""
    return torch.addmm(x_sq[None], c, x.T, alpha=-2.0).add_((c * c).sum(1)[:, None]).clamp_(min=0.0)


def _update(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (k, d) and counts (k,) of the rows of x."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    return sums, counts


def kmeans(x: torch.Tensor | np.ndarray, n_clusters: int, seed: int, *, iters: int = 20,
           batch_size: int | None = None, tol: float = 1e-3,
           device: torch.device | str | None = None) -> KMeansResult:
    """Cluster the rows of x (n, d) into `n_clusters` (at most n) clusters.

    `iters` bounds the passes over the data (Lloyd iterations, or mini-batch epochs); both stop early
    once at most a share `tol` of the points changed cluster since the previous pass. Empty clusters
    are moved to the points farthest from their centres (Lloyd) or to random points (mini-batch).
    The result is a function of (x, n_clusters, seed, settings) on a given device.
    """
    device = torch.device(device) if device is not None else (x.device if torch.is_tensor(x) else torch.device("cpu"))
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
    x = x.to(device=device, dtype=torch.float32).contiguous()
    n = len(x)
    if n == 0:
        raise ValueError("kmeans: no points to cluster")
    if not 1 <= n_clusters <= n:
        raise ValueError(f"kmeans: n_clusters={n_clusters} must be in 1..{n} (the number of points)")
    if iters < 1:
        raise ValueError(f"kmeans: iters={iters} must be at least 1")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    init_rows = torch.randperm(n, generator=gen, device=device)[:max(INIT_MIN, INIT_PER_CLUSTER * n_clusters)]
    centroids = kmeans_plus_plus(x[init_rows], n_clusters, gen)
    if batch_size is None or batch_size >= n:
        return _lloyd(x, centroids, iters, tol)
    return _minibatch(x, centroids, iters, tol, int(batch_size), gen)


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int, tol: float) -> KMeansResult:
    k, previous = len(centroids), None
    for it in range(1, iters + 1):
        labels, dist = assign(x, centroids)
        changed = 1.0 if previous is None else float((labels != previous).float().mean())
        if it == iters or changed <= tol:
            break
        previous = labels
        sums, counts = _update(x, labels, k)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1.0)[:, None]
        if bool(empty.any()):  # the farthest points become the new centres of empty clusters
            far = torch.topk(dist, int(empty.sum())).indices
            centroids[empty] = x[far]
    return KMeansResult(labels.cpu().numpy(), centroids, float(dist.mean()), it)


def _minibatch(x: torch.Tensor, centroids: torch.Tensor, iters: int, tol: float, batch_size: int,
               gen: torch.Generator) -> KMeansResult:
    n, k = len(x), len(centroids)
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)  # points seen by each centre so far
    previous = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    for epoch in range(1, iters + 1):
        order = torch.randperm(n, generator=gen, device=x.device)
        current = torch.empty_like(previous)
        hit = torch.zeros(k, dtype=torch.bool, device=x.device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            batch = x[rows]  # (b, d)
            labels, _ = assign(batch, centroids)
            current[rows] = labels
            sums, c = _update(batch, labels, k)
            counts += c
            seen = c > 0
            hit |= seen
            # each centre moves to the running mean of every point it was given (per-centre rate 1/count)
            centroids[seen] += (sums[seen] - c[seen, None] * centroids[seen]) / counts[seen, None]
        changed = float((current != previous).float().mean())
        previous = current
        dead = ~hit
        if bool(dead.any()):  # centres no point chose in a whole epoch restart at random points
            centroids[dead] = x[torch.randint(n, (int(dead.sum()),), generator=gen, device=x.device)]
            counts[dead] = 1.0
        elif changed <= tol:
            break
    labels, dist = assign(x, centroids)
    return KMeansResult(labels.cpu().numpy(), centroids, float(dist.mean()), epoch + 1)

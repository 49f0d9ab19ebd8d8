"""The t-SNE and nearest-neighbour kernels of the analyses against plain scikit-learn, on a real dump.

    python bench/analyses.py [--dump results/default/dumps/lm/seed1] [--layer 3] [--points 700]
                             [--pool 20000] [--queries 2000] [--k 10] [--repeats 3]

On the states of one layer of a dump (run the workflow first), in the same run and with the
threads torch has here (OMP_NUM_THREADS; the workflow gives each job one):
- t-SNE of `--points` rows: ours (analysis.measures.tsne.embed: openTSNE, Barnes-Hut, PCA start)
  against scikit-learn's TSNE with the same perplexity, PCA start and seed; agreement: the share of
  each point's 10 nearest neighbours in 2-d that are the same in both embeddings (t-SNE is not unique,
  so this says how alike the pictures are, not whether one is wrong);
- k nearest neighbours (cosine) of `--queries` rows in a pool of `--pool` rows: ours
  (analysis.measures.neighbours.nearest_neighbours: blocked matrix products + topk in float32) against
  scikit-learn's NearestNeighbors (brute force, cosine); agreement: the share of identical neighbour sets
  (float32 ties may order the last neighbour differently).
Prints both times (best of --repeats) and the ratio reference / ours (> 1: ours is faster).
The PWCCA, k-means + MI and influence kernels have benchmarks of their own (bench/similarity.py,
bench/kmeans_mi.py, bench/influence.py); bench/threads.py times whole analysis jobs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.io.dumps import load_dump  # noqa: E402
from analysis.measures.neighbours import nearest_neighbours  # noqa: E402
from analysis.measures.tsne import embed  # noqa: E402
from bench.machine import describe  # noqa: E402


def best_of(repeats: int, f):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - start)
    return best, out


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours (Euclidean, 2-d) that two embeddings share."""
    from sklearn.neighbors import NearestNeighbors

    def sets(x):
        idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
        return [set(row) for row in idx]

    return float(np.mean([len(p & q) / k for p, q in zip(sets(a), sets(b))]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", default="results/default/dumps/lm/seed1")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--points", type=int, default=700)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--pool", type=int, default=20000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors

    print(describe())
    states = np.asarray(load_dump(a.dump).layer(a.layer), dtype=np.float32)
    rng = np.random.default_rng(0)
    print(f"{a.dump}, layer {a.layer}: {len(states):,} rows x {states.shape[1]}")

    x = states[rng.choice(len(states), min(a.points, len(states)), replace=False)]
    ours_s, ours = best_of(a.repeats, lambda: embed(x, a.perplexity, seed=0))
    ref_s, ref = best_of(a.repeats, lambda: TSNE(n_components=2, perplexity=min(a.perplexity, (len(x) - 1) / 3),
                                                 init="pca", random_state=0).fit_transform(x))
    print(f"t-SNE, {len(x)} points: ours {ours_s:.2f} s, scikit-learn {ref_s:.2f} s, ratio {ref_s / ours_s:.2f}x; "
          f"10-NN shared in 2-d: {knn_overlap(ours, ref):.2f}")

    pool = states[rng.choice(len(states), min(a.pool, len(states)), replace=False)]
    queries = rng.choice(len(pool), min(a.queries, len(pool)), replace=False)
    ours_s, ours = best_of(a.repeats, lambda: nearest_neighbours(pool, queries, a.k))

    def reference():
        nn = NearestNeighbors(n_neighbors=a.k + 1, algorithm="brute", metric="cosine").fit(pool)
        idx = nn.kneighbors(pool[queries], return_distance=False)
        return np.array([[j for j in row if j != q][: a.k] for row, q in zip(idx, queries)])

    ref_s, ref = best_of(a.repeats, reference)
    same = float(np.mean([set(r) == set(o) for r, o in zip(ref, ours)]))
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    sims = lambda idx: np.einsum("qd,qkd->qk", unit[queries], unit[idx])  # noqa: E731
    gap = float(np.abs(np.sort(sims(ref), 1) - np.sort(sims(ours), 1)).max())
    print(f"{a.k} nearest neighbours (cosine), {len(queries)} queries in {len(pool):,} rows: ours {ours_s:.2f} s, "
          f"scikit-learn {ref_s:.2f} s, ratio {ref_s / ours_s:.2f}x; identical neighbour sets {same:.1%}, largest "
          f"difference of the k similarities {gap:.1e} (where the sets differ, they differ by equally near rows)")


if __name__ == "__main__":
    main()

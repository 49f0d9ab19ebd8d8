"""The k-means + plug-in MI step of analysis.measures.mutual_info against scikit-learn's MiniBatchKMeans on
the same data (not a test).

    python bench/kmeans_mi.py [--n 200000] [--d 512] [--k 1000] [--device auto] [--minibatch 65536]

Data with cluster structure and labels: a Gaussian mixture of `--components` components whose
label is a function of the component for a share `--purity` of the points and uniform otherwise.
Our k-means runs with the settings of conf/analysis/default.yaml (analysis.mi: kmeans_iters,
kmeans_tol, kmeans_batch, seed), and also as mini-batch k-means with `--minibatch` rows per batch
(0: not). Prints the machine, then time (k-means + MI), inertia and MI (raw, shuffled, corrected)
per method, and the time ratio and MI difference of the configured k-means to scikit-learn's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from analysis.stats.kmeans import assign, kmeans
from analysis.measures.mutual_info import mi_of_clusters, plugin_mi
from pipeline.machine.runtime import resolve_device
from bench.machine import cpu_model


def mixture(n: int, d: int, components: int, spread: float, n_labels: int, purity: float, seed: int):
    """(points (n, d) float32, component (n,), label (n,)): unit-variance blobs around centres of
    standard deviation `spread` per feature (two centres lie spread * sqrt(2 d) noise sd apart)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(components, d)).astype(np.float32) * spread
    component = rng.integers(0, components, n)
    points = centres[component] + rng.normal(size=(n, d)).astype(np.float32)
    function = rng.integers(0, n_labels, components)  # the label of each component
    noisy = rng.random(n) >= purity
    label = np.where(noisy, rng.integers(0, n_labels, n), function[component])
    return points, component, label


def inertia_of(x: torch.Tensor, labels: np.ndarray, k: int) -> float:
    """Mean squared distance of each point to the mean of its cluster (the same yardstick for all)."""
    idx = torch.from_numpy(labels).to(x.device)
    sums = torch.zeros(k, x.shape[1], device=x.device).index_add_(0, idx, x)
    counts = torch.bincount(idx, minlength=k).clamp(min=1).to(x.dtype)
    return float(assign(x, sums / counts[:, None])[1].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=1000, help="clusters")
    p.add_argument("--components", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.4, help="sd of the component centres per feature")
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--purity", type=float, default=0.8)
    p.add_argument("--device", default="auto")
    p.add_argument("--minibatch", type=int, default=65536, help="also our mini-batch k-means (0: not)")
    a = p.parse_args()
    mi_cfg = OmegaConf.load(REPO / "conf/analysis/default.yaml").mi
    iters, tol, batch, seed = int(mi_cfg.kmeans_iters), float(mi_cfg.kmeans_tol), mi_cfg.kmeans_batch, int(mi_cfg.seed)
    device = resolve_device(a.device, "--device")
    import sklearn
    from sklearn.cluster import MiniBatchKMeans

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, scikit-learn {sklearn.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    x_np, component, label = mixture(a.n, a.d, a.components, a.spread, a.labels, a.purity, seed=1)
    x = torch.from_numpy(x_np).to(device)
    print(f"data: {a.n} x {a.d} float32, {a.components} Gaussian components (centre sd {a.spread}, noise sd 1), "
          f"{a.labels} labels "
          f"(label = f(component) for {a.purity:.0%} of points); k = {a.k}; "
          f"MI(label; component) = {plugin_mi(label, component):.3f} nats")

    def ours(batch_size):
        return lambda: kmeans(x, a.k, seed, iters=iters, batch_size=batch_size, tol=tol, device=device).labels

    def sk(**settings):
        return lambda: MiniBatchKMeans(a.k, n_init=1, random_state=seed, **settings).fit(x_np).labels_

    methods = [(f"ours: torch k-means, iters={iters} tol={tol} batch={batch}", ours(batch))]
    if a.minibatch and a.minibatch != batch:
        methods.append((f"ours: torch k-means, iters={iters} tol={tol} batch={a.minibatch}", ours(a.minibatch)))
    methods.append(("scikit-learn MiniBatchKMeans (defaults)", sk()))
    # its early stop (10 batches without improvement) ends long before convergence: also a run
    # with larger batches and no early stop, for `iters` epochs like ours
    methods.append((f"scikit-learn MiniBatchKMeans batch 4096, {iters} epochs",
                    sk(batch_size=4096, max_iter=iters, max_no_improvement=None)))
    results = {}
    print(f"{'method':58s} {'time s':>7s} {'inertia':>8s} {'MI':>6s} {'shuffled':>8s} {'corrected':>9s}")
    for name, fn in methods:
        t = time.perf_counter()
        clusters = fn()
        est = mi_of_clusters(clusters, label, seed)  # plug-in MI and its chance level
        secs = time.perf_counter() - t
        results[name] = (secs, est)
        print(f"{name:58s} {secs:7.1f} {inertia_of(x, clusters, a.k):8.4f} {est.mi:6.3f} {est.mi_shuffled:8.3f} "
              f"{est.mi_corrected:9.3f}", flush=True)
    ours_s, ours_e = results[methods[0][0]]
    for name, _ in methods[-2:]:
        sk_s, sk_e = results[name]
        print(f"vs {name}: time ratio scikit-learn / ours {sk_s / ours_s:.2f}; MI ours - scikit-learn "
              f"{ours_e.mi - sk_e.mi:+.3f} nats raw, {ours_e.mi_corrected - sk_e.mi_corrected:+.3f} corrected")


if __name__ == "__main__":
    main()

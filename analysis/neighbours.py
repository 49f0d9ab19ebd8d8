"""What a layer keeps, seen through nearest neighbours (METHODS.md §7).

    python -m analysis.neighbours experiment=default objective=lm seed=1 [overrides]

Per layer 0..L: for a seeded subset of `max_queries` occurrences, the k exact nearest neighbours
among every probe token of the layer (the query itself excluded), by cosine similarity (default) or
Euclidean distance; then the share of neighbours that are the same token (`identity`), the mean
position distance to the neighbours of the same token type (`position`), and the share of neighbours
whose left (right) neighbouring token equals the query's (`left_token`, `right_token`).

A token at the start (end) of its sentence has no left (right) token: it is given a sentinel that
never matches, so such a query counts with a share of 0 and such a neighbour never counts as a match.
Every value has a bootstrap interval over the queries' sentences (analysis.bootstrap).
Writes `<paths.metrics>/neighbours/<objective>/seed<n>.csv`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.config import cli
from pipeline.runtime import resolve_device
from pipeline.store import PipelineError
from .settings import METRICS, setting

from . import bootstrap
from .dumps import dump_folder, load_dump, sample_rows
from .tables import part_path, section, write_table

log = logging.getLogger("analysis.neighbours")

PROPERTIES = ("identity", "position", "left_token", "right_token")
NO_TOKEN = -1  # the sentinel left/right token of a sentence's first/last token (token ids are >= 0)
CHUNK_ELEMENTS = 1 << 23  # queries x pool similarities per block (32 MiB of float32)


def context_tokens(tokens: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(left, right): for each row of a dump's token table (rows of one sentence consecutive, in
    position order), the token id just before (after) it in its sentence, NO_TOKEN where none."""
    sid, pos, ids = tokens["sentence_id"], tokens["position"], tokens["token_id"]
    follows = np.flatnonzero((sid[1:] == sid[:-1]) & (pos[1:] == pos[:-1] + 1))  # row i + 1 follows row i
    left = np.full(len(ids), NO_TOKEN, dtype=np.int64)
    right = np.full(len(ids), NO_TOKEN, dtype=np.int64)
    left[follows + 1] = ids[follows]
    right[follows] = ids[follows + 1]
    return left, right


def nearest_neighbours(pool: np.ndarray | torch.Tensor, queries: np.ndarray, k: int, metric: str = "cosine",
                       device: torch.device | str | None = None) -> np.ndarray:
    """Indices (q, k) into pool (n, d) of the k nearest rows to each pool row listed in `queries` (q,),
    nearest first, never the query row itself. Exact search: the (q, n) similarities are formed in
    blocks of queries (one matrix product each, float32) and reduced with topk. `metric`: cosine
    (largest cosine similarity) or euclidean (smallest distance, as largest 2 q.p - ||p||^2)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.as_tensor(np.asarray(pool, dtype=np.float32) if not torch.is_tensor(pool) else pool)
    x = x.to(device=device, dtype=torch.float32)
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} neighbours asked for, but the pool has {n} rows (at most {n - 1})")
    queries = torch.as_tensor(np.asarray(queries, dtype=np.int64), device=device)
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        bias = torch.zeros(n, device=device)
    else:
        bias = -(x * x).sum(1)  # (n,): 2 q.p - ||p||^2 = -||q - p||^2 + ||q||^2
    alpha = 1.0 if metric == "cosine" else 2.0
    out = torch.empty(len(queries), k, dtype=torch.int64, device=device)
    step = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, len(queries), step):
        q = queries[start:start + step]
        scores = torch.addmm(bias, x[q], x.T, alpha=alpha)  # (b, n), larger = nearer
        scores[torch.arange(len(q), device=device), q] = -torch.inf  # never one's own neighbour
        out[start:start + step] = scores.topk(k, dim=1).indices
    return out.cpu().numpy()


def per_query_properties(neighbours: np.ndarray, queries: np.ndarray,
                         tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each query's value (q,) of every property (see `neighbour_properties`); `position` is nan for a
    query without a neighbour of its own token type."""
    ids, pos = tokens["token_id"], tokens["position"]
    left, right = context_tokens(tokens)
    q = np.asarray(queries)[:, None]  # (q, 1) against neighbours (q, k)
    same = ids[neighbours] == ids[q]
    n_same = same.sum(1)
    gap = (np.abs(pos[neighbours] - pos[q]) * same).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(n_same > 0, gap / n_same, np.nan)
    result = {"identity": same.mean(1), "position": position}
    for name, ctx in (("left_token", left), ("right_token", right)):
        result[name] = ((ctx[neighbours] == ctx[q]) & (ctx[q] != NO_TOKEN)).mean(1)
    return result


def neighbour_properties(neighbours: np.ndarray, queries: np.ndarray,
                         tokens: dict[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """What the neighbours (q, k) (pool row indices) of the `queries` (q,) rows share with them, from
    the dump's token table: {property: (value, number of queries it averages over)}.

    identity: mean share of neighbours with the query's token id; position: per query, the mean
    |position difference| to its neighbours of the same token id, averaged over the queries that
    have at least one (nan when none has); left_token / right_token: mean share of neighbours whose
    left (right) neighbouring token in their sentence equals the query's (a missing one never matches).
    """
    result = {}
    for name, values in per_query_properties(neighbours, queries, tokens).items():
        ok = np.isfinite(values)
        result[name] = (float(values[ok].mean()) if ok.any() else float("nan"), int(ok.sum()))
    return result


def layer_rows(cfg: DictConfig, dump, queries: np.ndarray, k: int, metric: str, device):
    """Per layer of `dump`, the neighbour properties of the `queries` rows with their bootstrap interval
    (the plan of analysis.bootstrap for neighbours, over the queries' sentences): yields
    (layer, property, value, (ci_low, ci_high), number of queries it averages over)."""
    boot = bootstrap.plan(cfg, "neighbours")
    unit, n_units = bootstrap.units(dump.tokens["sentence_id"][queries], None, boot.seed)  # the queries' sentences
    draws = bootstrap.counts(n_units, boot.resamples, boot.seed) if boot.resamples else None
    for layer in range(dump.n_layers + 1):
        t = time.perf_counter()
        nn = nearest_neighbours(dump.states(layer), queries, k, metric, device)
        for prop, values in per_query_properties(nn, queries, dump.tokens).items():
            ok = np.isfinite(values)
            value = float(values[ok].mean()) if ok.any() else float("nan")
            ci = (boot.interval(bootstrap.weighted_means(values, unit, draws), value)
                  if draws is not None else bootstrap.NO_INTERVAL)
            yield layer, prop, value, ci, int(ok.sum())
        log.info("layer %d done in %.1f s", layer, time.perf_counter() - t)


def run(cfg: DictConfig) -> Path:
    """Neighbour properties of every layer of cfg.objective / cfg.seed's dump: its `neighbours` part."""
    started = time.perf_counter()
    k = int(setting(cfg, "analysis.neighbours.k"))
    metric = setting(cfg, "analysis.neighbours.metric")
    max_queries = setting(cfg, "analysis.neighbours.max_queries")
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    objective = str(cfg.objective.name)
    dump = load_dump(dump_folder(cfg, objective, int(cfg.seed)))
    if k >= dump.n_tokens:
        raise PipelineError(f"setting analysis.neighbours.k={k}: the dump in {dump.folder} has only "
                            f"{dump.n_tokens} tokens")
    queries = sample_rows(dump.n_tokens, max_queries, int(cfg.analysis.sample_seed))
    log.info("%s seed %s on %s: %d queries, pool %d tokens, k=%d, %s", objective, cfg.seed, device,
             len(queries), dump.n_tokens, k, metric)
    rows = [{"objective": objective, "seed": int(cfg.seed), "layer": layer, "property": prop, "k": k,
             "metric": metric, "value": value, "n_queries": n, "ci_low": ci[0], "ci_high": ci[1]}
            for layer, prop, value, ci, n in layer_rows(cfg, dump, queries, k, metric, device)]
    path = write_table(part_path(cfg, "neighbours"), "neighbours", rows, section(cfg, "neighbours"), started,
                       device=str(device), bootstrap=bootstrap.plan(cfg, "neighbours").describe())
    log.info("wrote %s (%d rows) in %.1f s", path, len(rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()

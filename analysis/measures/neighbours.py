"""What a layer keeps, seen through nearest neighbours (METHODS.md §7).

    python -m analysis.measures.neighbours experiment=default objective=lm seed=1 [overrides]

Per layer 0..L: for a seeded subset of `max_queries` occurrences, the k exact nearest neighbours
among every probe token of the layer (the query itself excluded), by cosine similarity (default) or
Euclidean distance; then the share of neighbours that are the same token (`identity`), the mean
position distance to the neighbours of the same token type (`position`), and the share of neighbours
whose left (right) neighbouring token equals the query's (`left_token`, `right_token`).

A token at the start (end) of its sentence has no left (right) token: it is given a sentinel that
never matches, so such a query counts with a share of 0 and such a neighbour never counts as a match.
Every value has a bootstrap interval from the shared plan of analysis.bootstrap, which resamples the
queries' sentences and the pool's with them: under resample r a pool token counts as often as its
sentence's group was drawn, so a query's k nearest are found among the drawn neighbours
(`resampled_properties`; the query's own row is never one). Its replicates go to `seed<n>.npz`.
Writes `<paths.metrics>/neighbours/<objective>/seed<n>.csv`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import load_dump, sample_rows
from analysis.io.tables import write_table
from analysis.stats import bootstrap
from pipeline.config.analysis import METRICS, setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import section
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

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
    # a float32 dump's read-only memmap is copied (torch warns on, and must not write into, read-only memory)
    x = torch.as_tensor(np.require(pool, np.float32, ["W"]) if not torch.is_tensor(pool) else pool)
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


def pair_properties(candidates: np.ndarray, queries: np.ndarray, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What each candidate neighbour (q, K) (pool rows, nearest first) shares with its query (q,), as
    (q, K) float arrays: `same` token, `gap` = |position difference| where the token is the same (0
    elsewhere), the same `left_token`, the same `right_token` (a missing one never matches)."""
    ids, pos = tokens["token_id"], tokens["position"]
    left, right = context_tokens(tokens)
    q = np.asarray(queries)[:, None]  # (q, 1) against candidates (q, K)
    same = ids[candidates] == ids[q]
    out = {"same": same.astype(np.float32), "gap": (np.abs(pos[candidates] - pos[q]) * same).astype(np.float32)}
    for name, ctx in (("left_token", left), ("right_token", right)):
        out[name] = ((ctx[candidates] == ctx[q]) & (ctx[q] != NO_TOKEN)).astype(np.float32)
    return out


def weighted_properties(pairs: dict[str, torch.Tensor], take: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each query's value of every property when its neighbours are the candidates weighted by `take`
    (..., q, K) (each query's weights sum to k; 1 for the k nearest: the plain estimate): identity =
    Σ take·same / Σ take; position = Σ take·gap / Σ take·same (nan without a neighbour of its type);
    left / right token = Σ take·match / Σ take. Returns (..., q) tensors."""
    total = take.sum(-1)
    n_same = (take * pairs["same"]).sum(-1)
    out = {"identity": n_same / total, "position": (take * pairs["gap"]).sum(-1) / n_same}
    for name in ("left_token", "right_token"):
        out[name] = (take * pairs[name]).sum(-1) / total
    return out


def per_query_properties(neighbours: np.ndarray, queries: np.ndarray,
                         tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each query's value (q,) of every property (see `neighbour_properties`) from its k neighbours
    (q, k); `position` is nan for a query without a neighbour of its own token type."""
    pairs = {key: torch.from_numpy(v).double() for key, v in pair_properties(neighbours, queries, tokens).items()}
    values = weighted_properties(pairs, torch.ones(neighbours.shape, dtype=torch.float64))
    return {name: v.numpy() for name, v in values.items()}


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


def resampled_properties(pairs: dict[str, np.ndarray], pool_units: np.ndarray, query_units: np.ndarray,
                         draws: np.ndarray, k: int, block: int = 10) -> tuple[dict[str, np.ndarray], float]:
    """Every property's value under each resample of the queries AND of the pool: in resample r a
    candidate neighbour counts as often as its group was drawn (draws[r, pool_units]), and a query's k
    nearest are its candidates, nearest first, until their counts reach k (the last one in part; the
    query's own row is never a candidate); each query's value enters the mean as often as its group was
    drawn. pairs: `pair_properties` (q, K); pool_units (q, K), query_units (q,): groups; draws (B, G).
    Returns ({property: (B,) replicates}, the share of drawn queries whose K candidates held fewer than k
    drawn neighbours: those are measured with what they hold)."""
    tensors = {key: torch.from_numpy(v) for key, v in pairs.items()}
    pool, own = torch.from_numpy(pool_units), torch.from_numpy(query_units)
    out = {name: np.empty(len(draws)) for name in PROPERTIES}
    short = drawn = 0.0
    for start in range(0, len(draws), block):
        d = torch.as_tensor(draws[start:start + block], dtype=torch.float32)  # (b, G)
        w = d[:, pool]                                                        # (b, q, K)
        before = w.cumsum(-1) - w
        take = torch.minimum((k - before).clamp_(min=0), w)
        weight = d[:, own]                                                    # (b, q)
        short += float(((take.sum(-1) < k - 1e-6) & (weight > 0)).float().sum())
        drawn += float((weight > 0).float().sum())
        for name, values in weighted_properties(tensors, take).items():
            ok = torch.isfinite(values) & (weight > 0)
            num = torch.where(ok, values, 0.0).mul(weight).sum(-1, dtype=torch.float64)
            den = torch.where(ok, weight, 0.0).sum(-1, dtype=torch.float64)
            out[name][start:start + len(d)] = (num / den).numpy()
    return out, short / max(drawn, 1.0)


CANDIDATES = 3  # a query's candidate neighbours under resampling: this many times k, nearest first


def layer_rows(cfg: DictConfig, dump, queries: np.ndarray, k: int, metric: str, device, notes: dict | None = None):
    """Per layer of `dump`, the neighbour properties of the `queries` rows and their replicates under the
    shared plan of analysis.bootstrap (resampling the queries' sentences and the pool's with them,
    `resampled_properties`): yields (layer, property, value, (B,) replicates or None, number of queries
    it averages over). `notes` (a dict), when given, gets the largest share of drawn queries per layer
    that ran short of candidates."""
    boot = bootstrap.plan(cfg, "neighbours")
    draws = boot.draws()
    units = boot.units(dump.tokens["sentence_id"])  # every pool row's group; queries are pool rows
    n_candidates = min(dump.n_tokens - 1, CANDIDATES * k) if draws is not None else k
    for layer in range(dump.n_layers + 1):
        t = time.perf_counter()
        candidates = nearest_neighbours(dump.states(layer), queries, n_candidates, metric, device)
        pairs = pair_properties(candidates, queries, dump.tokens)
        reps = None
        if draws is not None:
            reps, short = resampled_properties(pairs, units[candidates], units[queries], draws, k)
            if notes is not None:
                notes["short_of_candidates"] = max(notes.get("short_of_candidates", 0.0), short)
        for prop, values in per_query_properties(candidates[:, :k], queries, dump.tokens).items():
            ok = np.isfinite(values)
            value = float(values[ok].mean()) if ok.any() else float("nan")
            yield layer, prop, value, None if reps is None else reps[prop], int(ok.sum())
        log.info("layer %d done in %.1f s", layer, time.perf_counter() - t)


def run(cfg: DictConfig) -> Path:
    """Neighbour properties of every layer of cfg.objective / cfg.seed's dump: its `neighbours` part."""
    started = time.perf_counter()
    k = int(setting(cfg, "analysis.neighbours.k"))
    metric = setting(cfg, "analysis.neighbours.metric")
    max_queries = setting(cfg, "analysis.neighbours.max_queries")
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    objective = str(cfg.label)
    dump = load_dump(dump_folder(cfg, objective, int(cfg.seed)))
    if k >= dump.n_tokens:
        raise PipelineError(f"setting analysis.neighbours.k={k}: the dump in {dump.folder} has only "
                            f"{dump.n_tokens} tokens")
    queries = sample_rows(dump.n_tokens, max_queries, int(cfg.analysis.sample_seed))
    log.info("%s seed %s on %s: %d queries, pool %d tokens, k=%d, %s", objective, cfg.seed, device,
             len(queries), dump.n_tokens, k, metric)
    boot, notes = bootstrap.plan(cfg, "neighbours"), {}
    rows = [{"objective": objective, "seed": int(cfg.seed), "layer": layer, "property": prop, "k": k,
             "metric": metric, "value": value, "n_queries": n, **boot.summary(value, reps),
             "replicates": {"value": reps}}
            for layer, prop, value, reps, n in layer_rows(cfg, dump, queries, k, metric, device, notes)]
    path = write_table(part_path(cfg, "neighbours"), "neighbours", rows, section(cfg, "neighbours"), started,
                       device=str(device), bootstrap=boot.describe(), **notes)
    log.info("wrote %s (%d rows) in %.1f s", path, len(rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()

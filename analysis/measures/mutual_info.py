"""Mutual information between a layer's states and a token label (METHODS.md §3).

    python -m analysis.measures.mutual_info experiment=default objective=lm seed=1 [overrides]

Per layer 0..L: discretise the states of the chosen occurrences with k-means (`analysis.stats.kmeans`), then
take the plug-in MI (nats) of the contingency table label x cluster. The plug-in estimate is biased
upwards when clusters are many for the samples, so each figure comes with the same estimate on
labels permuted by a seeded permutation (the chance level) and their difference.

Targets (rows = occurrences; "top types" = freq_rank <= analysis.mi.top_types):
- `input`: the token itself, on the unmasked dump, rows whose token is a top type (every objective);
- `output` for an LM (mt-kind models have none): the next token of the sentence; the last token of a
  sentence would predict eos, which is no probe row and has no frequency rank, so it is left out;
  rows whose next token is a top type;
- MLM, on the `masked/` run (input masked as in training), rows where the input differs from the
  original token (replaced by [MASK] or by a random token) and the original token is a top type:
  `output` (label = the original token, label_id) and `input_masked` (label = what the model was fed,
  input_id). Both targets share these rows and so one clustering per layer.
The main `n_clusters` is measured for every model; the `sweep` only for the first seed of each
objective in `workflow.seeds` and for every pretrained model (pipeline/model/hf.py). Rows at the main `n_clusters` carry bootstrap intervals over probe
sentences of mi and mi_corrected (the clustering fixed; analysis.bootstrap); the sweep's rows
carry none (nan), to keep the cost down. At the main count the clustering is restarted
`analysis.mi.restarts` times (k-means seeds seed, seed + 1, ...): mi, mi_shuffled and mi_corrected
are the restarts' means, mi_sd and mi_corrected_sd their standard deviations (nan for one restart),
and the intervals are centred on the means with the spread of the first restart's clustering, whose
replicates (analysis.bootstrap's shared plan; moved by the restarts' mean minus its own estimate) go to
`seed<n>.npz` beside the table. Writes `<paths.metrics>/mi/<objective>/seed<n>.csv`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import Dump, check_aligned, load_dump, sample_rows
from analysis.io.tables import write_table
from analysis.stats import bootstrap
from analysis.stats.kmeans import kmeans
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import mi_cluster_counts, mi_settings
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

log = logging.getLogger("analysis.mutual_info")


@dataclass(frozen=True)
class MIEstimate:
    """One plug-in MI estimate (nats) and its chance level; `n_clusters` = clusters used."""

    mi: float
    mi_shuffled: float
    mi_corrected: float  # mi - mi_shuffled
    n_tokens: int
    n_labels: int  # distinct labels among the rows
    n_clusters: int


def plugin_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete variables given as (n,) label arrays of any
    integer values: sum over the contingency table of p(a,b) log p(a,b) / (p(a) p(b)). Only the
    non-empty cells are formed, so labels may range over a large vocabulary."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if len(a) != len(b):
        raise ValueError(f"plugin_mi: label arrays of different lengths {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("plugin_mi: no samples")
    ia = np.unique(a, return_inverse=True)[1].ravel()
    ib = np.unique(b, return_inverse=True)[1].ravel()
    count_a, count_b = np.bincount(ia), np.bincount(ib)
    cells, count_ab = np.unique(ia.astype(np.int64) * len(count_b) + ib, return_counts=True)
    ca, cb = count_a[cells // len(count_b)], count_b[cells % len(count_b)]
    n = float(len(a))
    # log(n_ab n / (n_a n_b)) with counts: no division of small probabilities
    terms = count_ab * (np.log(count_ab) + np.log(n) - np.log(ca) - np.log(cb))
    return max(0.0, float(terms.sum() / n))


def entropy(labels: np.ndarray) -> float:
    """Plug-in entropy (nats) of an (n,) label array: the largest MI any discretisation can reach."""
    counts = np.unique(np.asarray(labels).ravel(), return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mi_of_clusters(clusters: np.ndarray, labels: np.ndarray, seed: int) -> MIEstimate:
    """Plug-in MI of (n,) cluster ids and (n,) labels, and of the clusters with the labels permuted
    by a permutation seeded with `seed` (same clusters, labels independent of them by construction)."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(labels))
    mi, chance = plugin_mi(labels, clusters), plugin_mi(shuffled, clusters)
    return MIEstimate(mi, chance, mi - chance, len(labels), len(np.unique(labels)), len(np.unique(clusters)))


def mutual_information(states: np.ndarray | torch.Tensor, labels: np.ndarray, n_clusters: int, seed: int, *,
                       iters: int = 20, batch_size: int | None = None, tol: float = 1e-3,
                       device: torch.device | str | None = None) -> MIEstimate:
    """MI (nats) between states (n, d) and labels (n,) (METHODS.md §3, after Voita et al. 2019):
    k-means with min(n_clusters, n) clusters (seeded), then `mi_of_clusters`. `iters`, `batch_size`
    (mini-batch k-means when smaller than n), `tol` and `device` go to `analysis.stats.kmeans.kmeans`."""
    labels = np.asarray(labels)
    if len(states) != len(labels):
        raise ValueError(f"mutual_information: {len(states)} states but {len(labels)} labels")
    k = min(int(n_clusters), len(labels))
    result = kmeans(states, k, seed, iters=iters, batch_size=batch_size, tol=tol, device=device)
    estimate = mi_of_clusters(result.labels, labels, seed)
    return MIEstimate(estimate.mi, estimate.mi_shuffled, estimate.mi_corrected, estimate.n_tokens,
                      estimate.n_labels, k)


def mi_replicates(clusters: np.ndarray, labels: np.ndarray, seed: int, unit: np.ndarray, draws: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(plug-in MI, corrected MI) of a fixed clustering (clusters, labels: (n,)) under each resample of
    the rows' units `unit` (n,) with the counts `draws` (B, G): the same permuted labels as
    `mi_of_clusters` give the chance level on every resample. Two (B,) arrays."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(labels))
    resampled = bootstrap.resampled_mi(labels, clusters, unit, draws)
    return resampled, resampled - bootstrap.resampled_mi(shuffled, clusters, unit, draws)


def mi_columns(boot: bootstrap.Plan, clusters: np.ndarray, labels: np.ndarray, first: MIEstimate,
               mean: dict[str, float], seed: int, unit: np.ndarray | None, draws: np.ndarray | None) -> dict:
    """The interval columns and replicates of a row whose mi / mi_corrected are `mean` (over k-means
    restarts): the replicates are those of the first restart's clustering `clusters` (its estimate
    `first`), moved by the restarts' mean minus that estimate, so that they are centred as the reported
    value's would be. Without draws: nan intervals, no replicates."""
    if draws is None:
        plain = corrected = None
    else:
        plain, corrected = mi_replicates(clusters, labels, seed, unit, draws)
        plain, corrected = plain + (mean["mi"] - first.mi), corrected + (mean["mi_corrected"] - first.mi_corrected)
    return {**boot.summary(mean["mi"], plain), **boot.summary(mean["mi_corrected"], corrected, "corrected_"),
            "replicates": {"mi": plain, "mi_corrected": corrected}}


# ---------------------------------------------------------------- which rows, which labels

@dataclass(frozen=True)
class RowSet:
    """Rows of one run (`masked`: MLM's masked run, else the unmasked dump) and, per target name, the
    (len(rows),) label of each row; every target of a row set shares its clustering."""

    masked: bool
    rows: np.ndarray
    labels: dict[str, np.ndarray]

    def subset(self, keep: np.ndarray) -> RowSet:
        return RowSet(self.masked, self.rows[keep], {t: v[keep] for t, v in self.labels.items()})


def input_rows(tokens: dict[str, np.ndarray], top_types: int) -> RowSet:
    """Target `input`: occurrences of the top types, labelled with their own token id."""
    rows = np.flatnonzero(tokens["freq_rank"] <= top_types)
    return RowSet(False, rows, {"input": tokens["token_id"][rows]})


def next_token_rows(tokens: dict[str, np.ndarray], top_types: int) -> RowSet:
    """LM target `output`: row t labelled with the token at t + 1 of the same sentence, kept when that
    token is a top type; the last token of every sentence (whose label would be eos) is left out."""
    sid, pos = tokens["sentence_id"], tokens["position"]
    has_next = np.flatnonzero((sid[:-1] == sid[1:]) & (pos[1:] == pos[:-1] + 1))  # rows with a successor
    rows = has_next[tokens["freq_rank"][has_next + 1] <= top_types]
    return RowSet(False, rows, {"output": tokens["token_id"][rows + 1]})


def masked_rows(masked_tokens: dict[str, np.ndarray], top_types: int) -> RowSet:
    """MLM targets on the masked run: rows whose input differs from the original token (masked or
    replaced by a random token) and whose original token (freq_rank is its rank) is a top type;
    `output` = the original token (label_id), `input_masked` = the token fed (input_id)."""
    for column in ("input_id", "label_id"):
        if column not in masked_tokens:
            raise PipelineError(f"the masked MLM dump has no column {column}: dump it again")
    rows = np.flatnonzero((masked_tokens["input_id"] != masked_tokens["label_id"])
                          & (masked_tokens["freq_rank"] <= top_types))
    return RowSet(True, rows, {"input_masked": masked_tokens["input_id"][rows],
                               "output": masked_tokens["label_id"][rows]})


def row_sets(dump: Dump, top_types: int, max_tokens: int | None, sample_seed: int,
             masked: Dump | None = None) -> list[RowSet]:
    """The row sets measured for `dump` by its kind (mt: input; lm: + output; mlm: + the masked run's
    output and input_masked), each cut to a seeded subset of `max_tokens` rows (the same rows for
    every model of an experiment, since the candidates depend on the probe tokens only). An MLM's
    masked run is opened here unless the caller passes it as `masked`."""
    sets = [input_rows(dump.tokens, top_types)]
    if dump.kind == "lm":
        sets.append(next_token_rows(dump.tokens, top_types))
    elif dump.kind == "mlm":
        masked = masked or dump.masked()
        check_aligned([dump, masked])
        sets.append(masked_rows(masked.tokens, top_types))
    return [s.subset(sample_rows(len(s.rows), max_tokens, sample_seed)) for s in sets]


# ---------------------------------------------------------------- the stage

def run(cfg: DictConfig) -> Path:
    """Measure every layer of cfg.objective / cfg.seed's dump; write its part of the `mi` table."""
    started = time.perf_counter()
    top_types = setting(cfg, "analysis.mi.top_types")
    max_tokens = setting(cfg, "analysis.mi.max_tokens")
    iters = setting(cfg, "analysis.mi.kmeans_iters")
    batch = setting(cfg, "analysis.mi.kmeans_batch")
    tol = setting(cfg, "analysis.mi.kmeans_tol")
    seed = int(setting(cfg, "analysis.mi.seed"))
    restarts = int(setting(cfg, "analysis.mi.restarts"))
    counts = mi_cluster_counts(cfg)
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    objective = str(cfg.label)
    dump = load_dump(dump_folder(cfg, objective, int(cfg.seed)))
    masked = dump.masked() if dump.kind == "mlm" else None
    sets = row_sets(dump, int(top_types), max_tokens, int(cfg.analysis.sample_seed), masked)
    log.info("%s seed %s on %s: %s; clusters %s", objective, cfg.seed, device,
             ", ".join(f"{'/'.join(s.labels)} {len(s.rows)} rows" for s in sets), counts)

    boot = bootstrap.plan(cfg, "mi")
    draws = boot.draws()  # the shared plan (analysis.bootstrap), at the main cluster count only
    units = {id(rs): boot.units((masked if rs.masked else dump).tokens["sentence_id"][rs.rows]) for rs in sets}
    out_rows = []
    for layer in range(dump.n_layers + 1):
        t = time.perf_counter()
        for rs in sets:
            if len(rs.rows) < 2:
                log.warning("%s layer %d: only %d rows for %s; not measured", objective, layer, len(rs.rows),
                            "/".join(rs.labels))
                continue
            states = torch.from_numpy((masked if rs.masked else dump).states(layer, rs.rows))
            if layer == 0 and max(counts) > len(rs.rows):
                log.warning("%s: %d rows, fewer than n_clusters %s; measured with at most %d clusters",
                            "/".join(rs.labels), len(rs.rows), counts, len(rs.rows))
            for used in dict.fromkeys(min(k, len(rs.rows)) for k in counts):  # each count once
                main = used == min(counts[0], len(rs.rows))
                clusterings = [kmeans(states, used, seed + i, iters=int(iters), batch_size=batch, tol=float(tol),
                                      device=device).labels for i in range(restarts if main else 1)]
                for target, labels in rs.labels.items():
                    ests = [mi_of_clusters(clusters, labels, seed) for clusters in clusterings]
                    mean = {key: float(np.mean([getattr(e, key) for e in ests]))
                            for key in ("mi", "mi_shuffled", "mi_corrected")}
                    spread = {f"{key}_sd": float(np.std([getattr(e, key) for e in ests], ddof=1)) if len(ests) > 1
                              else float("nan") for key in ("mi", "mi_corrected")}
                    out_rows.append({"objective": objective, "seed": int(cfg.seed), "layer": layer,
                                     "target": target, "n_clusters": used, **mean, "n_tokens": ests[0].n_tokens,
                                     **mi_columns(boot, clusterings[0], labels, ests[0], mean, seed, units[id(rs)],
                                                  draws if main else None), **spread})
        log.info("layer %d done in %.1f s", layer, time.perf_counter() - t)
    path = write_table(part_path(cfg, "mi"), "mi", out_rows, mi_settings(cfg), started, device=str(device),
                       bootstrap={**boot.describe(), "n_clusters": counts[0], "clustering": "the first restart"},
                       restarts=restarts)
    log.info("wrote %s (%d rows) in %.1f s", path, len(out_rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()

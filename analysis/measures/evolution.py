"""Evolution over training: one kept training step of a model measured against its finished state.

    python -m analysis.measures.evolution experiment=default objective=mt seed=1 snapshot=200 [overrides]
    python -m analysis.measures.evolution experiment=default objective=mt seed=1              # the finished model

The models of `snapshots.models` keep their weights at the steps of `snapshots.keep` while they train
(pipeline.train); `python -m pipeline.dump ... snapshot=N` dumps such a snapshot on the probe set.
This measures the dump of step N (`snapshot=N`; null: the finished model, model.pt) layer by layer:

- `to_final`: the distance of each layer's states to the same layer of the finished model, on the
  same tokens (`analysis.evolution.measures`, PWCCA and linear CKA by default; Raghu et al. 2017 and
  Morcos et al. 2018 measured how networks converge "bottom up" this way). 0 for the finished model.
- `change`: the distance between layers l and l + 1 (as analysis.change's `all` row), on the tokens of
  `to_final`.
- `mi`: plug-in and corrected MI with the input token, and by the model's kind with its output
  label (LM: the next token; MLM: on the masked run, the original and the fed token), at
  `analysis.mi.n_clusters` with `analysis.evolution.restarts` k-means restarts (analysis.measures.mutual_info).
  An MLM's masked rows are those of the first `snapshots.mlm_maskings` maskings, for the finished
  model too, so that every step of a model is measured on the same rows.
- `neighbours`: identity, position, left and right token of the k nearest neighbours (analysis.neighbours).
- `readout`: the logit lens (analysis.measures.readout): measure `loss`, `accuracy` or `kl` of each layer
  read through the model's head at that step, target `next` (LM) or `masked` (MLM); none for MT.

Every row has its bootstrap interval over probe sentences with the resamples of the table it mirrors
(similarity for `to_final`, change, mi, neighbours, readout), drawn from the shared plan (analysis.bootstrap: the
same resamples at every step and in the finished model's tables), its replicates in `<step>.npz` beside
the part, and its sample size. The rows are the same for
every step of a model (the same seeded subsets), so a curve over steps moves with the model only.
Writes `<paths.metrics>/evolution/<objective>/seed<n>/step<N>.csv` (the finished model: final.csv),
columns `objective, seed, step, final, quantity, measure, target, layer, value, ci_low, ci_high, n_tokens`:
`step` is the training step of the state (the finished model's: its best step), `final` 1 for model.pt.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import Dump, check_aligned, load_dump, sample_rows
from analysis.io.tables import write_table
from analysis.measures.mutual_info import RowSet, input_rows, masked_rows, mi_columns, mi_of_clusters, next_token_rows
from analysis.measures.neighbours import layer_rows as neighbour_layer_rows
from analysis.measures.readout import layer_rows as layer_readout
from analysis.stats import bootstrap
from analysis.stats.buckets import sample_floor, shuffle_seed
from analysis.stats.distances import check_measure, distance, paired, replicates
from analysis.stats.kmeans import kmeans
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, evolution_part, point_name, snapshot_dump
from pipeline.config.stages import evolution_settings
from pipeline.dump.format import MASKED_DIR
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

log = logging.getLogger("analysis.evolution")


def snapshot_of(cfg: DictConfig) -> int | None:
    step = cfg.get("snapshot")
    return None if step is None else int(step)


def open_dumps(cfg: DictConfig) -> tuple[Dump, Dump, int]:
    """(the dump measured, the finished model's dump, the training step of the one measured)."""
    objective, seed, step = str(cfg.label), int(cfg.seed), snapshot_of(cfg)
    final = load_dump(dump_folder(cfg, objective, seed))
    summary = final.meta.get("summary") or {}
    if step is None:  # a trained model's best step; a pretrained one's: the step of its final revision
        best = summary.get("best_step", summary.get("steps", final.meta.get("step")))
        return final, final, -1 if best is None else int(best)
    folder = snapshot_dump(cfg, step)
    if not (folder / "stage.json").is_file():
        command = (f"python -m pipeline.dump.pretrained experiment={cfg.experiment_name} objective={cfg.objective.name} "
                   f"label={objective}" if final.meta.get("pretrained") else
                   f"python -m pipeline.dump experiment={cfg.experiment_name} objective={objective}")
        raise PipelineError(f"{folder} holds no finished dump of step {step}: make it with "
                            f"`{command} seed={seed} snapshot={step}`")
    dump = load_dump(folder)
    check_aligned([dump, final])
    return dump, final, step


def _row(dump: Dump, step: int, final: bool, quantity: str, measure: str, target: str, layer: int,
         value: float, reps: np.ndarray | None, boot: bootstrap.Plan, n: int) -> dict:
    return {"objective": dump.objective, "seed": dump.seed, "step": step, "final": int(final),
            "quantity": quantity, "measure": measure, "target": target, "layer": layer, "value": float(value),
            **boot.summary(float(value), reps), "n_tokens": int(n), "replicates": {"value": reps}}


def distance_rows(cfg: DictConfig, dump: Dump, final: Dump, measures: list[str], device, emit) -> None:
    """`to_final` at every layer and `change` between consecutive layers, every measure."""
    floor = sample_floor(cfg, dump.d_model)
    # the same seeded subset for both: the change of a step is measured on the tokens of its distance to final
    rows = change = sample_rows(dump.n_tokens, setting(cfg, "analysis.evolution.max_tokens"),
                                int(cfg.analysis.sample_seed))
    if len(rows) < floor:
        raise PipelineError(f"{dump.folder}: {len(rows)} tokens (analysis.evolution.max_tokens) are fewer than "
                            f"analysis.min_samples_per_dim x d_model = {floor}")
    sentences = dump.tokens["sentence_id"]
    perm_final, perm_change = shuffle_seed(cfg, 0).permutation(len(rows)), shuffle_seed(cfg, 1).permutation(len(change))
    to_final, of_change = bootstrap.plan(cfg, "similarity"), bootstrap.plan(cfg, "change")
    carried = None
    upper = dump.states(0, rows)  # each layer's subset read once: it serves to_final and both changes
    for layer in range(dump.n_layers + 1):
        x, y = upper, final.states(layer, rows)
        cov, _ = paired(x, y, perm_final, device=device)
        point = {m: distance(m, cov, cfg) for m in measures}
        reps, _ = replicates(measures, x, y, sentences[rows], cfg, to_final, device)
        for m in measures:
            emit("to_final", m, "final", layer, point[m], reps[m], to_final, len(rows))
        if layer == dump.n_layers:
            break
        lower, upper = upper, dump.states(layer + 1, rows)
        cov, _ = paired(lower, upper, perm_change, device=device)
        point = {m: distance(m, cov, cfg) for m in measures}
        reps, carried = replicates(measures, lower, upper, sentences[change], cfg, of_change, device, carried)
        for m in measures:
            emit("change", m, "all", layer + 1, point[m], reps[m], of_change, len(change))


def mi_row_sets(cfg: DictConfig, dump: Dump, masked: Dump | None) -> list[RowSet]:
    """analysis.measures.mutual_info's row sets for `dump`, an MLM's masked rows limited to the first
    `snapshots.mlm_maskings` maskings before the seeded subset is drawn (the same rows at every step)."""
    top = int(setting(cfg, "analysis.mi.top_types"))
    sets = [input_rows(dump.tokens, top)]
    if dump.kind == "lm":
        sets.append(next_token_rows(dump.tokens, top))
    elif dump.kind == "mlm" and masked is not None:
        rs = masked_rows(masked.tokens, top)
        keep = masked.tokens["masking"][rs.rows] < int(cfg.snapshots.mlm_maskings)
        sets.append(rs.subset(np.flatnonzero(keep)))
    limit = setting(cfg, "analysis.evolution.mi_tokens")
    if limit is None:
        limit = setting(cfg, "analysis.mi.max_tokens")
    seed = int(cfg.analysis.sample_seed)
    return [s.subset(sample_rows(len(s.rows), limit, seed)) for s in sets]


def mi_rows(cfg: DictConfig, dump: Dump, device, emit) -> None:
    masked = dump.masked() if dump.kind == "mlm" and (dump.folder / MASKED_DIR).is_dir() else None
    sets = mi_row_sets(cfg, dump, masked)
    k, seed = int(setting(cfg, "analysis.mi.n_clusters")), int(setting(cfg, "analysis.mi.seed"))
    restarts = int(setting(cfg, "analysis.evolution.restarts"))
    iters, tol = int(setting(cfg, "analysis.mi.kmeans_iters")), float(setting(cfg, "analysis.mi.kmeans_tol"))
    batch = setting(cfg, "analysis.mi.kmeans_batch")
    boot = bootstrap.plan(cfg, "mi")
    draws = boot.draws()
    for rs in sets:
        if len(rs.rows) < 2:
            log.warning("%s: only %d rows for %s; not measured", dump.folder, len(rs.rows), "/".join(rs.labels))
            continue
        source = masked if rs.masked else dump
        unit = boot.units(source.tokens["sentence_id"][rs.rows])
        used = min(k, len(rs.rows))
        for layer in range(dump.n_layers + 1):
            states = torch.from_numpy(source.states(layer, rs.rows))
            clusterings = [kmeans(states, used, seed + i, iters=iters, batch_size=batch, tol=tol, device=device).labels
                           for i in range(restarts)]
            for target, labels in rs.labels.items():
                ests = [mi_of_clusters(c, labels, seed) for c in clusterings]
                mean = {key: float(np.mean([getattr(e, key) for e in ests])) for key in ("mi", "mi_corrected")}
                reps = mi_columns(boot, clusterings[0], labels, ests[0], mean, seed, unit, draws)["replicates"]
                emit("mi", "plugin", target, layer, mean["mi"], reps["mi"], boot, ests[0].n_tokens)
                emit("mi", "corrected", target, layer, mean["mi_corrected"], reps["mi_corrected"], boot,
                     ests[0].n_tokens)


def neighbour_rows(cfg: DictConfig, dump: Dump, device, emit) -> None:
    k = int(setting(cfg, "analysis.neighbours.k"))
    metric = setting(cfg, "analysis.neighbours.metric")
    if k >= dump.n_tokens:
        raise PipelineError(f"setting analysis.neighbours.k={k}: {dump.folder} has only {dump.n_tokens} tokens")
    queries = sample_rows(dump.n_tokens, setting(cfg, "analysis.neighbours.max_queries"), int(cfg.analysis.sample_seed))
    boot = bootstrap.plan(cfg, "neighbours")
    for layer, prop, value, reps, n in neighbour_layer_rows(cfg, dump, queries, k, metric, device):
        emit("neighbours", prop, "", layer, value, reps, boot, n)


def readout_rows(cfg: DictConfig, dump: Dump, emit) -> None:
    """The logit lens per layer (analysis.measures.readout), on an MLM's first `snapshots.mlm_maskings`
    maskings; nothing for a model without a readout."""
    boot = bootstrap.plan(cfg, "readout")
    quantities = [str(q) for q in setting(cfg, "analysis.readout.quantities")]
    measured, why = layer_readout(dump.folder, boot, quantities, maskings=int(cfg.snapshots.mlm_maskings),
                                  lenses=("logit",))
    if why:
        log.info("%s: no readout: %s", dump.folder, why)
    for _, quantity, target, layer, value, reps, n, _ in measured or []:
        emit("readout", quantity, target, layer, value, reps, boot, n)


def evolution_rows(cfg: DictConfig) -> list[dict]:
    """Every row of one step's part of the evolution table (see the module's docstring)."""
    dump, final, step = open_dumps(cfg)
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    measures = [check_measure(m, "analysis.evolution.measures") for m in setting(cfg, "analysis.evolution.measures")]
    rows: list[dict] = []

    def emit(quantity, measure, target, layer, value, reps, boot, n):
        rows.append(_row(dump, step, dump is final, quantity, measure, target, layer, value, reps, boot, n))

    for name, part in (("distances", lambda: distance_rows(cfg, dump, final, measures, device, emit)),
                       ("mi", lambda: mi_rows(cfg, dump, device, emit)),
                       ("neighbours", lambda: neighbour_rows(cfg, dump, device, emit)),
                       ("readout", lambda: readout_rows(cfg, dump, emit))):
        t = time.perf_counter()
        part()
        log.info("%s seed %d step %d: %s in %.1f s", dump.objective, dump.seed, step, name, time.perf_counter() - t)
    return rows


def run(cfg: DictConfig) -> Path:
    started = time.perf_counter()
    rows = evolution_rows(cfg)
    path = write_table(evolution_part(cfg, point_name(snapshot_of(cfg))), "evolution", rows, evolution_settings(cfg), started,
                       model=f"{cfg.label}/seed{cfg.seed}", snapshot=snapshot_of(cfg))
    log.info("wrote %s (%d rows) in %.1f s", path, len(rows), time.perf_counter() - started)
    return path


main = cli(run)

if __name__ == "__main__":
    main()

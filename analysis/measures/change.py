"""Amount of change: how far a group of tokens' states move from one layer to the next.

    python -m analysis.measures.change experiment=default objective=mt seed=1 [overrides]

METHODS.md §5 (Voita, Sennrich and Titov 2019, §5.1): for the token occurrences of a group (all
tokens, or one frequency-rank bucket), the distance between their states at layers l and l+1,
l = 0..L-1, with the measures of `analysis.change.measures` (PWCCA as in the study; Morcos et al.
2018). PWCCA is asymmetric; this table reports the symmetric mean of both directions, as the
task-distance table does.

Every estimate is made with at least `analysis.min_samples_per_dim` x d_model tokens (see
analysis.buckets): buckets below that floor are left out, and the table's record names them with
their n and the floor. Buckets are compared at equal sample sizes: every measured bucket contributes
the same number of tokens, drawn with `analysis.sample_seed`, and the same rows are used at every
layer pair. Each row also holds `shuffled`: the same two views with the upper layer's rows permuted
(one seeded permutation per group, the same at every layer pair), what "no correspondence" reads
at that n, and `ci_low`, `ci_high`: the bootstrap interval (analysis.bootstrap.method) over the group's sentences
(analysis.bootstrap: the shared plan, the same resamples at every layer pair, in every bucket and model),
whose replicates go to `seed<n>.npz` beside the table (analysis.tables). Writes
`<paths.metrics>/change/<objective>/seed<n>.csv` with the columns
`measure, objective, seed, layer_from, layer_to, bucket, distance, shuffled, n_tokens, ci_low, ci_high`.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from omegaconf import DictConfig

from analysis.io.dumps import Dump, bucket_edges, bucket_index, bucket_labels, load_dump, sample_rows
from analysis.io.tables import write_table
from analysis.stats import bootstrap
from analysis.stats.buckets import FLOOR_KEY, BucketPlan, draw, plan_buckets, sample_floor, shuffle_seed
from analysis.stats.distances import check_measure, distance, paired, replicates
from pipeline.config.cli import cli
from pipeline.config.layout import dump_folder, part_path
from pipeline.config.stages import section
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

log = logging.getLogger("analysis.change")


def token_groups(dump: Dump, cfg: DictConfig) -> tuple[dict[str, np.ndarray], BucketPlan]:
    """Rows of each group: `all` (capped by analysis.change.max_tokens) and every bucket that
    clears the floor, all of one size. Returns (label -> sorted rows, the bucket plan)."""
    a = cfg.analysis
    edges = bucket_edges(cfg)
    labels = bucket_labels(edges)
    index = bucket_index(dump.tokens["freq_rank"], edges)
    rows_of = {label: np.flatnonzero(index == i) for i, label in enumerate(labels)}
    floor = sample_floor(cfg, dump.d_model)
    plan = plan_buckets(labels, {k: len(v) for k, v in rows_of.items()}, floor=floor, cap=a.change.max_tokens,
                        cap_key="analysis.change.max_tokens", unit="tokens")
    rng = np.random.default_rng(int(a.sample_seed))
    everything = sample_rows(dump.n_tokens, a.change.max_tokens, int(a.sample_seed))
    if len(everything) < floor:
        raise PipelineError(f"{dump.folder} holds {len(everything)} tokens (analysis.change.max_tokens="
                            f"{a.change.max_tokens}): fewer than {FLOOR_KEY} x d_model = {floor}; "
                            "use more probe sentences or lower the setting")
    groups = {"all": everything}
    for label in plan.measured:
        groups[label] = draw(rows_of[label], plan.size, rng)
    return groups, plan


def change_rows(dump: Dump, cfg: DictConfig) -> tuple[list[dict], BucketPlan]:
    """The rows of the change table for one dump, and the bucket plan they follow."""
    measures = list(cfg.analysis.change.measures)
    if not measures:
        raise PipelineError("setting analysis.change.measures is empty: name at least one of pwcca, svcca, cka")
    device = resolve_device(str(cfg.analysis.device), "analysis.device")
    measures = [check_measure(m, "analysis.change.measures") for m in measures]
    groups, plan = token_groups(dump, cfg)
    log.info("%s seed %d: %d tokens; buckets: %s", dump.objective, dump.seed, dump.n_tokens, plan.describe())
    perms = {label: shuffle_seed(cfg, i).permutation(len(idx)) for i, (label, idx) in enumerate(groups.items())}
    boot = bootstrap.plan(cfg, "change")
    carried: dict[str, object] = {}  # per group: the upper layer's resampled sums, the next pair's lower
    rows = []
    from tqdm.auto import tqdm

    upper = dump.states(0)  # (n_tokens, d_model); each layer is read once
    for layer in tqdm(range(dump.n_layers), desc=f"change {dump.objective} seed {dump.seed}", unit="layer",
                      disable=None):
        lower, upper = upper, dump.states(layer + 1)
        for label, idx in groups.items():
            cov, shuffled = paired(lower[idx], upper[idx], perms[label], device=device)  # shared by the measures
            point = {measure: distance(measure, cov, cfg) for measure in measures}
            reps, carried[label] = replicates(measures, lower[idx], upper[idx], dump.tokens["sentence_id"][idx],
                                              cfg, boot, device, carried.get(label))
            for measure in measures:
                rows.append({"measure": measure, "objective": dump.objective, "seed": dump.seed,
                             "layer_from": layer, "layer_to": layer + 1, "bucket": label,
                             "distance": point[measure], "shuffled": distance(measure, shuffled, cfg),
                             "n_tokens": len(idx), **boot.summary(point[measure], reps[measure]),
                             "replicates": {"distance": reps[measure]}})
    return rows, plan


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    dump = load_dump(dump_folder(cfg, str(cfg.label), int(cfg.seed)))
    rows, plan = change_rows(dump, cfg)
    out = write_table(part_path(cfg, "change"), "change", rows, section(cfg, "change"), started,
                      model=f"{dump.objective}/seed{dump.seed}", floor=plan.floor, left_out=plan.left_out(),
                      bootstrap=bootstrap.plan(cfg, "change").describe())
    log.info("wrote %s (%d rows)", out, len(rows))


main = cli(run)

if __name__ == "__main__":
    main()

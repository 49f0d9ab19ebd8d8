"""The table of distances between the models of an experiment, layer by layer (PWCCA, SVCCA, linear
CKA: analysis.stats.cca; METHODS.md §4-6), with an interval from the shared resampling plan.

    python -m analysis.measures.similarity experiment=<name> [overrides]
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io import words
from analysis.io.dumps import check_aligned, load_grid, sample_rows
from analysis.io.tables import PRETRAINED_PAIR, pair_kind, write_table
from analysis.stats import bootstrap
from analysis.stats.buckets import FLOOR_KEY, sample_floor, shuffle_seed
from analysis.stats.cca import Covariances, Spectrum, centre, distance_from_covariances
from pipeline.config.analysis import setting
from pipeline.config.cli import cli
from pipeline.config.layout import table_path
from pipeline.config.pretrained import word_state
from pipeline.config.stages import section
from pipeline.errors import PipelineError
from pipeline.machine.runtime import resolve_device

log = logging.getLogger("analysis.similarity")


# ---------------------------------------------------------------- between the models of an experiment

def _settings(cfg: DictConfig) -> dict:
    return {key: setting(cfg, f"analysis.similarity.{key}") for key in ("measures", "max_tokens", "ridge",
                                                                        "svcca_variance")}


@contextlib.contextmanager
def _one_thread():
    """Decompositions of d x d matrices gain little from threads, and OpenMP's spin-waiting makes
    them many times slower when other processes share the cores: run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def relative_layer(step: int, depth: int, steps: int) -> int:
    """The layer of a model of `depth` layers at step `step` of `steps` (the shallowest model's depth):
    round(step x depth / steps), halves up; the step itself when the depths agree."""
    return int(math.floor(step * depth / steps + 0.5))


class TokenViews:
    """Rows of the similarity table's views when every model shares one tokenizer: token occurrences."""

    unit, how = "token", None

    def __init__(self, dumps: dict) -> None:
        self.dumps = dumps
        first = next(iter(dumps.values()))
        self.n_rows, self.sentence_ids = first.n_tokens, first.tokens["sentence_id"]

    def states(self, key, layer: int, rows: np.ndarray) -> np.ndarray:
        return self.dumps[key].states(layer, rows)

    def width(self, key) -> int:
        return self.dumps[key].d_model

    def folder(self, key):
        return self.dumps[key].folder


class WordViews:
    """Rows of the views when the tokenizers differ (a pretrained model among the models): the probe
    words every dump holds, each word's state its first subword's or its subwords' mean
    (pretrained.word_state; analysis/io/words.py)."""

    unit = "word"

    def __init__(self, dumps: dict, how: str) -> None:
        self.alignment, self.how = words.align(dumps, how), how
        self.n_rows, self.sentence_ids = self.alignment.n_words, self.alignment.sentence_ids

    def states(self, key, layer: int, rows: np.ndarray) -> np.ndarray:
        return self.alignment.states(key, layer, rows)

    def width(self, key) -> int:
        return self.alignment.dumps[key].d_model

    def folder(self, key):
        return self.alignment.dumps[key].folder


def pair_rows(cfg: DictConfig, views: TokenViews | WordViews, depth: dict, pairs: dict, device, bar) -> list[dict]:
    """The rows of `pairs` ((a, b) -> pair kind) between the models of `views` at every step 1..L_min of
    the shallowest of them (layer round(l x L / L_min) of a model of L layers: `relative_layer`), on one
    seeded subset of the views' rows, every measure, with the shared plan's replicates. Each (model,
    layer) covariance is computed and decomposed once, and resampled once, for all its pairs."""

    s = _settings(cfg)
    keys = list(dict.fromkeys(key for pair in pairs for key in pair))
    n_layers = min(depth[key] for key in keys)
    rows_idx = sample_rows(views.n_rows, s["max_tokens"], int(cfg.analysis.sample_seed))
    n, widest = len(rows_idx), max(views.width(key) for key in keys)
    if n < (floor := sample_floor(cfg, widest)):
        raise PipelineError(f"settings analysis.similarity.max_tokens={s['max_tokens']} / {FLOOR_KEY}="
                            f"{cfg.analysis.min_samples_per_dim}: {n} {views.unit}s for views of {widest} features, "
                            f"fewer than the {floor} every estimate needs")
    boot = bootstrap.plan(cfg, "similarity")  # the shared plan: the same resamples for every model and layer
    unit, draws = boot.units(views.sentence_ids[rows_idx]), boot.draws()
    rows = []
    for layer in range(1, n_layers + 1):
        # The n x d work, on every thread: each (model, layer) covariance once, each pair's cross-covariance.
        at = {key: relative_layer(layer, depth[key], n_layers) for key in keys}
        centred = {key: centre(views.states(key, at[key], rows_idx), device=device) for key in keys}
        covs = {(a, a): centred[a].T @ centred[a] / (n - 1) for a in keys}
        covs.update({(a, b): centred[a].T @ centred[b] / (n - 1) for a, b in pairs})
        bad = [str(views.folder(key)) for key in keys if not torch.isfinite(covs[key, key]).all()]
        if bad:
            raise PipelineError(f"layer {layer} of {', '.join(bad)} holds NaN or infinite states: dump it again")
        # The no-correspondence level at this n: b's rows permuted (one seeded permutation per layer).
        perm = torch.as_tensor(shuffle_seed(cfg, layer).permutation(n), device=device)
        shuffled = {(a, b): centred[a].T @ centred[b][perm] / (n - 1) for a, b in pairs}
        resampled = {key: bootstrap.Resampled(centred[key], unit, draws) for key in keys} if draws is not None else {}
        del centred
        bar.update(len(keys))
        with _one_thread():  # the d x d work: each view decomposed once, then every pair
            spectra = {key: Spectrum.of(covs[key, key]) for key in keys}
            for (a, b), kind in pairs.items():
                boot_covs = bootstrap.resampled_covariances(resampled[a], resampled[b]) if resampled else None
                for measure in s["measures"]:
                    distance, level = (distance_from_covariances(measure, Covariances(spectra[a], sxy, spectra[b], n),
                                                                 s["ridge"], s["svcca_variance"])
                                       for sxy in (covs[a, b], shuffled[a, b]))
                    reps = None if boot_covs is None else np.array(
                        [distance_from_covariances(measure, c, s["ridge"], s["svcca_variance"]) for c in boot_covs])
                    rows.append({"measure": measure, "pair": kind, "objective_a": a[0], "seed_a": a[1],
                                 "objective_b": b[0], "seed_b": b[1], "layer": layer, "distance": distance,
                                 "shuffled": level, "n_tokens": n, **boot.summary(distance, reps),
                                 "layer_a": at[a], "layer_b": at[b], "replicates": {"distance": reps}})
                bar.update(2)
    return rows


def run(cfg: DictConfig) -> Path:
    """Write <paths.metrics>/similarity.csv: for every pair of models of the experiment's grid and
    every layer 1..L, the distance between their states of the same seeded subset of probe tokens,
    for each measure of `analysis.similarity.measures`. PWCCA, being asymmetric, is written as the
    mean of both orders. The models include the step-0 control `init` of every seed in use; each
    row says which kind of pair it compares (column `pair`, `analysis.tables.pair_kind`): two
    objectives of one seed (same_init: the study's design), of two seeds (different_init), one
    objective of two seeds (seed_baseline: the "init." baseline), or the step-0 control (init).
    `ci_low`, `ci_high`: the bootstrap interval over the sampled tokens' sentences (the shared plan
    of analysis.bootstrap), whose replicates go to similarity.npz beside the table.
    A pretrained model (pipeline/model/hf.py; pair `pretrained`) has its own tokenizer: its pairs compare the
    probe words every model holds (`WordViews`), at the same relative depth (`layer` is the step 1..L_min,
    `layer_a` / `layer_b` each one's layer). The pairs of two trained models stay what they are without
    it: token occurrences, layer by layer (`TokenViews`), row for row the same numbers."""
    from tqdm.auto import tqdm


    started = time.perf_counter()
    device = resolve_device(cfg.analysis.device, "analysis.device")
    dumps = load_grid(cfg, aligned=False)
    keys = list(dumps)
    if len(keys) < 2:
        raise PipelineError(f"settings workflow.objectives / workflow.seeds / pretrained.models give {len(keys)} "
                            "model: the similarity table needs at least two")
    depth = {key: d.n_layers for key, d in dumps.items()}
    pretrained = [o for o, _ in keys if dumps[o, _].meta.get("pretrained")]
    kinds = {pair: pair_kind(*pair, pretrained=pretrained) for pair in itertools.combinations(keys, 2)}
    trained = {pair: kind for pair, kind in kinds.items() if kind != PRETRAINED_PAIR}
    mixed = {pair: kind for pair, kind in kinds.items() if kind == PRETRAINED_PAIR}
    parts, levels = [], {}
    if trained:
        own = {key: dumps[key] for key in keys if key[0] not in pretrained}
        check_aligned(list(own.values()))
        parts.append((TokenViews(own), trained))
    if mixed:
        words_ = WordViews(dumps, word_state(cfg))
        log.info("pairs with a pretrained model compare words (%s subword's state): %d probe words all %d models "
                 "hold", words_.how, words_.n_rows, len(dumps))
        if len(set(depth.values())) > 1:
            log.info("models of different depths %s: compared at the same relative depth",
                     {f"{o}/seed{sd}": L for (o, sd), L in depth.items()})
        parts.append((words_, mixed))
    log.info("%d models, %d pairs, %s on %s", len(keys), len(kinds), ",".join(setting(cfg, "analysis.similarity.measures")),
             device)
    bar = tqdm(total=sum(min(depth[k] for p in pairs for k in p) * (len({k for p in pairs for k in p}) + 2 * len(pairs))
                         for _, pairs in parts), desc="similarity", disable=None)
    rows = []
    for views, pairs in parts:
        rows += pair_rows(cfg, views, depth, pairs, device, bar)
        levels["pretrained" if views.unit == "word" else "trained"] = {"level": views.unit, "rows": views.n_rows,
                                                                       "word_state": views.how}
    bar.close()
    out = write_table(table_path(cfg, "similarity"), "similarity", rows, section(cfg, "similarity"), started,
                      models=[f"{o}/seed{seed}" for o, seed in keys], device=str(device),
                      bootstrap=bootstrap.plan(cfg, "similarity").describe(), levels=levels,
                      depths={f"{o}/seed{sd}": L for (o, sd), L in depth.items()})
    log.info("wrote %d rows to %s in %.1f s", len(rows), out, time.perf_counter() - started)
    return out


main = cli(run)

if __name__ == "__main__":
    main()

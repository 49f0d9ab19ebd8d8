"""Every analysis setting's type and range, in one place and without torch: each measurement checks
the keys it reads through `setting` before its work, and the workflow checks all of them at once
(`check_analysis_settings`) while it parses, so that a bad `analysis.*` override fails a dry run.
"""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import is_int, number, positive_int, positive_int_or_none, require
from pipeline.errors import PipelineError

MEASURES = ("pwcca", "svcca", "cka")  # the CCA-family distances (analysis.similarity)
METRICS = ("cosine", "euclidean")  # nearest-neighbour metrics (analysis.neighbours)
AFFECTED = ("auto", "all", "later")  # which tokens an influencing token can affect (analysis.influence)
METHODS = ("normal", "percentile", "basic")  # bootstrap intervals
TABLES = ("similarity", "change", "influence", "mi", "neighbours", "readout")  # the tables with intervals


def _measures(v: Any) -> bool:
    return OmegaConf.is_list(v) and len(v) > 0 and all(m in MEASURES for m in v)


def _word(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and v.strip() == v


def _device(v: Any) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))


def _non_negative(v: Any) -> bool:
    return number(v) and v >= 0


Check = tuple[Callable[[Any], bool], str]
SPECS: dict[str, Check] = {
    "analysis.device": (_device, "expected auto, cpu, cuda or cuda:N"),
    "analysis.buckets": (lambda v: OmegaConf.is_list(v) and len(v) >= 2 and all(is_int(e) for e in v)
                         and v[0] >= 1 and all(b > a for a, b in zip(v, list(v)[1:])),
                         "expected increasing ranks starting at >= 1"),
    "analysis.min_samples_per_dim": (lambda v: number(v) and v >= 1,
                                     "expected the samples per feature every PWCCA/SVCCA/CKA estimate needs, a number >= 1"),
    "analysis.sample_seed": (is_int, "expected an integer"),
    "analysis.bootstrap.seed": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "analysis.bootstrap.level": (lambda v: isinstance(v, float) and 0 < v < 1, "a coverage in (0, 1), e.g. 0.95"),
    "analysis.bootstrap.groups": (lambda v: is_int(v) and v >= 20, "an integer >= 20"),
    "analysis.bootstrap.method": (lambda v: v in METHODS, " | ".join(METHODS)),
    **{f"analysis.bootstrap.resamples.{t}": (lambda v: is_int(v) and (v == 0 or v >= 10),
                                             "0 (no interval) or an integer >= 10") for t in TABLES},
    "analysis.similarity.measures": (_measures, f"expected a non-empty list of {', '.join(MEASURES)}"),
    "analysis.similarity.max_tokens": (lambda v: v is None or (is_int(v) and v > 1),
                                       "expected null (all) or an integer > 1"),
    "analysis.similarity.ridge": (lambda v: number(v) and v >= 0, "expected a number >= 0 (0: no ridge)"),
    "analysis.similarity.svcca_variance": (lambda v: number(v) and 0 < v <= 1, "expected a share in (0, 1]"),
    "analysis.change.measures": (_measures, f"expected a non-empty list of {', '.join(MEASURES)}"),
    "analysis.change.max_tokens": (positive_int_or_none, "expected null (all) or a positive integer"),
    "analysis.influence.measure": (lambda v: v in MEASURES, f"expected one of {', '.join(MEASURES)}"),
    "analysis.influence.affected": (lambda v: v in AFFECTED, f"expected one of {', '.join(AFFECTED)}"),
    "analysis.influence.min_influencers": (positive_int,
                                           "expected a positive integer (distinct influencing tokens a bucket needs)"),
    "analysis.influence.max_sentences": (positive_int_or_none, "expected null (all) or a positive integer"),
    "analysis.influence.max_pairs_per_bucket": (positive_int, "expected a positive integer"),
    "analysis.influence.batch_tokens": (positive_int, "must be a positive integer"),
    "analysis.mi.top_types": (positive_int, "a positive integer"),
    "analysis.mi.n_clusters": (lambda v: positive_int(v) and v > 1, "an integer > 1"),
    "analysis.mi.sweep": (lambda v: v is None or (OmegaConf.is_list(v) and all(positive_int(c) and c > 1 for c in v)),
                          "a list of integers > 1 (or null)"),
    "analysis.mi.max_tokens": (positive_int_or_none, "a positive integer or null"),
    "analysis.mi.kmeans_iters": (positive_int, "a positive integer"),
    "analysis.mi.kmeans_tol": (lambda v: number(v) and 0 <= v < 1, "a share of points in [0, 1)"),
    "analysis.mi.kmeans_batch": (positive_int_or_none, "a positive integer or null (full-batch Lloyd)"),
    "analysis.mi.seed": (is_int, "an integer"),
    "analysis.mi.restarts": (positive_int, "a positive integer (k-means restarts)"),
    "analysis.neighbours.k": (positive_int, "a positive integer"),
    "analysis.neighbours.metric": (lambda v: v in METRICS, f"one of {list(METRICS)}"),
    "analysis.neighbours.max_queries": (positive_int_or_none, "a positive integer or null (all tokens)"),
    "analysis.evolution.measures": (_measures, f"expected a non-empty list of {', '.join(MEASURES)}"),
    "analysis.evolution.max_tokens": (lambda v: v is None or (is_int(v) and v > 1), "expected null (all) or an integer > 1"),
    "analysis.evolution.mi_tokens": (positive_int_or_none, "a positive integer or null (analysis.mi.max_tokens)"),
    "analysis.evolution.restarts": (positive_int, "a positive integer (k-means restarts)"),
    "analysis.evolution.within": (lambda v: number(v) and 0 < v < 1, "expected a distance in (0, 1)"),
    "analysis.readout.quantities": (lambda v: OmegaConf.is_list(v) and len(v) > 0
                                    and all(q in ("loss", "accuracy", "kl") for q in v),
                                    "expected a non-empty list of loss, accuracy, kl"),
    "analysis.tsne.words": (lambda v: OmegaConf.is_list(v) and all(_word(w) for w in v), "a list of words (no spaces)"),
    "analysis.tsne.position_word": (lambda v: v is None or _word(v), "a word, or null for no position picture"),
    "analysis.tsne.max_per_word": (positive_int_or_none, "a positive integer or null (all)"),
    "analysis.tsne.perplexity": (lambda v: number(v) and v > 0, "a positive number"),
    "analysis.tsne.seed": (is_int, "an integer"),
    "analysis.examples.words": (positive_int, "a positive integer (the most frequent words queried)"),
    "analysis.examples.per_word": (positive_int, "a positive integer (occurrences of each word)"),
    "analysis.examples.k": (positive_int, "a positive integer (neighbours per query)"),
    "analysis.report.figure_format": (lambda v: v in ("svg", "png"), "expected svg or png"),
    "analysis.report.dpi": (positive_int, "expected a positive integer"),
    "analysis.report.tsne_max_points": (positive_int, "expected a positive integer"),
    "analysis.report.interactive": (lambda v: isinstance(v, bool), "expected true or false"),
    "analysis.report.tsne_layers": (lambda v: v is None or (OmegaConf.is_list(v) and all(is_int(x) and x >= 0 for x in v)),
                                    "expected null or a list of layer numbers"),
    "analysis.report.claims.measure": (lambda v: v in MEASURES, f"expected one of {', '.join(MEASURES)}"),
    **{f"analysis.report.claims.{key}": (_non_negative, "expected a non-negative number")
       for key in ("mi_tolerance", "change_tolerance", "mt_keep_share", "dropout_excess_factor")},
}


def setting(cfg: DictConfig, key: str) -> Any:
    """The value of analysis setting `key`, once it passes its check (else one line naming it)."""
    if key not in SPECS:
        raise KeyError(f"{key} has no check in pipeline.config.analysis.SPECS")
    return require(cfg, key, *SPECS[key])


def check_analysis_settings(cfg: DictConfig) -> None:
    """Every analysis setting (what the workflow runs before any job)."""
    if OmegaConf.select(cfg, "analysis") is None:
        raise PipelineError("setting analysis: missing (conf/analysis/default.yaml)")
    for key in SPECS:
        setting(cfg, key)

"""Which tokens are removed and which states are compared (METHODS.md §6): the influencing tokens of each sentence, drawn to fill every frequency bucket, and the positions each one affects."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from omegaconf import DictConfig

from analysis.io.dumps import Dump, bucket_edges, bucket_index, bucket_labels
from analysis.stats.buckets import BucketPlan, plan_buckets, sample_floor
from pipeline.config.analysis import AFFECTED, setting
from pipeline.errors import PipelineError


def resolve_affected(setting: str, causal: bool) -> str:
    """`analysis.influence.affected` for a model: later (only the tokens after the influencing one)
    for a causal model under auto or later; all otherwise (in a bidirectional model every other
    token can be affected)."""
    if setting not in AFFECTED:
        raise PipelineError(f"setting analysis.influence.affected={setting!r}: expected one of {', '.join(AFFECTED)}")
    return "later" if causal and setting in ("auto", "later") else "all"


def choose_influencers(dump: Dump, cfg: DictConfig, affected: str) -> tuple[dict[int, list[int]], np.ndarray,
                                                                            BucketPlan]:
    """Influencing tokens per bucket (`affected`: resolved, all | later), drawn until every measured
    bucket holds at least the plan's number of pairs and analysis.influence.min_influencers of them.
    Returns (sentence id -> positions of its influencing tokens, the bucket of every dump row (-1:
    none), the bucket plan)."""
    icfg = cfg.analysis.influence
    min_influencers = int(setting(cfg, "analysis.influence.min_influencers"))
    t = dump.tokens
    rng = np.random.default_rng(int(cfg.analysis.sample_seed))
    sentences = np.unique(t["sentence_id"])
    limit = icfg.max_sentences
    if limit is not None and limit < len(sentences):
        sentences = np.sort(rng.choice(sentences, size=int(limit), replace=False))
    in_subset = np.isin(t["sentence_id"], sentences)
    edges = bucket_edges(cfg)
    labels = bucket_labels(edges)
    bucket = bucket_index(t["freq_rank"], edges)
    pairs_of = pairs_per_influencer(t["position"], t["sentence_length"], affected)
    candidates = {label: np.flatnonzero(in_subset & (bucket == i) & (pairs_of > 0)) for i, label in enumerate(labels)}
    available = {label: int(pairs_of[rows].sum()) for label, rows in candidates.items()}
    plan = plan_buckets(labels, available, floor=sample_floor(cfg, dump.d_model), cap=icfg.max_pairs_per_bucket,
                        cap_key="analysis.influence.max_pairs_per_bucket", unit="pairs",
                        counts={label: len(rows) for label, rows in candidates.items()}, min_count=min_influencers,
                        count_unit="influencing tokens", count_key="analysis.influence.min_influencers")
    if plan.measured and plan.size < min_influencers:
        raise PipelineError(f"setting analysis.influence.min_influencers={min_influencers} exceeds the {plan.size} "
                            "pairs every bucket is measured with (analysis.influence.max_pairs_per_bucket or the "
                            "smallest bucket): each influencing token needs a pair")
    chosen: dict[int, list[int]] = defaultdict(list)
    for label in plan.measured:
        rows = rng.permutation(candidates[label])
        # the first influencers whose pairs reach the bucket's size, and at least min_influencers of them
        take = rows[: max(int(np.searchsorted(np.cumsum(pairs_of[rows]), plan.size)) + 1, min_influencers)]
        for row in take:
            chosen[int(t["sentence_id"][row])].append(int(t["position"][row]))
    keep = np.full(len(bucket), -1)
    measured = [labels.index(label) for label in plan.measured]
    keep[np.isin(bucket, measured)] = bucket[np.isin(bucket, measured)]
    return dict(chosen), keep, plan


def pairs_per_influencer(position: np.ndarray, length: np.ndarray, affected: str) -> np.ndarray:
    """How many pairs a token contributes (`affected` resolved): the other tokens of its sentence
    (all), or only those after it (later)."""
    if affected == "later":
        return length - position - 1
    if affected == "all":
        return length - 1
    raise PipelineError(f"analysis.influence.affected resolved to {affected!r}: expected all or later")


def affected_positions(position: torch.Tensor, removed: torch.Tensor, affected: str) -> torch.Tensor:
    """(R, T) bool: the padded positions whose states form the pairs of each removal. position (R, T):
    the dump position (0..n-1) of the row at each padded index of the removal's sentence, -1 for bos,
    eos, special tokens and padding; removed (R,): the removed row's dump position. The pairs: every
    other row of the sentence, and with `affected=later` only those after it."""
    valid = (position >= 0) & (position != removed[:, None])
    if affected == "later":
        valid &= position > removed[:, None]
    return valid


def exact_subset(influencer: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `size` of the rows, `influencer` (n,) the influencing token of each: one row
    of every influencer first (each keeps a pair), the rest at random."""
    order = rng.permutation(len(influencer))
    _, first = np.unique(influencer[order], return_index=True)
    firsts = order[first]
    if len(firsts) > size:
        raise ValueError(f"{len(firsts)} influencers cannot each keep a pair of {size}")
    rest = order[~np.isin(order, firsts)]
    return np.sort(np.concatenate([firsts, rest[: size - len(firsts)]]))

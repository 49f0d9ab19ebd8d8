"""Frequency-bucket sampling shared by the per-bucket measurements (change, influence).

A distance such as PWCCA estimated from n samples of d features is biased (the sample canonical
correlations overfit when n/d is small), so buckets of different sizes are not comparable as they
stand. Each measurement therefore draws the same number of samples from every bucket it reports:
the size of the smallest bucket that clears the floor `analysis.min_bucket_tokens * d_model`,
capped by the measurement's own limit. Buckets below the floor are left out and reported as such.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.store import PipelineError

log = logging.getLogger("analysis.buckets")


@dataclass(frozen=True)
class BucketPlan:
    """Which buckets are measured, with how many samples each, and which are left out (and why)."""

    labels: list[str]          # every bucket label, in rank order
    available: dict[str, int]  # samples each bucket holds
    size: int                  # samples drawn from every measured bucket
    measured: list[str]
    skipped: dict[str, str]    # label -> reason

    def describe(self) -> str:
        parts = [f"{label}: {self.available[label]}" for label in self.labels]
        gone = "; ".join(f"{label} ({why})" for label, why in self.skipped.items())
        return f"{self.size} per bucket from [{', '.join(parts)}]" + (f"; left out: {gone}" if gone else "")


def plan_buckets(labels: list[str], available: dict[str, int], floor: float, cap: int | None,
                 cap_key: str) -> BucketPlan:
    """Measure every bucket holding more than `floor` samples, each with the same number of samples:
    the smallest such bucket's size, or `cap` (the setting `cap_key`) if smaller."""
    if cap is not None and cap <= floor:
        raise PipelineError(f"setting {cap_key}={cap} is invalid: it must exceed analysis.min_bucket_tokens x "
                            f"d_model = {floor:g}, the samples a bucket needs to be measured")
    skipped = {label: f"{available.get(label, 0)} samples, at most {floor:g} needed"
               for label in labels if available.get(label, 0) <= floor}
    measured = [label for label in labels if label not in skipped]
    size = min((available[label] for label in measured), default=0)
    if cap is not None:
        size = min(size, int(cap))
    return BucketPlan(labels, {label: available.get(label, 0) for label in labels}, size, measured, skipped)


def draw(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` of `rows` at random (sorted), or all of them when there are no more than that."""
    if len(rows) <= size:
        return np.sort(rows)
    return np.sort(rng.choice(rows, size=size, replace=False))

"""Sample sizes of the CCA-family estimates, and the frequency-bucket sampling shared by the
per-bucket measurements (change, influence).

A distance such as PWCCA estimated from n samples of d features is biased towards similarity (the
sample canonical correlations overfit when n/d is small: two independent 128-d Gaussian views read
0.36 at n = 257, 0.73 at 1,280, 0.93 at 20,000). So every PWCCA/SVCCA/CKA estimate (similarity,
change, influence) is made with at least `analysis.min_samples_per_dim` x d samples
(`sample_floor`), and each per-bucket measurement draws the same number of samples from every
bucket it reports: the size of the smallest bucket that clears the floor, capped by the
measurement's own limit. Buckets below the floor are left out, and the table's record names them
with their n and the floor (`BucketPlan.left_out`), which the report shows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from pipeline.config.analysis import setting
from pipeline.errors import PipelineError

log = logging.getLogger("analysis.buckets")

FLOOR_KEY = "analysis.min_samples_per_dim"


def sample_floor(cfg: DictConfig, d: int) -> int:
    """The fewest samples a CCA-family estimate on d-feature views is made with:
    ceil(analysis.min_samples_per_dim x d), and always more than d (CCA needs n > d)."""
    ratio = setting(cfg, FLOOR_KEY)
    return max(d + 1, math.ceil(float(ratio) * d))


@dataclass(frozen=True)
class BucketPlan:
    """Which buckets are measured, with how many samples each, and which are left out (and why)."""

    labels: list[str]          # every bucket label, in rank order
    available: dict[str, int]  # samples each bucket holds
    size: int                  # samples drawn from every measured bucket
    measured: list[str]
    skipped: dict[str, str]    # label -> reason
    floor: int = 0             # the samples a bucket needs

    def describe(self) -> str:
        parts = [f"{label}: {self.available[label]}" for label in self.labels]
        gone = "; ".join(f"{label} ({why})" for label, why in self.skipped.items())
        return f"{self.size} per bucket from [{', '.join(parts)}]" + (f"; left out: {gone}" if gone else "")

    def left_out(self) -> list[dict]:
        """The buckets below the floor, for the table's record: bucket, its n, the floor, why."""
        return [{"bucket": label, "n": self.available[label], "floor": self.floor, "reason": why}
                for label, why in self.skipped.items()]


def plan_buckets(labels: list[str], available: dict[str, int], floor: int, cap: int | None, cap_key: str,
                 unit: str = "samples", counts: dict[str, int] | None = None, min_count: int = 0,
                 count_unit: str = "", count_key: str = "") -> BucketPlan:
    """Measure every bucket holding at least `floor` samples (and, when `counts` is given, at least
    `min_count` of what they count, the setting `count_key`), each with the same number of samples:
    the smallest such bucket's size, or `cap` (the setting `cap_key`) if smaller."""
    if cap is not None and cap < floor:
        raise PipelineError(f"setting {cap_key}={cap} is invalid: it must reach {FLOOR_KEY} x d_model = {floor}, "
                            "the samples a bucket needs to be measured")
    skipped = {}
    for label in labels:
        n = available.get(label, 0)
        why = [f"{n} {unit} < floor {floor}"] if n < floor else []
        if counts is not None and counts.get(label, 0) < min_count:
            why.append(f"{counts.get(label, 0)} {count_unit} < {count_key} = {min_count}")
        if why:
            skipped[label] = ", ".join(why)
    measured = [label for label in labels if label not in skipped]
    size = min((available[label] for label in measured), default=0)
    if cap is not None:
        size = min(size, int(cap))
    return BucketPlan(labels, {label: available.get(label, 0) for label in labels}, size, measured, skipped, floor)


def shuffle_seed(cfg: DictConfig, *parts: int) -> np.random.Generator:
    """The generator of a no-correspondence level (a row permutation): analysis.sample_seed, then
    `parts` (a layer, a group), so that every level is seeded and reproducible."""
    return np.random.default_rng([int(cfg.analysis.sample_seed), 7, *map(int, parts)])


def draw(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` of `rows` at random (sorted), or all of them when there are no more than that."""
    if len(rows) <= size:
        return np.sort(rows)
    return np.sort(rng.choice(rows, size=size, replace=False))

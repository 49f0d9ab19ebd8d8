"""analysis.measures: the running moments equal the covariances of the rows they saw."""
import numpy as np
import torch

import pytest

from analysis.buckets import plan_buckets
from analysis.measures import Moments, check_measure, distance
from pipeline.store import PipelineError
from analysis.similarity import covariances, pwcca_distance
from pipeline.config import compose


def test_moments_equal_direct_covariances_even_with_large_offsets():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((900, 6)) + 1e6  # a mean 10^6 times the spread: raw sums would cancel badly
    b = a @ rng.standard_normal((6, 4)) + rng.standard_normal((900, 4))
    m = Moments(6, 4)  # unequal widths
    for start in range(0, 900, 250):
        m.add(torch.from_numpy(a[start:start + 250]), torch.from_numpy(b[start:start + 250]))
    got, want = m.covariances(), covariances(a, b)
    assert got.n == 900
    for name in ("sxx", "sxy", "syy"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-9)


def test_distance_is_the_symmetric_pwcca():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 5))
    y = x[:, :3] @ rng.standard_normal((3, 7)) + 0.5 * rng.standard_normal((600, 7))
    got = distance(check_measure("pwcca", "analysis.change.measures"), covariances(x, y), compose(["experiment=smoke"]))
    both = (pwcca_distance(x, y) + pwcca_distance(y, x)) / 2
    assert abs(got - both) < 1e-12
    assert abs(pwcca_distance(x, y) - pwcca_distance(y, x)) > 1e-3  # the two directions do differ here


def test_unknown_measure_names_the_setting():
    with pytest.raises(PipelineError, match="analysis.change.measures: unknown measure 'ccA'"):
        check_measure("ccA", "analysis.change.measures")


def test_a_cap_at_or_below_the_floor_is_refused_naming_the_setting():
    available = {"1-10": 5000, "10-100": 3000}
    assert plan_buckets(list(available), available, floor=256, cap=257, cap_key="x.cap").size == 257
    with pytest.raises(PipelineError, match=r"x.cap=256 is invalid: it must exceed .* = 256"):
        plan_buckets(list(available), available, floor=256, cap=256, cap_key="x.cap")

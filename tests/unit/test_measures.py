"""analysis.measures and analysis.buckets: the running moments equal the covariances of the rows
they saw; the shuffled (no-correspondence) level against the plain numpy reference; the floor."""
import numpy as np
import torch

import pytest

from analysis.stats.buckets import plan_buckets, sample_floor
from analysis.stats.distances import Moments, check_measure, distance, paired
from pipeline.errors import PipelineError
from analysis.stats.cca import covariances, pwcca_distance
from pipeline.config.compose import compose
from tests import reference_similarity as ref


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


def test_a_cap_below_the_floor_is_refused_naming_the_setting():
    available = {"1-10": 5000, "10-100": 3000}
    assert plan_buckets(list(available), available, floor=256, cap=256, cap_key="x.cap").size == 256
    with pytest.raises(PipelineError, match=r"x.cap=255 is invalid: it must reach analysis.min_samples_per_dim .* = 256"):
        plan_buckets(list(available), available, floor=256, cap=255, cap_key="x.cap")


def test_buckets_below_the_floor_are_left_out_and_named():
    available = {"1-10": 5000, "10-100": 1280, "100-1000": 1279, "1000-30000": 9000}
    counts = {"1-10": 600, "10-100": 150, "100-1000": 140, "1000-30000": 99}
    plan = plan_buckets(list(available), available, floor=1280, cap=None, cap_key="x.cap", unit="pairs",
                        counts=counts, min_count=100, count_unit="influencing tokens", count_key="x.min")
    assert plan.measured == ["1-10", "10-100"] and plan.size == 1280  # the floor itself is enough
    assert plan.left_out() == [
        {"bucket": "100-1000", "n": 1279, "floor": 1280, "reason": "1279 pairs < floor 1280"},
        {"bucket": "1000-30000", "n": 9000, "floor": 1280, "reason": "99 influencing tokens < x.min = 100"}]
    assert "left out: 100-1000 (1279 pairs < floor 1280)" in plan.describe()


def test_the_floor_is_a_setting_of_samples_per_feature():
    cfg = compose(["experiment=smoke", "analysis.min_samples_per_dim=10"])
    assert sample_floor(cfg, 128) == 1280
    assert sample_floor(compose(["experiment=smoke", "analysis.min_samples_per_dim=1"]), 128) == 129  # n > d
    assert sample_floor(compose(["experiment=smoke", "analysis.min_samples_per_dim=2.5"]), 64) == 160
    with pytest.raises(PipelineError, match="analysis.min_samples_per_dim"):
        sample_floor(compose(["experiment=smoke", "analysis.min_samples_per_dim=0.5"]), 64)


def test_shuffled_level_of_independent_views_matches_the_reference():
    """At n = 10 d, PWCCA of x and y with y's rows permuted (the no-correspondence level) equals the
    plain numpy reference on the permuted rows, and reads ~0.73 for 128-d views, not 1: at this n
    unrelated views look similar, which is why every table carries the level."""
    d, n = 128, 1280
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) * np.linspace(0.5, 2, d) + 3.0
    perm = np.random.default_rng(6).permutation(n)
    cfg = compose(["experiment=smoke"])
    cov, shuffled = paired(x, y, perm)
    want = (ref.pwcca_distance(x, y[perm]) + ref.pwcca_distance(y[perm], x)) / 2
    assert distance("pwcca", shuffled, cfg) == pytest.approx(want, abs=1e-9)
    assert distance("pwcca", cov, cfg) == pytest.approx(pwcca_distance(x, y, symmetric=True), abs=1e-9)
    assert 0.70 < want < 0.76
    # related views: distance ~0, but their shuffled level is that of independent views
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov, shuffled = paired(x, x @ q, perm)
    assert distance("pwcca", cov, cfg) < 1e-5  # the ridge
    assert abs(distance("pwcca", shuffled, cfg) - want) < 0.03
    for measure, level in (("svcca", ref.svcca_distance(x, y[perm])), ("cka", ref.linear_cka_distance(x, y[perm]))):
        assert distance(measure, paired(x, y, perm)[1], cfg) == pytest.approx(level, abs=1e-8), measure

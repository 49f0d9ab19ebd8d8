"""The bootstrap over probe sentences: nominal coverage, and the sufficient-statistics paths equal a
direct recomputation on the resampled rows."""
import numpy as np
import pytest
import torch

from analysis.bootstrap import (Resampled, counts, interval, resampled_covariances, resampled_mi, units,
                                weighted_means)
from analysis.mutual_info import plugin_mi
from analysis.similarity import covariances, distance_from_covariances


def _sentences(n_sentences: int, rng: np.random.Generator) -> np.ndarray:
    return np.repeat(np.arange(n_sentences), rng.integers(1, 6, n_sentences))  # 1-5 tokens each


def _resampled_rows(sid: np.ndarray, unit: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """The rows of one resample, each repeated as often as its unit was drawn."""
    return np.concatenate([np.flatnonzero(unit == g) for g in range(len(draw)) for _ in range(draw[g])])


@pytest.mark.parametrize("method", ["normal", "percentile", "basic"])
def test_interval_covers_the_true_mean_at_about_the_nominal_rate(method):
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        sid = _sentences(80, rng)
        effect = rng.normal(size=80)[sid]  # tokens of one sentence are correlated
        values = 1.0 + effect + rng.normal(size=len(sid))
        unit, g = units(sid, None, trial)
        low, high = interval(weighted_means(values, unit, counts(g, 200, trial)), 0.95, values.mean(), method)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_resampling_shifts_the_corrected_mi_and_the_normal_interval_stays_on_its_estimate():
    """Known behaviour that picked the default method: a resample repeats whole sentences, so it
    holds fewer distinct rows; the chance level of a plug-in MI with many cells grows with that more
    than a strong MI does, and every resample's corrected MI falls below the estimate. The percentile
    interval then misses the estimate it is for; the normal one is centred on it, its width the
    resamples' spread."""
    rng = np.random.default_rng(4)
    sid = _sentences(1500, rng)
    labels = rng.integers(0, 300, len(sid))
    clusters = np.where(rng.random(len(sid)) < 0.7, labels, rng.integers(0, 300, len(sid)))  # high MI
    shuffled = rng.permutation(labels)
    corrected = plugin_mi(labels, clusters) - plugin_mi(shuffled, clusters)
    unit, g = units(sid, None, 0)
    draws = counts(g, 200, 0)
    values = resampled_mi(labels, clusters, unit, draws) - resampled_mi(shuffled, clusters, unit, draws)
    low, high = interval(values, 0.95, corrected, "percentile")
    assert high < corrected  # the shift, larger than the spread
    low, high = interval(values, 0.95, corrected, "normal")
    assert low < corrected < high
    assert high - low == pytest.approx(2 * 1.959964 * values.std(ddof=1))
    low_b, high_b = interval(values, 0.95, corrected, "basic")
    assert low_b > corrected - (high - low)  # reflected: the shift pushes it above the estimate


def test_units_keep_sentences_whole_and_respect_the_group_bound():
    sid = np.repeat(np.arange(500), 3)
    unit, g = units(sid, 40, 0)
    assert g == 40 and unit.max() < 40
    assert all(len(set(unit[sid == s])) == 1 for s in range(0, 500, 37))
    unit, g = units(sid[:30], 40, 0)
    assert g == 10


@pytest.mark.parametrize("groups", [None, 7])
def test_weighted_covariances_equal_a_direct_recomputation(groups):
    rng = np.random.default_rng(1)
    sid = _sentences(30, rng)
    x = torch.as_tensor(rng.normal(size=(len(sid), 4)))
    y = torch.as_tensor(rng.normal(size=(len(sid), 3))) + x[:, :3]
    unit, g = units(sid, groups, 0)
    draws = counts(g, 3, 5)
    rx, ry = Resampled(x, unit, draws), Resampled(y, unit, draws)
    for r, cov in enumerate(resampled_covariances(rx, ry)):
        rows = _resampled_rows(sid, unit, draws[r])
        direct = covariances(x[rows], y[rows])
        assert cov.n == len(rows)
        for got, want in ((cov.sxx.matrix, direct.sxx), (cov.sxy, direct.sxy), (cov.syy.matrix, direct.syy)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert distance_from_covariances("pwcca", cov) == pytest.approx(
            distance_from_covariances("pwcca", direct), abs=1e-9)


def test_resampled_mi_equals_the_plugin_mi_of_the_resampled_rows():
    rng = np.random.default_rng(2)
    sid = _sentences(60, rng)
    labels = rng.integers(0, 5, len(sid))
    clusters = (labels + rng.integers(0, 3, len(sid))) % 6
    unit, g = units(sid, None, 0)
    draws = counts(g, 4, 3)
    got = resampled_mi(labels, clusters, unit, draws)
    for r in range(4):
        rows = _resampled_rows(sid, unit, draws[r])
        assert got[r] == pytest.approx(plugin_mi(labels[rows], clusters[rows]), abs=1e-12)


def test_weighted_means_leave_nan_rows_out():
    unit = np.array([0, 0, 1, 1])
    means = weighted_means(np.array([1.0, np.nan, 3.0, 5.0]), unit, np.array([[2, 0], [1, 1], [0, 2]]))
    np.testing.assert_allclose(means, [1.0, 3.0, 4.0])
    assert all(np.isnan(interval([np.nan, np.nan], 0.95)))  # no finite value: no interval

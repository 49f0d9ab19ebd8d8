"""The bootstrap over probe sentences: one plan shared by every table, nominal coverage of the marginal
interval and of the paired contrast interval, and the sufficient-statistics paths equal a direct
recomputation on the resampled rows."""
import numpy as np
import pytest
import torch

from analysis.stats.bootstrap import (Plan, Resampled, draws, interval, resampled_covariances, resampled_mi, unit_of,
                                weighted_means)
from analysis.measures.mutual_info import plugin_mi
from analysis.stats.cca import covariances, distance_from_covariances
from analysis.stats.verdicts import Contrast, Stat, judge

GROUPS = 200


def _sentences(n_sentences: int, rng: np.random.Generator) -> np.ndarray:
    return np.repeat(np.arange(n_sentences), rng.integers(1, 6, n_sentences))  # 1-5 tokens each


def _resampled_rows(unit: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """The rows of one resample, each repeated as often as its unit was drawn."""
    return np.concatenate([np.flatnonzero(unit == g) for g in range(len(draw)) for _ in range(draw[g])])


# ---------------------------------------------------------------- one plan for every table

def test_a_sentences_group_depends_on_its_id_alone():
    ids = np.arange(5000)
    unit = unit_of(ids, GROUPS, 0)
    assert unit.min() >= 0 and unit.max() < GROUPS
    assert np.array_equal(unit_of(ids[1234:2345], GROUPS, 0), unit[1234:2345])  # any subset, any table
    assert np.array_equal(unit_of(np.repeat(ids, 3), GROUPS, 0), np.repeat(unit, 3))  # every token of a sentence
    sizes = np.bincount(unit, minlength=GROUPS)
    assert sizes.min() > 5 and sizes.max() < 50  # ~25 each: dealt at random, not by position
    assert not np.array_equal(unit_of(ids, GROUPS, 1), unit)  # the seed deals anew


def test_resample_r_is_the_same_draw_in_every_table():
    few, many = draws(GROUPS, 20, 3), draws(GROUPS, 200, 3)
    assert np.array_equal(few, many[:20])  # a table of 20 resamples shares them with one of 200
    assert (few.sum(1) == GROUPS).all() and not np.array_equal(few[0], few[1])
    assert draws(GROUPS, 0, 3).shape == (0, GROUPS)
    plan = Plan(resamples=20, seed=3, level=0.95, groups=GROUPS)
    assert np.array_equal(plan.draws(), few) and Plan(0, 3, 0.95, GROUPS).draws() is None


@pytest.mark.parametrize("method", ["normal", "percentile", "basic"])
def test_interval_covers_the_true_mean_at_about_the_nominal_rate(method):
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        sid = _sentences(400, rng) + 1000 * trial  # fresh sentences: other ids, other groups
        effect = rng.normal(size=400)[sid - 1000 * trial]  # tokens of one sentence are correlated
        values = 1.0 + effect + rng.normal(size=len(sid))
        unit = unit_of(sid, GROUPS, 0)
        low, high = interval(weighted_means(values, unit, draws(GROUPS, 200, trial)), 0.95, values.mean(), method)
        covered += low <= 1.0 <= high
    assert 0.9 <= covered / 200 <= 0.99


def test_the_paired_contrast_interval_covers_a_known_difference_and_is_narrower_than_the_marginal_rule():
    """Two estimates on the same sentences (a layer and the next, two models): both share each sentence's
    effect, so they move together under resampling. The interval of their difference from paired
    replicates covers the true difference at about the nominal rate; comparing their two marginal
    intervals for overlap would need a difference several times larger to decide anything."""
    rng = np.random.default_rng(7)
    true_difference, covered, paired_width, marginal_width, trials = 0.05, 0, [], [], 200
    for trial in range(trials):
        sid = _sentences(300, rng) + 1000 * trial
        shared = rng.normal(size=300)[sid - 1000 * trial] + rng.normal(size=len(sid))  # what both see
        a = 1.0 + shared + 0.1 * rng.normal(size=len(sid))
        b = 1.0 - true_difference + shared + 0.1 * rng.normal(size=len(sid))
        unit, counts = unit_of(sid, GROUPS, 0), draws(GROUPS, 200, trial)
        sa = Stat(a.mean(), weighted_means(a, unit, counts))
        sb = Stat(b.mean(), weighted_means(b, unit, counts))
        contrast = judge(Contrast("a − b", sa - sb), 0.95, "normal")
        covered += contrast.low <= true_difference <= contrast.high
        paired_width.append(contrast.high - contrast.low)
        marginal_width.append(sum(np.subtract(*interval(s.reps, 0.95, s.value)[::-1]) for s in (sa, sb)))
    assert 0.9 <= covered / trials <= 0.99
    # the overlap rule decides only beyond the sum of both half-widths; the paired interval is ~10x narrower
    assert np.median(paired_width) < 0.2 * np.median(marginal_width) / 2


# ---------------------------------------------------------------- the sufficient statistics

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
    unit, counts = unit_of(sid, GROUPS, 0), draws(GROUPS, 200, 0)
    values = resampled_mi(labels, clusters, unit, counts) - resampled_mi(shuffled, clusters, unit, counts)
    low, high = interval(values, 0.95, corrected, "percentile")
    assert high < corrected  # the shift, larger than the spread
    low, high = interval(values, 0.95, corrected, "normal")
    assert low < corrected < high
    assert high - low == pytest.approx(2 * 1.959964 * values.std(ddof=1))
    low_b, high_b = interval(values, 0.95, corrected, "basic")
    assert low_b > corrected - (high - low)  # reflected: the shift pushes it above the estimate


@pytest.mark.parametrize("groups", [7, 200])
def test_weighted_covariances_equal_a_direct_recomputation(groups):
    rng = np.random.default_rng(1)
    sid = _sentences(30, rng)
    x = torch.as_tensor(rng.normal(size=(len(sid), 4)))
    y = torch.as_tensor(rng.normal(size=(len(sid), 3))) + x[:, :3]
    unit, counts = unit_of(sid, groups, 0), draws(groups, 3, 5)
    rx, ry = Resampled(x, unit, counts), Resampled(y, unit, counts)
    for r, cov in enumerate(resampled_covariances(rx, ry)):
        rows = _resampled_rows(unit, counts[r])
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
    unit, counts = unit_of(sid, GROUPS, 0), draws(GROUPS, 4, 3)
    got = resampled_mi(labels, clusters, unit, counts)
    for r in range(4):
        rows = _resampled_rows(unit, counts[r])
        assert got[r] == pytest.approx(plugin_mi(labels[rows], clusters[rows]), abs=1e-12)


def test_weighted_means_leave_nan_rows_out():
    unit = np.array([0, 0, 1, 1])
    means = weighted_means(np.array([1.0, np.nan, 3.0, 5.0]), unit, np.array([[2, 0], [1, 1], [0, 2]]))
    np.testing.assert_allclose(means, [1.0, 3.0, 4.0])
    assert all(np.isnan(interval([np.nan, np.nan], 0.95)))  # no finite value: no interval

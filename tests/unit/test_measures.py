"""analysis.measures: the running moments equal the covariances of the rows they saw."""
import numpy as np
import torch

from analysis.measures import Moments, distance_fn
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


def test_distance_fn_is_the_symmetric_pwcca():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 5))
    y = x[:, :3] @ rng.standard_normal((3, 7)) + 0.5 * rng.standard_normal((600, 7))
    fn = distance_fn("pwcca", compose(["experiment=smoke"]), "analysis.change.measures")
    both = (pwcca_distance(x, y) + pwcca_distance(y, x)) / 2
    assert abs(fn(x, y, torch.device("cpu")) - both) < 1e-12
    assert abs(pwcca_distance(x, y) - pwcca_distance(y, x)) > 1e-3  # the two directions do differ here

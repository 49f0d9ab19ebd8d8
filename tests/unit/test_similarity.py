"""analysis.similarity: PWCCA, SVCCA and linear CKA against known answers, against the plain numpy
implementation in tests/reference_similarity.py, and the table of distances between models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from analysis.measures import similarity
from analysis.stats import cca as sim
from analysis.stats.buckets import shuffle_seed
from analysis.io.dumps import sample_rows
from analysis.io.tables import DIFFERENT_INIT, INIT_PAIR, SAME_INIT, SEED_BASELINE, pair_kind, read_record, read_table
from pipeline.config.compose import compose
from pipeline.errors import PipelineError
from tests import reference_similarity as ref
from tests.synthetic import token_columns, write_fake_dump

DISTANCES = {"pwcca": sim.pwcca_distance, "svcca": sim.svcca_distance, "cka": sim.linear_cka_distance}


@pytest.fixture(autouse=True)
def one_thread():
    """The matrices here are tiny: threads gain nothing, and OpenMP / OpenBLAS spin-waiting makes them
    many times slower when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # numpy's BLAS (the reference)
        yield
    torch.set_num_threads(threads)


def gaussian(n: int, d: int, seed: int, offsets: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) + rng.uniform(-offsets, offsets, d)


def orthogonal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def related(n: int, d1: int, d2: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d1) with correlated features; y (n, d2) a noisy linear map of part of x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1)) @ rng.standard_normal((d1, d1)) + 3.0
    k = min(d1, d2)
    y = x[:, :k] @ rng.standard_normal((k, d2)) + 2.0 * rng.standard_normal((n, d2)) - 1.0
    return x, y


def wachter_mean_correlation(n: int, d1: int, d2: int, points: int = 4000) -> float:
    """E[ρ] for independent Gaussian views: the squared canonical correlations follow the Wachter
    (MANOVA) limit with γ1 = d1 / n, γ2 = d2 / n (γ1 <= γ2), density
    f(x) = sqrt((x - a)(b - x)) / (2π γ1 x (1 - x)) on [a, b], a, b = (sqrt(γ2(1-γ1)) ∓ sqrt(γ1(1-γ2)))².
    Integrated with x = (a+b)/2 + (b-a)/2 cos θ, which takes the square-root ends exactly."""
    g1, g2 = sorted((d1 / n, d2 / n))
    a = (np.sqrt(g2 * (1 - g1)) - np.sqrt(g1 * (1 - g2))) ** 2
    b = (np.sqrt(g2 * (1 - g1)) + np.sqrt(g1 * (1 - g2))) ** 2
    theta = (np.arange(points) + 0.5) * np.pi / points
    x = (a + b) / 2 + (b - a) / 2 * np.cos(theta)
    weight = ((b - a) / 2) ** 2 * np.sin(theta) ** 2 * np.pi / points / (2 * np.pi * g1 * x * (1 - x))
    assert abs(weight.sum() - 1) < 1e-6  # a density
    return float(weight @ np.sqrt(x))


# ---------------------------------------------------------------- known answers

@pytest.mark.parametrize("measure", DISTANCES)
def test_identical_views_are_at_distance_zero(measure):
    x = gaussian(2000, 20, 0, offsets=5.0)
    assert 0.0 <= DISTANCES[measure](x, x) < 1e-5


def test_pwcca_and_full_svcca_ignore_invertible_linear_maps():
    x = gaussian(2000, 20, 1)
    a = orthogonal(20, 2) @ np.diag(np.linspace(1, 3, 20)) @ orthogonal(20, 3)  # condition number 3
    y = x @ a + 7.0
    assert sim.pwcca_distance(x, y) < 1e-5 and sim.pwcca_distance(y, x) < 1e-5
    assert sim.svcca_distance(x, y, keep=1.0) < 1e-5
    assert sim.linear_cka_distance(x, y) > 0.01  # CKA, unlike CCA, sees the anisotropic map


def test_svcca_keeps_the_shared_subspace_of_low_rank_views():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((2000, 6)) * np.linspace(1, 1.5, 6)
    x = z @ orthogonal(24, 5)[:6]                                # rank 6 in 24 features
    y = x @ (orthogonal(24, 6) @ np.diag(np.linspace(1, 2, 24)))  # an invertible map of it
    result = sim.svcca(x, y)
    assert (result.x_kept, result.y_kept) == (6, 6)
    assert result.distance < 1e-5
    assert sim.pwcca_distance(x, y) < 1e-5  # the null directions get no weight


def test_cka_is_unchanged_by_orthogonal_maps_and_isotropic_scaling():
    x, y = related(1500, 16, 24, 7)
    base = sim.linear_cka_distance(x, y)
    assert 0.05 < base < 0.95
    assert sim.linear_cka_distance(3.7 * x @ orthogonal(16, 8), y) == pytest.approx(base, abs=1e-10)
    assert sim.linear_cka_distance(x, 0.01 * y @ orthogonal(24, 9)) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("measure", DISTANCES)
def test_per_feature_offsets_change_nothing(measure):
    x, y = related(1500, 12, 18, 10)
    shifted = DISTANCES[measure](x + np.linspace(-1e3, 1e3, 12), y - np.linspace(0, 5e2, 18))
    assert shifted == pytest.approx(DISTANCES[measure](x, y), abs=1e-8)


def test_independent_views_sit_at_the_predicted_chance_level():
    """Large per-feature offsets: without centring, the shared mean direction would correlate
    perfectly and pull every distance far below chance."""
    n, d1, d2 = 3000, 40, 80
    x, y = gaussian(n, d1, 11, offsets=50.0), gaussian(n, d2, 12, offsets=50.0)
    chance = 1 - wachter_mean_correlation(n - 1, d1, d2)  # centring leaves n - 1 degrees of freedom
    p = sim.pwcca(x, y)
    assert abs(p.x_distance - chance) < 0.006 and abs(p.y_distance - chance) < 0.006
    s = sim.svcca(x, y)
    assert abs(s.distance - (1 - wachter_mean_correlation(n - 1, s.x_kept, s.y_kept))) < 0.006
    # Linear CKA of independent isotropic views: E||X^T Y||² / (||X^T X|| ||Y^T Y||) with n - 1 dof.
    cka = np.sqrt(d1 * d2 / ((n - 1 + d1) * (n - 1 + d2)))
    assert abs(sim.linear_cka(x, y).similarity - cka) < 0.003


def test_pwcca_weights_come_from_the_first_view():
    """x = (10 z1, z2), y = (z1 + 0.5 e1, z2 + 3 e2): ρ = (1/sqrt(1.25), 1/sqrt(10)); X's neurons
    weigh the directions by their scales (10, 1), Y's by (sqrt(1.25), sqrt(10))."""
    rng = np.random.default_rng(13)
    z, e = rng.standard_normal((20000, 2)), rng.standard_normal((20000, 2))
    x, y = z * [10.0, 1.0], z + e * [0.5, 3.0]
    rho = np.array([1 / np.sqrt(1.25), 1 / np.sqrt(10)])
    wx, wy = np.array([10, 1]) / 11, np.array([np.sqrt(1.25), np.sqrt(10)]) / (np.sqrt(1.25) + np.sqrt(10))
    p = sim.pwcca(x, y)
    np.testing.assert_allclose(p.cca.correlations.numpy(), rho, atol=0.01)
    np.testing.assert_allclose(p.x_weights.numpy(), wx, atol=0.01)
    np.testing.assert_allclose(p.y_weights.numpy(), wy, atol=0.01)
    assert p.distance == pytest.approx(1 - wx @ rho, abs=0.01)             # 0.158
    assert sim.pwcca_distance(y, x) == pytest.approx(1 - wy @ rho, abs=0.01)  # 0.533
    both = (1 - wx @ rho + 1 - wy @ rho) / 2
    assert sim.pwcca_distance(x, y, symmetric=True) == pytest.approx(both, abs=0.01)
    assert sim.pwcca_distance(y, x, symmetric=True) == pytest.approx(sim.pwcca_distance(x, y, symmetric=True))


def test_duplicated_constant_and_ill_conditioned_features_stay_finite():
    x, y = related(1500, 20, 30, 14)
    wide = np.hstack([x, x[:, :7], np.full((1500, 4), 0.1), 1e-9 * x[:, :3], 1e6 * x[:, 3:5]])
    for a, b in [(wide, y), (y, wide), (wide, wide[:, ::-1])]:
        for name, fn in DISTANCES.items():
            d = fn(a, b)
            assert np.isfinite(d) and 0.0 <= d <= 1.0, (name, d)
    # [X, X] against X, in both orders and unequal widths: every meaningful correlation is 1 and
    # the null directions of the duplicated view get no weight.
    xx = np.hstack([x, x])
    assert sim.pwcca_distance(xx, x) < 1e-4 and sim.pwcca_distance(x, xx) < 1e-4
    assert sim.svcca_distance(xx, x) < 1e-4 and sim.linear_cka_distance(xx, x) < 1e-10


def test_a_view_without_variance_is_at_distance_one():
    x, flat = gaussian(500, 10, 15), np.full((500, 6), 3.3)
    for fn in DISTANCES.values():
        assert fn(x, flat) == 1.0 and fn(flat, x) == 1.0


def test_both_argument_orders_with_unequal_widths():
    x, y = related(1500, 10, 30, 16)
    a, b = sim.pwcca(x, y), sim.pwcca(y, x)
    assert a.cca.correlations.shape == (10,) and a.cca.x_directions.shape == (10, 10)
    assert b.cca.x_directions.shape == (30, 10) and b.cca.x_projections.shape == (10, 30)
    torch.testing.assert_close(a.cca.correlations, b.cca.correlations, atol=1e-10, rtol=0)
    torch.testing.assert_close(a.x_weights, b.y_weights, atol=1e-10, rtol=0)
    assert a.x_distance == pytest.approx(b.y_distance, abs=1e-10)
    assert sim.svcca_distance(x, y) == pytest.approx(sim.svcca_distance(y, x), abs=1e-10)
    assert sim.linear_cka_distance(x, y) == pytest.approx(sim.linear_cka_distance(y, x), abs=1e-12)


def test_canonical_variates_are_whitened_and_paired():
    x, y = related(1500, 12, 8, 17)
    c = sim.cca(x, y, ridge=1e-10)  # the ridge shrinks the variates' variances by λ / (λ + r)
    h, g = sim.centre(x) @ c.x_directions, sim.centre(y) @ c.y_directions  # (n, 8) each
    n = len(x)
    torch.testing.assert_close(h.T @ h / (n - 1), torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.diag(h.T @ g / (n - 1)), c.correlations, atol=1e-6, rtol=0)
    torch.testing.assert_close(c.x_projections, h.T @ sim.centre(x) / (n - 1), atol=1e-8, rtol=0)


def _exact_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Symmetric PWCCA with no ridge and no covariance at all: orthonormal bases of the centred views by
    QR, canonical variates from the SVD of Qx^T Qy (accurate to float64 rounding whatever the spread of
    the features)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
    u, rho, vt = np.linalg.svd(qx.T @ qy)
    alpha, beta = np.abs((qx @ u).T @ xc).sum(1), np.abs((qy @ vt.T).T @ yc).sum(1)
    return 1 - (alpha / alpha.sum() @ rho + beta / beta.sum() @ rho) / 2


def test_an_outlier_feature_is_measured_without_a_ridge_bias():
    """Real Transformers have outlier dimensions: one feature at 1000x the others' spread. A ridge of
    1e-6 x the mean variance is then ~8e-3 of the other features' variance, and shrinks their
    correlations (what the default was); inside the numerical rank, without a ridge, the distance equals
    an exact QR-based computation to 1e-5."""
    rng = np.random.default_rng(0)
    n, d = 5000, 64
    x = rng.normal(size=(n, d))
    x[:, 0] *= 1000
    y = x @ rng.normal(size=(d, d)) * 0.1 + rng.normal(size=(n, d))
    y[:, 3] *= 1000
    exact = _exact_pwcca(x, y)
    assert abs(sim.pwcca(x, y, symmetric=True).distance - exact) <= 1e-5
    assert abs(sim.pwcca(x, y, symmetric=True, ridge=1e-6).distance - exact) > 1e-3  # the bias it replaces
    # rank-deficient on top of it (duplicated and constant features): as the reference computes it
    xx = np.hstack([x, x[:, :5], np.full((n, 2), 7.0)])
    assert sim.pwcca_distance(xx, y) == pytest.approx(ref.pwcca_distance(xx, y), abs=1e-6)
    assert sim.pwcca_distance(y, xx) == pytest.approx(ref.pwcca_distance(y, xx), abs=1e-6)


# ---------------------------------------------------------------- against the numpy reference

@pytest.mark.parametrize("n,d1,d2", [(1500, 30, 30), (1500, 45, 20), (1500, 20, 45)])
def test_agrees_with_the_numpy_reference(n, d1, d2):
    x, y = related(n, d1, d2, d1 + d2)
    x = np.hstack([x, x[:, :3], np.full((n, 2), -4.0)])  # rank-deficient too
    assert abs(sim.pwcca_distance(x, y) - ref.pwcca_distance(x, y)) <= 1e-6
    assert abs(sim.pwcca_distance(y, x) - ref.pwcca_distance(y, x)) <= 1e-6
    assert abs(sim.svcca_distance(x, y) - ref.svcca_distance(x, y)) <= 1e-6
    assert abs(sim.linear_cka_distance(x, y) - ref.linear_cka_distance(x, y)) <= 1e-6


def test_covariance_api_matches_and_caches():
    x, y = related(1200, 14, 9, 18)
    m = sim.covariances(x, y)
    cached = sim.Covariances(sxx=sim.Spectrum.of(m.sxx), sxy=m.sxy, syy=sim.Spectrum.of(m.syy), n=m.n)
    for cov in (m, cached):
        assert sim.pwcca_from_covariances(cov).distance == pytest.approx(sim.pwcca_distance(x, y), abs=1e-12)
        assert sim.svcca_from_covariances(cov).distance == pytest.approx(sim.svcca_distance(x, y), abs=1e-12)
        assert sim.linear_cka_from_covariances(cov).distance == pytest.approx(sim.linear_cka_distance(x, y),
                                                                             abs=1e-12)
        assert sim.distance_from_covariances("pwcca", cov) == pytest.approx(
            sim.pwcca_distance(x, y, symmetric=True), abs=1e-12)
    assert sim.pwcca_from_covariances(cached.swapped()).distance == pytest.approx(sim.pwcca_distance(y, x), abs=1e-12)
    with pytest.raises(ValueError, match="unknown measure 'cca'"):
        sim.distance_from_covariances("cca", m)


def test_inputs_are_left_alone_and_computed_in_float64():
    x, y = related(800, 6, 5, 19)
    tx = torch.tensor(x, dtype=torch.float32)
    before, x_before = tx.clone(), x.copy()
    p = sim.pwcca(tx, y)
    assert p.cca.correlations.dtype == torch.float64 and p.cca.correlations.device.type == "cpu"
    assert torch.equal(tx, before) and np.array_equal(x, x_before)
    low = sim.pwcca(tx, y, dtype=torch.float32)
    assert low.cca.correlations.dtype == torch.float32 and low.distance == pytest.approx(p.distance, abs=1e-4)


def test_bad_input_is_refused_with_a_clear_error():
    x, y = gaussian(70, 60, 20), gaussian(70, 20, 21)
    with pytest.raises(ValueError, match=r"70 samples .* 60 and 20 features: need at least 120 .* 50 samples short"):
        sim.pwcca(x, y, min_ratio=2.0)
    with pytest.raises(ValueError, match="need at least 61"):
        sim.cca(x[:60], y[:60])
    with pytest.raises(ValueError, match="same samples"):
        sim.linear_cka(x, y[:50])
    with pytest.raises(ValueError, match="ridge"):
        sim.pwcca(x, y, ridge=-1e-6)
    with pytest.raises(ValueError, match="keep"):
        sim.svcca(x, y, keep=1.5)
    with pytest.raises(ValueError, match="NaN"):
        sim.pwcca(np.where(x > 2.5, np.nan, x), y)
    with pytest.raises(ValueError, match=r"\(n_samples, n_features\)"):
        sim.centre(np.zeros(5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensors_are_computed_on_the_gpu():
    x, y = related(2000, 32, 24, 22)
    gx, gy = torch.tensor(x, device="cuda"), torch.tensor(y, device="cuda")
    p = sim.pwcca(gx, gy)
    assert p.cca.correlations.device.type == "cuda"
    assert p.distance == pytest.approx(sim.pwcca_distance(x, y), abs=1e-9)
    assert sim.svcca_distance(gx, y) == pytest.approx(sim.svcca_distance(x, y), abs=1e-9)
    assert sim.linear_cka_distance(x, gy) == pytest.approx(sim.linear_cka_distance(x, y), abs=1e-9)


# ---------------------------------------------------------------- the table between models

def fake_experiment(tmp_path, *overrides: str):
    """lm seed 1 and 2 and the step-0 control of seed 1 with identical states, mlm seed 1 and the
    control of seed 2 unrelated to them and to each other; 3 layers, 12 features."""
    cfg = compose(["experiment=smoke", f"paths.results={tmp_path}", "workflow.objectives=[lm,mlm]",
                   "workflow.seeds={lm:[1,2],mlm:[1]}", "analysis.device=cpu", *overrides])
    rng = np.random.default_rng(23)
    lengths = rng.integers(5, 15, size=60)
    columns = token_columns(lengths, rng.integers(0, 50, size=lengths.sum()), np.arange(1, 51))
    n = int(lengths.sum())
    shared = [rng.standard_normal((n, 12)) for _ in range(4)]
    for objective, seed, states in [("lm", 1, shared), ("lm", 2, shared), ("init", 1, shared),
                                    ("mlm", 1, [rng.standard_normal((n, 12)) for _ in range(4)]),
                                    ("init", 2, [rng.standard_normal((n, 12)) for _ in range(4)])]:
        write_fake_dump(tmp_path / "dumps" / objective / f"seed{seed}", states, columns, objective, seed)
    return cfg, n


IDENTICAL = {("lm", "1", "lm", "2"), ("lm", "1", "init", "1"), ("lm", "2", "init", "1")}


def test_the_table_holds_every_pair_layer_and_measure(tmp_path):
    cfg, n = fake_experiment(tmp_path, "analysis.similarity.max_tokens=500")
    path = similarity.run(cfg)
    assert path == tmp_path / "metrics" / "similarity.csv"
    rows = read_table(path, "similarity")  # checks the columns
    assert len(rows) == 10 * 3 * 3  # pairs of 5 models x layers 1..3 x measures
    kinds = {(r["objective_a"], r["seed_a"], r["objective_b"], r["seed_b"]): r["pair"] for r in rows}
    assert kinds == {("lm", "1", "lm", "2"): "seed_baseline", ("lm", "1", "mlm", "1"): "same_init",
                     ("lm", "2", "mlm", "1"): "different_init",
                     **{pair: "init" for pair in [("lm", "1", "init", "1"), ("lm", "1", "init", "2"),
                                                  ("lm", "2", "init", "1"), ("lm", "2", "init", "2"),
                                                  ("mlm", "1", "init", "1"), ("mlm", "1", "init", "2"),
                                                  ("init", "1", "init", "2")]}}
    assert {r["layer"] for r in rows} == {"1", "2", "3"} and {r["n_tokens"] for r in rows} == {"500"}
    for r in rows:
        distance, low, high = float(r["distance"]), float(r["ci_low"]), float(r["ci_high"])
        assert low <= high, r  # the interval over sentences
        if (r["objective_a"], r["seed_a"], r["objective_b"], r["seed_b"]) in IDENTICAL:
            assert distance < 1e-5 and high < 1e-5, r
        else:  # unrelated states: near chance, far from 0
            assert distance > (0.9 if r["measure"] == "cka" else 0.5), r
    # The same seeded rows for every model: the distance matches a direct computation on them.
    idx = sample_rows(n, 500, int(cfg.analysis.sample_seed))
    direct = sim.pwcca_distance(np.load(tmp_path / "dumps/lm/seed1/layer_02.npy")[idx],
                                np.load(tmp_path / "dumps/mlm/seed1/layer_02.npy")[idx], symmetric=True)
    row = next(r for r in rows if r["measure"] == "pwcca" and r["layer"] == "2" and r["objective_b"] == "mlm")
    assert float(row["distance"]) == pytest.approx(direct, abs=1e-9)
    assert read_record(path)["settings"]["similarity"]["ridge"] == 0.0
    assert read_record(path)["bootstrap"]["resamples"] == cfg.analysis.bootstrap.resamples.similarity
    # The no-correspondence level: the same rows with b's permuted by the layer's seeded permutation.
    perm = shuffle_seed(cfg, 2).permutation(len(idx))
    level = sim.pwcca_distance(np.load(tmp_path / "dumps/lm/seed1/layer_02.npy")[idx],
                               np.load(tmp_path / "dumps/lm/seed2/layer_02.npy")[idx][perm], symmetric=True)
    row = next(r for r in rows if r["measure"] == "pwcca" and r["layer"] == "2" and r["objective_b"] == "lm")
    assert float(row["shuffled"]) == pytest.approx(level, abs=1e-9) and level > 0.5  # identical views, shuffled
    for r in rows:
        assert float(r["shuffled"]) > (0.9 if r["measure"] == "cka" else 0.5), r


def test_the_table_refuses_a_sample_below_the_floor(tmp_path):
    cfg, _ = fake_experiment(tmp_path, "analysis.similarity.max_tokens=119", "analysis.min_samples_per_dim=10")
    with pytest.raises(PipelineError, match=r"analysis.similarity.max_tokens=119 / analysis.min_samples_per_dim=10: "
                                            r"119 tokens for views of 12 features, fewer than the 120"):
        similarity.run(cfg)
    cfg, _ = fake_experiment(tmp_path, "analysis.similarity.max_tokens=120", "analysis.min_samples_per_dim=10")
    assert {r["n_tokens"] for r in read_table(similarity.run(cfg), "similarity")} == {"120"}


def test_pair_kinds():
    assert pair_kind(("mt", 1), ("lm", 1)) == SAME_INIT
    assert pair_kind(("mt", 1), ("lm", 2)) == DIFFERENT_INIT
    assert pair_kind(("mt", 1), ("mt", 2)) == SEED_BASELINE
    assert pair_kind(("init", 1), ("mt", 1)) == pair_kind(("mt", 2), ("init", 1)) == INIT_PAIR
    assert pair_kind(("init", 1), ("init", 2)) == INIT_PAIR
    with pytest.raises(ValueError, match="with itself"):
        pair_kind(("mt", 1), ("mt", 1))


@pytest.mark.parametrize("override,message", [
    ("analysis.similarity.measures=[pwcca,cca]", "analysis.similarity.measures"),
    ("analysis.similarity.max_tokens=20", "max_tokens"),
    ("analysis.similarity.ridge=-0.1", "analysis.similarity.ridge"),
])
def test_the_table_refuses_bad_settings(tmp_path, override, message):
    cfg, _ = fake_experiment(tmp_path, override)
    with pytest.raises(PipelineError, match=message):
        similarity.run(cfg)

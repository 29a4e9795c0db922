"""GMM maths against scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from dagmm.models.mixture import fit_gmm_em
from dagmm.models.gmm import (
    CholeskyError,
    add_stats,
    batch_gmm_params,
    cholesky_with_jitter,
    cov_diag_penalty,
    gmm_params_from_stats,
    gmm_stats,
    precision_cholesky,
    sample_energy,
)

from conftest import float64_reordered


@pytest.fixture
def fitted_gmm(rng):
    X = np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(5, 0.5, (200, 3)) @ rng.normal(size=(3, 3))])
    return GaussianMixture(n_components=2, covariance_type="full", random_state=0).fit(X), X


def _energy(gm, Z):
    chol, _ = cholesky_with_jitter(torch.from_numpy(gm.covariances_), eps=1e-300)
    return sample_energy(torch.from_numpy(Z), torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_),
                         precision_cholesky(chol)).numpy()


def test_energy_matches_sklearn_score_samples(fitted_gmm):
    gm, X = fitted_gmm
    np.testing.assert_allclose(_energy(gm, X), -gm.score_samples(X), rtol=1e-6)


def test_energy_matches_scipy_mixture_pdf(fitted_gmm):
    gm, X = fitted_gmm
    dens = sum(w * multivariate_normal(m, c).pdf(X[:50]) for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_))
    np.testing.assert_allclose(_energy(gm, X[:50]), -np.log(dens), rtol=1e-6)


def test_far_points_are_finite_and_ordered(fitted_gmm):
    gm, X = fitted_gmm
    sd = np.sqrt(np.diag(gm.covariances_[0]))
    far = gm.means_[0] + np.array([[1e3], [2e3], [-1.5e3]]) * sd  # 1000+ standard deviations out
    e = _energy(gm, far)
    assert np.all(np.isfinite(e))
    np.testing.assert_allclose(e, -gm.score_samples(far), rtol=1e-6)
    assert len(np.unique(e)) == 3  # no ties at a -log(eps) floor
    assert e[1] > e[0]


def test_batch_params_match_weighted_formulas(rng):
    z = torch.from_numpy(rng.normal(size=(40, 3)))
    gamma = torch.softmax(torch.from_numpy(rng.normal(size=(40, 2))), 1)
    phi, mu, cov = batch_gmm_params(z, gamma)
    g = gamma.numpy()
    for k in range(2):
        np.testing.assert_allclose(phi[k], g[:, k].mean())
        expected_cov = np.cov(z.numpy().T, aweights=g[:, k], bias=True)
        np.testing.assert_allclose(mu[k].numpy(), np.average(z.numpy(), axis=0, weights=g[:, k]))
        # numpy's weighted covariance: the same 40 weighted products summed in another order, absolute
        # too (an off-diagonal entry near 0 keeps the rounding of O(1) products)
        np.testing.assert_allclose(cov[k].numpy(), expected_cov, **float64_reordered(expected_cov, 4 * 40))


def test_batched_stats_equal_one_batch(rng):
    # large offset: a naive raw-moment accumulation would lose digits here
    z = torch.from_numpy(rng.normal(size=(1000, 3)) * 0.01 + 1e4)
    gamma = torch.softmax(torch.from_numpy(rng.normal(size=(1000, 4))), 1)
    one = batch_gmm_params(z, gamma)
    stats = None
    for start in range(0, 1000, 137):
        s = gmm_stats(z[start:start + 137], gamma[start:start + 137], z[:137].mean(0))
        stats = s if stats is None else add_stats(stats, s)
    many = gmm_params_from_stats(stats)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-14)


def test_add_stats_needs_same_shift():
    z, g = torch.zeros(2, 2), torch.ones(2, 1)
    with pytest.raises(ValueError, match="same shift"):
        add_stats(gmm_stats(z, g, torch.zeros(2)), gmm_stats(z, g, torch.ones(2)))


def test_jitter_rescues_singular_covariance():
    cov = torch.zeros(1, 2, 2, dtype=torch.float64)
    chol, eps = cholesky_with_jitter(cov, eps=1e-6)
    assert eps == 1e-6
    np.testing.assert_allclose((chol @ chol.mT).numpy(), 1e-6 * np.eye(2)[None])
    negative = torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    chol, eps = cholesky_with_jitter(negative, eps=1e-3, max_tries=4)
    assert eps == pytest.approx(10.0)  # needed -1 + eps > 0


def test_cholesky_failure_message():
    cov = torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    with pytest.raises(CholeskyError, match=r"component\(s\) \[0\].*Try a larger `cov_eps`"):
        cholesky_with_jitter(cov, eps=1e-6, max_tries=2)
    with pytest.raises(CholeskyError, match="contains NaN or inf"):
        cholesky_with_jitter(torch.full((1, 2, 2), float("nan"), dtype=torch.float64))


def test_cov_diag_penalty():
    cov = torch.diag_embed(torch.tensor([[1.0, 2.0], [4.0, 0.5]]))
    assert cov_diag_penalty(cov).item() == pytest.approx(1 + 0.5 + 0.25 + 2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0: runs all 100 iterations
def test_em_matches_sklearn_from_the_same_start(fitted_gmm):
    """EM from given memberships reaches scikit-learn's GaussianMixture started at the same parameters.

    Ours runs on z-scores and maps back; EM is affine-equivariant, so with the regularisation
    negligible (1e-12 on variances of order 1) both follow the same iterates; float64 rounding of
    100 iterations on 500 rows stays far below the 1e-6 tolerance.
    """
    _, X = fitted_gmm
    rng = np.random.default_rng(5)
    gamma = rng.dirichlet([1.0, 1.0], size=len(X))  # a poor start, so EM has work to do
    start = batch_gmm_params(torch.from_numpy(X), torch.from_numpy(gamma))
    params, n_iter = fit_gmm_em(torch.from_numpy(X), torch.from_numpy(gamma), reg=1e-12, max_iter=100, tol=0.0)
    assert n_iter == 100
    prec0 = np.linalg.inv(start.cov.numpy())
    gm = GaussianMixture(2, covariance_type="full", reg_covar=1e-12, max_iter=100, tol=0.0,
                         weights_init=start.phi.numpy(), means_init=start.mu.numpy(), precisions_init=prec0)
    gm.fit(X)
    # sklearn starts with an E-step on the initial parameters and then alternates like ours
    np.testing.assert_allclose(params.phi.numpy(), gm.weights_, atol=1e-6)
    np.testing.assert_allclose(params.mu.numpy(), gm.means_, atol=1e-6)
    np.testing.assert_allclose(params.cov.numpy(), gm.covariances_, atol=1e-6)


def test_em_stops_on_tolerance_and_keeps_a_constant_feature_finite(rng):
    z = np.c_[rng.normal(size=(400, 2)), np.full(400, 3.0)]  # a constant third feature
    gamma = np.full((400, 1), 1.0)
    params, n_iter = fit_gmm_em(torch.from_numpy(z), torch.from_numpy(gamma), reg=1e-6)
    assert n_iter <= 3  # one component: the first M-step is already the maximum
    np.testing.assert_allclose(params.mu.numpy()[0], z.mean(0), atol=1e-12)
    np.testing.assert_allclose(params.cov.numpy()[0, :2, :2], np.cov(z[:, :2].T, bias=True) + 1e-6 * np.eye(2) *
                               z[:, :2].std(0)[:, None] * z[:, :2].std(0)[None, :], atol=1e-12)
    assert params.cov[0, 2, 2] == pytest.approx(1e-6)  # scale 1 for the constant: reg in its own units

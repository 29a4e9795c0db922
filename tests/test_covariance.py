"""The residual model of OutlierAEGMM (dagmm.models.covariance) against scikit-learn and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from dagmm.models.covariance import (
    CentredMoments,
    ComponentMoments,
    component_gaussians,
    component_residual_log_prob,
    floor_diagonal,
    ledoit_wolf,
    residual_nll,
    whitening_factor,
)


def _moments(X: np.ndarray, batch: int) -> CentredMoments:
    m = CentredMoments(torch.from_numpy(X.mean(0)))
    for start in range(0, len(X), batch):
        m.add(torch.from_numpy(X[start:start + batch]))
    return m


@pytest.mark.parametrize("n, f", [(500, 8), (40, 60), (3, 5)])
def test_ledoit_wolf_matches_scikit_learn(rng, n, f):
    """Streamed in uneven batches, float64: the covariance and shrinkage of scikit-learn's LedoitWolf,
    with more rows than columns, fewer rows than columns, and almost no rows."""
    X = rng.normal(size=(n, f)) @ rng.normal(size=(f, f)) + 3.0  # correlated columns, off-centre
    cov, shrinkage = ledoit_wolf(_moments(X, batch=7))
    ref = LedoitWolf().fit(X)
    # two float64 implementations summing in other orders (and BLAS blockings): 1e-8 relative, far above
    # their ~1e-13 rounding, far below any modelling difference
    np.testing.assert_allclose(cov.numpy(), ref.covariance_, rtol=1e-8, atol=1e-10 * np.abs(ref.covariance_).max())
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-8, abs=1e-10)


def test_ledoit_wolf_needs_rows():
    with pytest.raises(ValueError, match="no rows were accumulated"):
        ledoit_wolf(CentredMoments(torch.zeros(3, dtype=torch.float64)))


def test_whitening_gives_the_mahalanobis_distance(rng):
    X = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    cov, _ = ledoit_wolf(_moments(X, batch=64))
    P = whitening_factor(cov)
    assert torch.allclose(P, torch.triu(P))
    r = rng.normal(size=(10, 6))
    m = X.mean(0)
    want = np.einsum("ij,ij->i", r - m, np.linalg.solve(cov.numpy(), (r - m).T).T)  # numpy solve, float64
    got = residual_nll(torch.from_numpy(r), mean=torch.from_numpy(m), prec_chol=P).numpy()
    # triangular solve vs numpy's LU solve, float64, condition number ~1e2: 1e-8 relative
    np.testing.assert_allclose(got, 0.5 * want, rtol=1e-8)
    # diagonal form: 0.5 sum r^2 / s (torch vs numpy float64, 6 terms: 1e-10 relative)
    s = rng.uniform(0.5, 2.0, size=6)
    got = residual_nll(torch.from_numpy(r), error_scale=torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(got, 0.5 * (r ** 2 / s).sum(1), rtol=1e-10)
    with pytest.raises(ValueError, match="give error_scale or mean and prec_chol"):
        residual_nll(torch.from_numpy(r))


def test_floor_diagonal_raises_only_small_variances():
    cov = torch.diag(torch.tensor([1.0, 2.0, 1e-9], dtype=torch.float64))
    cov[0, 1] = cov[1, 0] = 0.5
    out = floor_diagonal(cov.clone(), 0.01)
    low = 0.01 * (1.0 + 2.0 + 1e-9) / 3
    np.testing.assert_allclose(out.diagonal().numpy(), [1.0, 2.0, low])
    assert out[0, 1] == 0.5


def test_whitening_of_a_singular_covariance_is_finite():
    cov = torch.ones(4, 4, dtype=torch.float64)  # rank 1: the jitter makes it factorisable
    P = whitening_factor(cov)
    assert torch.isfinite(P).all()


def test_component_gaussians_and_their_log_densities(rng):
    """Per-component weighted means and shrunk covariances against numpy, and the joint term's log-densities
    against scipy, in one piece, in chunks of a few rows, and for no rows."""
    from scipy.stats import multivariate_normal

    n, f, k = 200, 5, 3
    X = rng.normal(size=(n, f)) @ rng.normal(size=(f, f))
    g = rng.dirichlet(np.ones(k), size=n)  # (N, K) memberships
    m = ComponentMoments()
    for start in range(0, n, 64):
        m.add(torch.from_numpy(X[start:start + 64]), torch.from_numpy(g[start:start + 64]))
    prior = np.cov(X.T, bias=True)
    means, prec = component_gaussians(m, torch.from_numpy(prior), float(f))
    Y = rng.normal(size=(17, f))
    want = np.empty((17, k))
    for j in range(k):
        w = g[:, j].sum()
        mu = g[:, j] @ X / w
        c = X - mu
        cov = ((g[:, j, None] * c).T @ c + f * prior) / (w + f)
        np.testing.assert_allclose(means[j].numpy(), mu, rtol=1e-8, atol=1e-10)  # float64, other order
        p = prec[j].numpy()
        np.testing.assert_allclose(p @ p.T @ cov, np.eye(f), atol=1e-8)  # P P^T = cov^-1
        want[:, j] = multivariate_normal(mu, cov).logpdf(Y) + 0.5 * f * np.log(2 * np.pi)
    # the product is float32 (the C kernel's precision): 1e-5 relative to the terms' size
    tol = dict(rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for chunk in (None, 1 << 22, 2 * k * f):  # one piece, one chunk, chunks of 2 rows
        got = component_residual_log_prob(torch.from_numpy(Y), means, prec, max_elements=chunk)
        assert got.dtype == torch.float64 and got.shape == (17, k)
        np.testing.assert_allclose(got.numpy(), want, **tol)
    assert component_residual_log_prob(torch.zeros(0, f), means, prec).shape == (0, k)

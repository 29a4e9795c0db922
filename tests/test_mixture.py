"""Mixtures of fixed codes (dagmm.models.mixture): BIC against scikit-learn, the choice of K, k-means starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from dagmm.models.mixture import kmeans_em, mixture_bic, select_mixture


def _blobs(rng, n_per, centers):
    return np.concatenate([rng.normal(size=(n_per, len(c))) * 0.3 + c for c in centers])


def test_bic_matches_sklearn(rng):
    X = _blobs(rng, 200, [(0, 0, 0), (4, 0, 1)])
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(X)
    from dagmm.models.gmm import GMMParams

    params = GMMParams(*(torch.from_numpy(a) for a in (gm.weights_, gm.means_, gm.covariances_)))
    # same formula, both in float64: agreement to rounding of a sum over 400 rows
    assert mixture_bic(params, torch.from_numpy(X)) == pytest.approx(gm.bic(X), rel=1e-9)


def test_kmeans_em_finds_separated_clusters(rng):
    centers = [(0, 0), (6, 0), (0, 6)]
    X = _blobs(rng, 300, centers)
    params = kmeans_em(torch.from_numpy(X), 3, seed=0)
    got = params.mu.numpy()[np.argsort(params.mu.numpy()[:, 0] * 10 + params.mu.numpy()[:, 1])]
    want = np.array(sorted(centers, key=lambda c: c[0] * 10 + c[1]), dtype=float)
    np.testing.assert_allclose(got, want, atol=0.1)  # 300 rows of spread 0.3: mean error ~0.02
    np.testing.assert_allclose(params.phi.numpy(), 1 / 3, atol=1e-6)


def test_select_mixture_chooses_k_by_bic(rng):
    one = torch.from_numpy(rng.normal(size=(600, 3)))
    params, info = select_mixture(one, seed=0)
    assert info["n_components"] == 1 and params.phi.shape == (1,)
    assert set(info["bic"]) == {"1", "2", "4", "8", "16"}
    four = torch.from_numpy(_blobs(rng, 150, [(0, 0), (5, 0), (0, 5), (5, 5)]))
    params, info = select_mixture(four, seed=0)
    assert info["n_components"] >= 4
    assert min(info["bic"], key=info["bic"].get) == str(info["n_components"])
    # candidates need 20 rows per component: 50 rows allow at most 2
    _, info = select_mixture(four[:50], seed=0)
    assert set(info["bic"]) == {"1", "2"}


def test_select_mixture_chooses_on_a_bounded_sample_and_refits_on_all(rng):
    X = torch.from_numpy(_blobs(rng, 1500, [(0, 0), (5, 0)]))  # 3,000 rows
    params, info = select_mixture(X, candidates=(1, 2), seed=0, max_rows=500)
    assert info["n_components"] == 2
    np.testing.assert_allclose(sorted(params.phi.numpy()), [0.5, 0.5], atol=1e-3)  # refitted on all rows


def test_given_n_gmm_fixes_the_scoring_mixture(rng):
    from dagmm import OutlierAEGMM

    X = rng.normal(size=(400, 5)).astype(np.float32)
    od = OutlierAEGMM(n_gmm=3).fit(X, epochs=1, verbose=False, seed=0)
    assert od.auto_config_["mixture_fit"]["n_components"] == 3 and od.phi_.shape == (3,)
    auto = OutlierAEGMM().fit(X, epochs=1, verbose=False, seed=0)
    fit = auto.auto_config_["mixture_fit"]
    assert auto.phi_.shape == (fit["n_components"],) and set(fit["bic"]) == {"1", "2", "4", "8", "16"}

"""Synthetic tabular data with planted outliers, for the demo and the tests."""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["make_outlier_data"]


def make_outlier_data(
    n_samples: int = 6000,
    n_features: int = 20,
    outlier_frac: float = 0.05,
    n_clusters: int = 3,
    latent_dim: int = 3,
    seed: Optional[int] = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows on noisy low-dimensional manifolds, plus outliers off them.

    Inliers come from ``n_clusters`` clusters, each a random linear map of a
    ``latent_dim``-dimensional Gaussian into ``n_features`` dimensions plus
    small noise, passed through ``tanh`` so the structure is non-linear.
    Outliers are drawn uniformly over the range of the inliers, so they break
    the correlations between features rather than sitting far away.

    Returns
    -------
    X : (n_samples, n_features) float32
    y : (n_samples,) int64, 1 for outliers
    """
    rng = np.random.default_rng(seed)
    n_out = int(round(outlier_frac * n_samples))
    n_in = n_samples - n_out
    sizes = rng.multinomial(n_in, np.full(n_clusters, 1.0 / n_clusters))
    parts = []
    for size in sizes:
        w = rng.normal(size=(latent_dim, n_features))
        b = rng.normal(scale=0.5, size=n_features)
        h = rng.normal(size=(size, latent_dim))
        parts.append(np.tanh(h @ w / np.sqrt(latent_dim) + b) + 0.05 * rng.normal(size=(size, n_features)))
    inliers = np.concatenate(parts)
    lo, hi = inliers.min(0), inliers.max(0)
    outliers = rng.uniform(lo, hi, size=(n_out, n_features))
    X = np.concatenate([inliers, outliers]).astype(np.float32)
    y = np.concatenate([np.zeros(n_in, np.int64), np.ones(n_out, np.int64)])
    order = rng.permutation(n_samples)
    return X[order], y[order]

"""Synthetic tabular data with planted outliers, for the demo and the tests."""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["OUTLIER_TYPES", "make_outlier_data", "make_typed_outliers"]


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


#: Outlier types of :func:`make_typed_outliers`.
OUTLIER_TYPES = ("global", "local", "clustered", "dependency")


def _inlier_model(rng: np.random.Generator, n_features: int, n_clusters: int, latent_dim: int) -> list:
    """Random clusters, each a non-linear map of a low-dimensional Gaussian (features depend on each other)."""
    clusters = []
    for _ in range(n_clusters):
        w = rng.normal(size=(latent_dim, n_features)) / np.sqrt(latent_dim)
        b = rng.normal(scale=1.5, size=n_features)
        scale = rng.uniform(0.5, 2.0, size=n_features)
        clusters.append((w, b, scale))
    return clusters


def _sample(rng: np.random.Generator, cluster: tuple, size: int, latent_scale: float = 1.0,
            noise: float = 0.1) -> np.ndarray:
    w, b, scale = cluster
    h = rng.normal(scale=latent_scale, size=(size, w.shape[0]))
    return scale * (np.tanh(h @ w) + noise * rng.normal(size=(size, w.shape[1]))) + b


def make_typed_outliers(
    kind: str,
    n_samples: int = 5000,
    n_features: int = 20,
    outlier_frac: float = 0.05,
    n_clusters: int = 3,
    latent_dim: Optional[int] = None,
    seed: Optional[int] = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tabular data with one known type of outlier (the four types of ADBench's taxonomy).

    Inliers come from ``n_clusters`` clusters; in each, a ``latent_dim``
    Gaussian (default ``max(2, n_features // 5)``) is mapped linearly to the
    features, squashed by ``tanh``, given small noise, then scaled and shifted
    per feature, so the features depend on each other non-linearly and have
    different units.  Outliers:

    ``'global'``
        uniform over the inliers' bounding box enlarged by 50% on each side;
    ``'local'``
        drawn like inliers of a random cluster but with the latent spread and
        the noise multiplied by 3 (near the clusters, off their manifold);
    ``'clustered'``
        a small tight cluster: one inlier cluster's model with its offset
        moved by about one feature standard deviation per feature in a random direction and a
        quarter of the latent spread;
    ``'dependency'``
        every feature drawn independently from the inliers' values of that
        feature: each marginal distribution is the inliers', only the
        dependence between features is broken.

    Returns
    -------
    X : (n_samples, n_features) float32
    y : (n_samples,) int64, 1 for outliers
    """
    if kind not in OUTLIER_TYPES:
        raise ValueError(f"kind must be one of {OUTLIER_TYPES}, got {kind!r}.")
    rng = np.random.default_rng(seed)
    latent_dim = latent_dim or max(2, n_features // 5)
    clusters = _inlier_model(rng, n_features, n_clusters, latent_dim)
    n_out = int(round(outlier_frac * n_samples))
    n_in = n_samples - n_out
    sizes = rng.multinomial(n_in, np.full(n_clusters, 1.0 / n_clusters))
    inliers = np.concatenate([_sample(rng, c, s) for c, s in zip(clusters, sizes)])
    if kind == "global":
        lo, hi = inliers.min(0), inliers.max(0)
        pad = 0.5 * (hi - lo)
        outliers = rng.uniform(lo - pad, hi + pad, size=(n_out, n_features))
    elif kind == "local":
        which = rng.integers(n_clusters, size=n_out)
        outliers = np.concatenate([_sample(rng, clusters[k], int((which == k).sum()), latent_scale=3.0, noise=0.3)
                                   for k in range(n_clusters)])
    elif kind == "clustered":
        w, b, scale = clusters[int(rng.integers(n_clusters))]
        direction = rng.normal(size=n_features)
        direction /= np.linalg.norm(direction)
        shifted = (w, b + inliers.std(0) * direction * np.sqrt(n_features), scale)
        outliers = _sample(rng, shifted, n_out, latent_scale=0.25)
    else:
        outliers = np.stack([inliers[rng.integers(n_in, size=n_out), j] for j in range(n_features)], axis=1)
    X = np.concatenate([inliers, outliers]).astype(np.float32)
    y = np.concatenate([np.zeros(n_in, np.int64), np.ones(n_out, np.int64)])
    order = rng.permutation(n_samples)
    return X[order], y[order]

"""Reconstruction features that DAGMM appends to the latent code.

The paper uses the relative Euclidean distance ``||x - x'|| / ||x||`` and the
cosine similarity ``x . x' / (||x|| ||x'||)``.  Both are computed per row over
all non-batch dimensions, with a floor on the norms so that an all-zero row
gives a finite value instead of NaN.  (alibi-detect passes ``-1`` to the
epsilon argument by accident and returns the negative cosine; these do not.)
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["relative_euclidean", "cosine_similarity", "default_recon_features", "log_mse_cosine", "RECON_EPS",
           "LOG_MSE_EPS"]

#: Floor on vector norms in the reconstruction features.
RECON_EPS = 1e-8
#: Added to the mean squared error before its logarithm.
LOG_MSE_EPS = 1e-6

ReconFeatures = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def relative_euclidean(x: torch.Tensor, x_recon: torch.Tensor, eps: float = RECON_EPS) -> torch.Tensor:
    """``||x - x'||_2 / max(||x||_2, eps)`` per row, shape (N,)."""
    x = x.flatten(1)  # (N, F)
    x_recon = x_recon.flatten(1)  # (N, F)
    return torch.linalg.vector_norm(x - x_recon, dim=1) / torch.linalg.vector_norm(x, dim=1).clamp_min(eps)


def cosine_similarity(x: torch.Tensor, x_recon: torch.Tensor, eps: float = RECON_EPS) -> torch.Tensor:
    """``x . x' / max(||x|| ||x'||, eps)`` per row, shape (N,)."""
    x = x.flatten(1)  # (N, F)
    x_recon = x_recon.flatten(1)  # (N, F)
    norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(x_recon, dim=1)
    return (x * x_recon).sum(1) / norms.clamp_min(eps)


def default_recon_features(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """The paper's two reconstruction features, shape (N, 2): relative distance, cosine.

    Same values as :func:`relative_euclidean` and :func:`cosine_similarity`;
    ``||x||`` is computed once for both (this runs in every training step).
    """
    x = x.flatten(1)  # (N, F)
    x_recon = x_recon.flatten(1)  # (N, F)
    x_norm = torch.linalg.vector_norm(x, dim=1)
    rel = torch.linalg.vector_norm(x - x_recon, dim=1) / x_norm.clamp_min(RECON_EPS)
    norms = x_norm * torch.linalg.vector_norm(x_recon, dim=1)
    cos = torch.linalg.vecdot(x, x_recon) / norms.clamp_min(RECON_EPS)
    return torch.stack([rel, cos], dim=1)


def log_mse_cosine(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """Reconstruction features of the automatic architecture, shape (N, 2).

    ``log(mean_j (x_j - x'_j)^2 + 1e-6)`` and the cosine similarity.  On
    standardised inputs the paper's relative distance divides the error by
    ``||x||``, which is largest for the rows farthest from the mean, so it
    hides global outliers and inflates the error of rows near the mean; the
    mean over features does not grow with the number of features, and its
    logarithm is roughly Gaussian for the inliers (errors are heavy-tailed),
    which suits the mixture that models it.
    """
    err = (x - x_recon).flatten(1).pow(2).mean(1)  # (N,)
    return torch.stack([torch.log(err + LOG_MSE_EPS), cosine_similarity(x, x_recon)], dim=1)

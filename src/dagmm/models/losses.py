"""Training objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..accel.objective import mixture_objective

__all__ = ["loss_aegmm", "loss_mse"]


def loss_aegmm(
    x: torch.Tensor,
    x_recon: torch.Tensor,
    z: torch.Tensor,
    gamma: torch.Tensor,
    w_energy: float = 0.1,
    w_cov_diag: float = 0.005,
    cov_eps: float = 1e-6,
) -> torch.Tensor:
    """The DAGMM objective of Zong et al. (2018), eq. 7.

    ``J = mean_i ||x_i - x'_i||^2 + w_energy * mean_i E(z_i)
    + w_cov_diag * sum_k sum_j 1 / cov_k[j, j]``

    The reconstruction term is the per-sample *squared norm* (summed over
    features, then averaged over the batch), as written in the paper, not the
    mean over features.  This keeps the paper's balance between the
    reconstruction and energy terms for the paper's ``w_energy`` and
    ``w_cov_diag``; with a per-feature mean the reconstruction term would
    shrink by the number of features and the energy would dominate.

    Parameters
    ----------
    x, x_recon : (N, ...) tensors
        Inputs and reconstructions.
    z : (N, D) tensor
        Latent code plus reconstruction features.
    gamma : (N, K) tensor
        Soft memberships.
    w_energy, w_cov_diag : float
        Weights ``lambda_1`` and ``lambda_2`` of the paper.
    cov_eps : float, default 1e-6
        Initial diagonal jitter of the covariances (raised adaptively).

    Returns
    -------
    0-d tensor in the dtype of ``x``.
    """
    # Sum of squares over everything divided by N: the same mean of per-row
    # squared norms, in one fused kernel (and one in the backward).
    recon = F.mse_loss(x_recon, x, reduction="sum") / x.shape[0]
    # The mixture terms with their closed-form gradient (dagmm.accel.objective): the
    # same value as the dagmm.models.gmm functions composed, a fraction of the ops.
    return recon + mixture_objective(z, gamma, w_energy, w_cov_diag, cov_eps).to(recon.dtype)


def loss_mse(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    return F.mse_loss(x_recon, x)

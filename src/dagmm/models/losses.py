"""Training objectives, and the mixture part of the DAGMM objective with its closed-form gradient.

``lambda_1 * mean_i E(z_i) + lambda_2 * sum_k sum_j 1 / Sigma_k[j, j]`` built
from :mod:`dagmm.models.gmm`'s functions records some sixty tiny float64
operations for autograd, and its backward about as many; with DAGMM's small
latent space their fixed cost was a quarter of a training step without the C
kernels (``benchmarks/results/NOTES-speed.md``, eighth pass).  The gradient
has a short closed form (below), so :func:`mixture_objective` computes the
same value with the same numerics (moments about the batch mean, Cholesky with
jitter, triangular solve, ``logsumexp``) and a hand-written backward of a few
products.  ``tests/test_objective.py`` checks value and gradients against
autograd through :mod:`dagmm.models.gmm` in float64.

Gradient.  With responsibilities ``r_ik = softmax_k(log p_ik)``, ``A_k =
Sigma_k + eps I``, ``y_ik = A_k^{-1} (z_i - mu_k)``, ``S_k = sum_i gamma_ik``
and ``w = lambda_1 / N``, the partial derivatives with respect to the mixture
parameters are ::

    dJ/dphi_k   = -w sum_i r_ik / phi_k
    dJ/dmu_k    = -w sum_i r_ik y_ik
    dJ/dSigma_k = w/2 (R_k A_k^{-1} - sum_i r_ik y_ik y_ik^T) - lambda_2 diag(1 / Sigma_k[j, j]^2)

and the direct one with respect to ``z_i`` is ``w sum_k r_ik y_ik``.  Since
``phi``, ``mu`` and ``Sigma`` are gamma-weighted moments of ``z``, the chain
rule gives, with ``G_k = dJ/dSigma_k`` ::

    dJ/dz_i     = w sum_k r_ik y_ik + sum_k gamma_ik / S_k (dJ/dmu_k + 2 G_k (z_i - mu_k))
    dJ/dgamma_ik = dJ/dphi_k / N + (z_i - mu_k)^T dJ/dmu_k / S_k
                   + <G_k, (z_i - mu_k)(z_i - mu_k)^T - Sigma_k> / S_k

Both are evaluated through the features ``f_i = [1, zc_i, zc_i (x) zc_i]`` that
the forward's moments use (``zc`` = z about the batch mean): the K-level
algebra needs only the moments of ``r`` (one product), ``dJ/dgamma`` is the
(K, 1 + D + D*D) gradient with respect to the moments times ``f`` (one
product), and ``dJ/dz`` is ``h_1 + 2 H_2 zc`` where ``[h_1, H_2]`` is one
product of the linear and quadratic coefficients (of ``-w r`` through the
energy's quadratic form, and of ``gamma`` through the moments) with ``[r;
gamma]``.  No (N, K, D, D) tensor is formed; the backward is about 85 tensor
operations, where autograd through :mod:`dagmm.models.gmm` records several hundred.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gmm import _log_prob_t, _moment_features, _params_from_moments, cholesky_with_jitter, precision_cholesky

__all__ = ["loss_aegmm", "loss_mse", "mixture_objective"]

_TINY = torch.finfo(torch.float64).tiny


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
    # The mixture terms with their closed-form gradient: the same value as the
    # dagmm.models.gmm functions composed, a fraction of the ops.
    return recon + mixture_objective(z, gamma, w_energy, w_cov_diag, cov_eps).to(recon.dtype)


def loss_mse(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    return F.mse_loss(x_recon, x)


def mixture_objective(
    z: torch.Tensor, gamma: torch.Tensor, w_energy: float, w_cov_diag: float, cov_eps: float = 1e-6
) -> torch.Tensor:
    """``w_energy * mean energy + w_cov_diag * sum 1 / diag(cov)`` of one batch, 0-d float64.

    Parameters
    ----------
    z : (N, D) tensor
        Latent code plus reconstruction features.
    gamma : (N, K) tensor
        Soft memberships; rows sum to one.
    w_energy, w_cov_diag : float
        The paper's ``lambda_1`` and ``lambda_2``.
    cov_eps : float, default 1e-6
        Initial diagonal jitter of the covariances (raised tenfold on failure,
        see :func:`dagmm.models.gmm.cholesky_with_jitter`).

    Returns
    -------
    0-d float64 tensor, differentiable with respect to ``z`` and ``gamma``.

    Raises
    ------
    dagmm.models.gmm.CholeskyError
        If a covariance stays singular with every jitter tried.
    """
    return _MixtureObjective.apply(z, gamma, float(w_energy), float(w_cov_diag), float(cov_eps))


# Rows of the batch run along the last, contiguous axis throughout ("(D, N)" rather
# than "(N, D)"): with D and K this small, reductions and broadcasts over a short
# innermost axis cost several times more than the same arithmetic laid out this way.
class _MixtureObjective(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, gamma, w_energy, w_cov_diag, cov_eps):
        n, d = z.shape
        # one pass each: transposed, cast to float64 and made contiguous by a single copy
        zt = z.new_empty((d, n), dtype=torch.float64).copy_(z.T)  # (D, N)
        gt = gamma.new_empty((gamma.shape[1], n), dtype=torch.float64).copy_(gamma.T)  # (K, N)
        # Moments about the batch mean: no cancellation in the second moment.
        zc = zt - zt.mean(1, keepdim=True)  # (D, N)
        feats = _moment_features(zc)  # (1 + D + D*D, N)
        moments = gt @ feats.T  # (K, 1 + D + D*D)
        phi, mu_c, cov = _params_from_moments(moments, float(n), zc.new_zeros(d))
        chol, eps = cholesky_with_jitter(cov, cov_eps)
        prec = precision_cholesky(chol)  # (K, D, D), prec prec^T = (cov + eps I)^-1
        log_p = _log_prob_t(zc, phi, mu_c, prec)  # (K, N), the same formula as scoring's energy
        lse = torch.logsumexp(log_p, 0)  # (N,)
        diag = torch.diagonal(cov, dim1=-2, dim2=-1) + eps  # (K, D)
        value = w_energy * (-lse.mean()) + w_cov_diag * diag.reciprocal().sum()
        ctx.save_for_backward(zc, feats, gt, log_p, lse, prec, mu_c, cov, diag, moments[:, 0].clamp_min(_TINY))
        ctx.weights = (w_energy, w_cov_diag)
        ctx.dtypes = (z.dtype, gamma.dtype)
        return value

    @staticmethod
    def backward(ctx, grad):
        zc, feats, gt, log_p, lse, prec, mu_c, cov, diag, s = ctx.saved_tensors
        w_energy, w_cov_diag = ctx.weights
        d, n = zc.shape
        k = prec.shape[0]
        grad = grad.double()
        w = grad * (w_energy / n)
        r = torch.exp(log_p - lse)  # (K, N) posterior responsibilities
        mom_r = r @ feats.T  # (K, 1 + D + D*D): moments of r, as the forward's of gamma
        big_r = mom_r[:, :1]  # (K, 1)
        c = mu_c  # (K, D), means about the batch mean
        a_inv = torch.bmm(prec, prec.transpose(1, 2))  # (K, D, D), (cov + eps I)^-1
        v = torch.addcmul(mom_r[:, 1:1 + d], big_r, c, value=-1.0)  # (K, D): sum_i r_ik (zc_i - c_k)
        # sum_i r_ik (zc_i - c_k)(zc_i - c_k)^T = m2 - m1 c^T - c v^T, the last two as one product
        s_r = torch.baddbmm(mom_r[:, 1 + d:].view(k, d, d), torch.stack([mom_r[:, 1:1 + d], c], 2),
                            torch.stack([c, v], 1), alpha=-1.0)  # (K, D, D)
        a_v = torch.bmm(a_inv, torch.stack([v, c], 2))  # (K, D, 2): sum_i r_ik y_ik and A^-1 c
        # dJ/dSigma = w/2 (R A^-1 - A^-1 S_r A^-1) - lambda_2 diag(1 / Sigma_jj^2)
        g_cov = torch.baddbmm(a_inv * big_r[:, :, None], torch.bmm(a_inv, s_r), a_inv, alpha=-1.0).mul_(0.5 * w)
        g_cov.diagonal(dim1=1, dim2=2).sub_(diag.square().reciprocal_().mul_(grad * w_cov_diag))
        g_mu = a_v[:, :, 0] * -w  # (K, D)
        gc = torch.bmm(g_cov, c[:, :, None])[:, :, 0]  # (K, D)
        # dJ/d(moments of gamma) (K, 1 + D + D*D), see the module docstring: its product with
        # [1, zc, zc (x) zc] is dJ/dgamma, and the r-weighted quadratic form of the energy
        # gives the direct dJ/dzc through the same features.
        g_phi = torch.where(s > _TINY * n, big_r[:, 0], 0.0) * -w  # (K,): S_k dJ/dphi_k / N
        const = g_phi + (c * (gc - g_mu)).sum(1) - (g_cov * cov).sum((1, 2))  # (K,)
        g_mom = torch.cat([const[:, None], g_mu - 2.0 * gc, g_cov.view(k, d * d)], 1) / s[:, None]  # (K, 1+D+D*D)
        grad_gamma = g_mom @ feats  # (K, N)
        # dJ/d[zc, zc (x) zc] from the two routes: (K, D + D*D) coefficients for r and gamma
        coef = torch.cat([torch.cat([a_v[:, :, 1], -0.5 * a_inv.view(k, d * d)], 1) * -w, g_mom[:, 1:]], 0)  # (2K, D+D*D)
        h = coef.T @ torch.cat([r, gt], 0)  # (D + D*D, N)
        # symmetric quadratic coefficients: d/dzc of zc^T H zc is 2 H zc
        grad_z = h[:d] + 2.0 * (h[d:].view(d, d, n) * zc[None, :, :]).sum(1)  # (D, N)
        z_dtype, g_dtype = ctx.dtypes
        return grad_z.T.to(z_dtype), grad_gamma.T.to(g_dtype), None, None, None

"""The scoring density of :class:`~dagmm.detectors.aegmm.OutlierAEGMM` after training: the code's mixture
(the estimation network's, or EM's on the training codes) and the residual's Gaussians.

A mixin, so that ``aegmm.py`` keeps the networks, the training and the scoring loop; these methods use the
detector's ``aegmm``, ``device``, ``cov_eps``, ``_batched`` and ``_encode_fn``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .base import DEFAULT_SCORE_BATCH
from ..models.covariance import ComponentMoments, component_gaussians
from ..models.gmm import (
    GMMParams,
    GMMStats,
    add_stats,
    cholesky_with_jitter,
    gmm_log_prob,
    gmm_params_from_stats,
    gmm_stats,
    precision_cholesky,
)
from ..models.mixture import select_mixture

__all__ = ["ScoringDensity"]


class ScoringDensity:
    """Fitting and installing the mixture of the codes and the residual model (mixin of ``OutlierAEGMM``)."""

    def _fit_component_residuals(self, X: np.ndarray, prior: torch.Tensor,
                                 batch_size: int = DEFAULT_SCORE_BATCH) -> None:
        """One Gaussian of the residual per mixture component (``residual_means_``, ``residual_prec_chols_``).

        The training rows' memberships under the scoring mixture weight their
        residuals; each component's covariance is shrunk towards the global
        one (``prior``, (F, F) float64, ``residual_prec_chol_``'s) with the weight of F rows
        (:func:`dagmm.models.covariance.component_gaussians`).  The score is then
        one mixture of the code and the residual, ``-log sum_k phi_k N(z; mu_k,
        Sigma_k) N(r; m_k, C_k)``.
        """
        encode = self._encode_fn()[1]
        moments = ComponentMoments()
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                xb = torch.from_numpy(X[start:start + batch_size]).to(self.device)
                x_recon, z = encode(xb)
                lp = gmm_log_prob(z.double(), self.phi_, self.mu_, self.prec_chol_)  # (n, K)
                moments.add((xb.double() - x_recon.double()).flatten(1).cpu(), torch.softmax(lp, 1).cpu())
        mean, prec_chol = component_gaussians(moments, prior, float(prior.shape[0]))
        self.residual_means_, self.residual_prec_chols_ = mean.numpy(), prec_chol.float().numpy()

    def _fit_mixture_em(self, X: np.ndarray, candidates: list, reg: float, seed: Optional[int],
                        batch_size: int = DEFAULT_SCORE_BATCH) -> dict:
        """Scoring mixture of the training codes by EM, components chosen by BIC.

        The estimation network's memberships give the paper's mixture, fitted
        jointly with the auto-encoder on mini-batches; a maximum-likelihood
        mixture of the codes it actually scores, with as many components as
        the codes support (:func:`dagmm.models.mixture.select_mixture`),
        models their density more closely.  Returns the choice (JSON-able).
        """
        self.aegmm.eval()
        z = torch.cat([z.double() for z in self._batched(lambda xb: self.aegmm(xb)[1], X, batch_size)])  # (N, D)
        params, info = select_mixture(z, candidates, reg=reg, seed=seed)
        self.set_mixture(params)
        return info

    def _fit_mixture(self, X: np.ndarray, batch_size: int = DEFAULT_SCORE_BATCH) -> None:
        """Exact mixture parameters over all of X, batch by batch, dropout off."""
        self.set_mixture(gmm_params_from_stats(self._mixture_stats(X, None, batch_size)))

    def mixture_stats(self, X: Any, shift: Optional[Any] = None,
                      batch_size: int = DEFAULT_SCORE_BATCH) -> GMMStats:
        """Additive mixture statistics of X under the trained networks (dropout off), float64.

        Summed over the parts of a dataset (:func:`dagmm.models.gmm.add_stats`, all taken
        about the same ``shift``), they give through :func:`dagmm.models.gmm.gmm_params_from_stats`
        the mixture of the whole dataset, as ``fit`` estimates it; :func:`dagmm.distributed.fit_mixture`
        sums them over Dask partitions and ``dagmm fit --distributed`` over ranks.

        Parameters
        ----------
        X : array-like, shape (N, F)
            Rows in the units of the training data (the detector's scaling is applied here).
        shift : (D,) array-like, optional
            Reference point of the moments (the latent size plus the reconstruction
            features).  Default: the mean latent of the first batch.
        batch_size : int
            Rows per forward pass.
        """
        self._check_fitted("mixture_stats")
        return self._mixture_stats(self._checked(X), shift, batch_size)

    def _mixture_stats(self, X: np.ndarray, shift: Optional[Any], batch_size: int) -> GMMStats:
        """:meth:`mixture_stats` of X already in the network's units."""
        self.aegmm.eval()
        stats = None
        if shift is not None:
            shift = torch.as_tensor(np.asarray(shift, dtype=np.float64), device=self.device)
        for z, gamma in self._batched(lambda xb: self.aegmm(xb)[1:], X, batch_size):
            if stats is None:
                stats = gmm_stats(z, gamma, z.double().mean(0) if shift is None else shift)
            else:
                stats = add_stats(stats, gmm_stats(z, gamma, stats.shift))
        if stats is None:
            raise ValueError("mixture_stats: X has no rows.")
        return stats

    def set_mixture(self, params: GMMParams) -> None:
        """Install mixture parameters (float64) and factorise their covariances."""
        chol, eps_used = cholesky_with_jitter(params.cov.double(), self.cov_eps)
        self.phi_ = params.phi.double()
        self.mu_ = params.mu.double()
        self.cov_ = params.cov.double()
        self.cov_eps_ = eps_used
        self.prec_chol_ = precision_cholesky(chol)
        # the per-component residual Gaussians belong to the components they were weighted by
        self.residual_means_ = self.residual_prec_chols_ = None

    def _residual_model(self) -> dict:
        """The residual model as float64 tensors on the device: ``means`` and ``prec_chols`` (the joint mixture,
        keyword arguments of :func:`dagmm.models.covariance.component_residual_log_prob`), else ``mean`` and
        ``prec_chol`` or ``error_scale`` (those of :func:`dagmm.models.covariance.residual_nll`); empty for the
        energy alone (the paper architecture, user nets, detectors saved before these existed)."""
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a)).to(self.device).double()

        if getattr(self, "residual_prec_chols_", None) is not None and len(self.residual_means_) == len(self.phi_):
            return {"means": dev(self.residual_means_), "prec_chols": dev(self.residual_prec_chols_)}
        if getattr(self, "residual_prec_chol_", None) is not None:
            return {"mean": dev(self.residual_mean_).flatten(), "prec_chol": dev(self.residual_prec_chol_)}
        if getattr(self, "error_scale_", None) is not None:
            return {"error_scale": dev(self.error_scale_).flatten()}
        return {}

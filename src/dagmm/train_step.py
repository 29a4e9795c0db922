"""The default OutlierAEGMM training loss as one autograd node, on the C kernels.

A training step of the paper's KDDCUP network is some thirty small
operations per direction; at batch 1024 on two CPU cores their fixed costs
(autograd's graph, one node per stack and loss term, the joins of ``cat``
and of the two gradients reaching ``x'`` and ``z``) were about a third of the
step (``benchmarks/results/NOTES-speed.md``, fifth pass).  When the model is
the library's :class:`dagmm.nets.AEGMMNet` with fusable stacks (see
:mod:`dagmm.fused`), the loss is :func:`dagmm.losses.loss_aegmm` and the C
kernels of :mod:`dagmm.native` take the batch, :func:`aegmm_loss` computes the
same loss -- encoder, decoder, reconstruction features, estimation network,
mixture objective and squared error -- as one node whose backward runs the
same pieces in reverse by hand.  The value and the gradients are those of the
composed modules up to float32 rounding (``tests/test_train_step.py``); the
squared error is summed in float64 by the features kernel, which also adds its
gradient to the features' own.

Anything else -- another network, loss or device, hooks, float64 -- returns
None from :func:`aegmm_loss`, and the caller runs the modules as usual.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.autograd.function import once_differentiable

from . import fused, fused_head, native
from .features import LOG_MSE_EPS, RECON_EPS, _MODES, default_recon_features, log_mse_cosine
from .gmm import _JITTER_TRIES, _cholesky_failure
from .losses import loss_aegmm
from .nets import AEGMMNet

__all__ = ["aegmm_loss"]

_FEATURES = {default_recon_features: "relative", log_mse_cosine: "log_mse"}


def aegmm_loss(model: torch.nn.Module, xb: torch.Tensor, loss_fn: Callable, w_energy: float, w_cov_diag: float,
               cov_eps: float = 1e-6) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(loss, x_recon)`` of ``loss_fn(xb, *model(xb))`` computed as one node, or None where it does not apply."""
    if loss_fn is not loss_aegmm or type(model) is not AEGMMNet or fused._hooked(model):
        return None
    first = _FEATURES.get(model.recon_features)
    if first is None or not (xb.dim() == 2 and xb.is_contiguous() and fused._native_tanh(xb)
                             and torch.is_grad_enabled()):
        return None
    enc, dec, head = fused.plan(model.encoder), fused.plan(model.decoder), fused.plan(model.gmm_density)
    if enc is None or dec is None or head is None or not head.head:
        return None
    stacks = (enc, dec, head)
    if any(p.flatten or p.unflatten is not None or not p.c_tanh for p in stacks):
        return None
    if enc.ops[-1][0] != fused._LINEAR or dec.ops[-1][0] != fused._LINEAR or dec.ops[-1][2].shape[0] != xb.shape[1]:
        return None  # the latent code and the reconstruction come straight from a Linear
    specs = tuple(tuple(m.p if kind == fused._DROPOUT and m.training else None for kind, m, _, _, _ in p.ops)
                  for p in stacks)
    params = [*enc.params, *dec.params, *head.params]
    out: list = []
    loss = _AEGMMLoss.apply(xb, (stacks, specs, _MODES[first], float(w_energy), float(w_cov_diag), float(cov_eps),
                                 out), *params)
    return loss, out[0]


class _AEGMMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xb, config, *params):
        (enc, dec, head), (s_enc, s_dec, s_head), mode, w_energy, w_cov_diag, cov_eps, out = config
        latent, saved_enc = fused._forward(xb, s_enc, enc.ops, True, keep=True)  # (N, L)
        x_recon, saved_dec = fused._forward(latent, s_dec, dec.ops, True, keep=True)  # (N, F)
        n, f = xb.shape
        feats = xb.new_empty((n, 2))
        norms = torch.empty((n, 5), dtype=torch.float64)  # norms, error, their product, cosine
        native.kernels.recon_forward(xb.data_ptr(), x_recon.data_ptr(), n, f, False, mode, RECON_EPS, LOG_MSE_EPS,
                                     feats.data_ptr(), norms.data_ptr())
        z = torch.cat([latent, feats], dim=1)  # (N, L + 2)
        lin = [op for op in head.ops if op[0] == fused._LINEAR]
        prob = s_head[2] if len(s_head) == 5 else None
        y, t, u = fused_head._forward(z, lin[0][2], lin[0][3], lin[1][2], lin[1][3], prob)  # y (K, N)
        d, k = z.shape[1], y.shape[0]
        grad_z = torch.empty((d, n))
        grad_gamma = torch.empty((k, n))
        value, jitter, bad, finite = native.kernels.mixture_objective(
            z.data_ptr(), *z.stride(), False, y.data_ptr(), 1, n, False, grad_z.data_ptr(), grad_gamma.data_ptr(),
            n, d, k, w_energy, w_cov_diag, cov_eps, _JITTER_TRIES)
        if bad:
            raise _cholesky_failure(bad, jitter, finite)
        sq_err = norms[:, 2].square().sum().item()  # sum_i ||x_i - x'_i||^2 in float64
        out.append(x_recon.detach())
        ctx.stacks, ctx.mode, ctx.prob = (enc, dec, head), mode, prob
        ctx.saved = (saved_enc, saved_dec)
        ctx.save_for_backward(xb, x_recon, norms, z, y, t, grad_z, grad_gamma, *([u] if u is not None else []))
        return torch.tensor(sq_err / n + value, dtype=xb.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xb, x_recon, norms, z, y, t, grad_z, grad_gamma, *rest = ctx.saved_tensors
        u = rest[0] if rest else None
        enc, dec, head = ctx.stacks
        saved_enc, saved_dec = ctx.saved
        g = float(grad)
        n, f = xb.shape
        if g != 1.0:  # loss.backward() passes exactly 1
            grad_z, grad_gamma = grad_z * g, grad_gamma * g
        # estimation network: its input gradient joins the objective's direct one, both (D, N)
        lin = [op for op in head.ops if op[0] == fused._LINEAR]
        w1, b1, w2, b2 = lin[0][2], lin[0][3], lin[1][2], lin[1][3]
        gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
        gb1 = None if b1 is None else torch.empty_like(b1)
        gb2 = None if b2 is None else torch.empty_like(b2)
        prob = ctx.prob
        keep = 1.0 if u is None else (0.0 if prob >= 1.0 else 1.0 - prob)
        gz_head = torch.empty_like(grad_z)  # (D, N)
        w1c, w2c = w1.detach().contiguous(), w2.detach().contiguous()
        native.kernels.head_backward(
            z.data_ptr(), *z.stride(), n, z.shape[1], w1c.data_ptr(), w1.shape[0], w2c.data_ptr(), w2.shape[0],
            0 if u is None else u.data_ptr(), *(u.stride() if u is not None else (0, 0)), keep,
            t.data_ptr(), y.data_ptr(), grad_gamma.data_ptr(), 1, n, gz_head.data_ptr(),
            gw1.data_ptr(), 0 if gb1 is None else gb1.data_ptr(), gw2.data_ptr(), 0 if gb2 is None else gb2.data_ptr())
        g_z = grad_z.add_(gz_head)  # (D, N)
        latent_dim = z.shape[1] - 2
        # reconstruction features and the squared error, both with respect to x'
        g_feats = g_z[latent_dim:].t()  # (N, 2)
        g_recon = torch.empty_like(x_recon)
        native.kernels.recon_backward(xb.data_ptr(), x_recon.data_ptr(), n, f, False, ctx.mode, RECON_EPS,
                                      LOG_MSE_EPS, g_feats.data_ptr(), *g_feats.stride(), False, norms.data_ptr(),
                                      g_recon.data_ptr(), 2.0 * g / n)
        g_latent, dec_grads = fused.backward(dec.ops, saved_dec, g_recon, True, True)
        g_latent = g_latent.add_(g_z[:latent_dim].t())  # (N, L)
        _, enc_grads = fused.backward(enc.ops, saved_enc, g_latent, True, False)
        head_grads = [gw1, *([gb1] if gb1 is not None else []), gw2, *([gb2] if gb2 is not None else [])]
        return (None, None, *enc_grads, *dec_grads, *head_grads)

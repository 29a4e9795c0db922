"""The default OutlierAEGMM training loss as one autograd node, on the C kernels.

A training step of the paper's KDDCUP network is some thirty small
operations per direction; at batch 1024 on two CPU cores their fixed costs
(autograd's graph, one node per stack and loss term, the joins of ``cat``
and of the two gradients reaching ``x'`` and ``z``) were about a third of the
step (``benchmarks/results/NOTES-speed.md``, fifth pass).  When the model is
the library's :class:`dagmm.models.nets.AEGMMNet` with fusable stacks (see
:mod:`dagmm.accel.fused`), the loss is :func:`dagmm.models.losses.loss_aegmm` and the C
kernels of :mod:`dagmm.accel.native` take the batch, :func:`aegmm_loss` computes the
same loss -- encoder, decoder, reconstruction features, estimation network,
mixture objective and squared error -- as one node whose backward runs the
same pieces in reverse by hand.  The value and the gradients are those of the
composed modules up to float32 rounding (``tests/test_train_step.py``); the
squared error is summed in float64 by the features kernel, which also adds its
gradient to the features' own.

Where the encoder and decoder are chains the inference kernel of
:mod:`dagmm.accel.fused_mlp` takes (``Linear`` layers each followed by nothing,
``Tanh`` or ``ReLU``) and that kernel runs vectorised (:data:`dagmm.accel.fused_mlp.FAST`),
the auto-encoder and the features run as two C calls, one forward and one
backward (``dagmm/accel/_native_train.c``), on the threads :func:`kernel_threads`
grants; elsewhere each layer is a ``torch.mm`` per direction.

Anything else -- another network, loss or device, hooks, float64 -- returns
None from :func:`aegmm_loss`, and the caller runs the modules as usual.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional

import torch
from torch.autograd.function import once_differentiable

from . import fused, fused_head, fused_mlp
from ..models.features import (
    _MODES,
    LOG_MSE_EPS,
    RECON_EPS,
    _native_backward,
    _native_forward,
    default_recon_features,
    log_mse_cosine,
)
from ..models.losses import loss_aegmm
from ..models.nets import AEGMMNet
from .objective import native_objective

__all__ = ["aegmm_loss", "kernel_threads"]

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
    specs = tuple(p.spec() for p in stacks)
    # the chain skips only layers without parameters, so net.params is [*enc.params, *dec.params]
    net = fused_mlp.train_net(enc.ops, specs[0], dec.ops, specs[1])
    params = [*enc.params, *dec.params, *head.params]
    out: list = []
    loss = _AEGMMLoss.apply(xb, (stacks, specs, first, net, float(w_energy), float(w_cov_diag), float(cov_eps), out),
                            *params)
    return loss, out[0]


_STATE = threading.local()


@contextlib.contextmanager
def kernel_threads() -> Iterator[None]:
    """Let the training kernels of this thread's steps have the cores torch's operations had.

    The auto-encoder kernels (:func:`dagmm.accel.fused_mlp.train_forward` and
    ``train_backward``) split a batch's rows between threads of their own.
    Torch's OpenMP workers keep spinning for a while after each parallel
    operation, so on a machine with as many cores as torch threads those
    threads would share cores with spinning ones (two kernel threads were
    slower than one: ``benchmarks/results/NOTES-speed.md``, seventh pass).
    Inside this context, the first step that runs the kernels sets this
    thread's torch intra-op threads to one and gives the kernels the count
    it had; leaving the context sets it back.  Outside it, the kernels run
    on one thread and torch's setting is left alone.  ``OutlierAEGMM.fit``
    trains inside it.
    """
    previous = getattr(_STATE, "threads", None)
    _STATE.threads = 0  # 0: no kernel step yet in this context
    try:
        yield
    finally:
        if _STATE.threads > 1:
            torch.set_num_threads(_STATE.threads)
        _STATE.threads = previous


def _threads() -> int:
    """Threads for the training kernels of this step (see :func:`kernel_threads`)."""
    threads = getattr(_STATE, "threads", None)
    if threads is None:
        return 1
    if threads == 0:
        threads = _STATE.threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
    return threads


class _AEGMMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xb, config, *params):
        (enc, dec, head), (s_enc, s_dec, s_head), first, net, w_energy, w_cov_diag, cov_eps, out = config
        threads = _threads() if net is not None else 1
        if net is not None:  # the auto-encoder and the features in one C call
            acts, z, norms, x_recon = fused_mlp.train_forward(net, xb, _MODES[first], RECON_EPS, LOG_MSE_EPS,
                                                              threads)
            saved_enc = saved_dec = None
        else:
            acts = None
            latent, saved_enc = fused._forward(xb, s_enc, enc.ops, True, keep=True)  # (N, L)
            x_recon, saved_dec = fused._forward(latent, s_dec, dec.ops, True, keep=True)  # (N, F)
            norms = torch.empty((xb.shape[0], 5), dtype=torch.float64)  # norms, error, their product, cosine
            z = torch.cat([latent, _native_forward(xb, x_recon, first, norms)], dim=1)  # (N, L + 2)
        w1, b1, w2, b2, prob = fused_head.layers(head, s_head)
        y, t, u, keep = fused_head.forward(z, w1, b1, w2, b2, prob)  # y (K, N)
        value, grad_z, grad_gamma = native_objective(z, y.t(), w_energy, w_cov_diag, cov_eps)  # (D, N), (K, N)
        sq_err = norms[:, 2].square().sum().item()  # sum_i ||x_i - x'_i||^2 in float64
        out.append(x_recon.detach())
        ctx.stacks, ctx.first, ctx.keep, ctx.net, ctx.threads = (enc, dec, head), first, keep, net, threads
        ctx.head_layers = (w1, w2, b1 is not None, b2 is not None)
        ctx.saved = (saved_enc, saved_dec)
        ctx.acts = acts  # the layers' outputs (fused_mlp.Activations), with ctx.net
        ctx.save_for_backward(xb, x_recon, norms, z, y, t, grad_z, grad_gamma, *([u] if u is not None else []))
        return torch.tensor(sq_err / xb.shape[0] + value, dtype=xb.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xb, x_recon, norms, z, y, t, grad_z, grad_gamma, *rest = ctx.saved_tensors
        enc, dec, _ = ctx.stacks
        saved_enc, saved_dec = ctx.saved
        g = float(grad)
        if g != 1.0:  # loss.backward() passes exactly 1
            grad_z, grad_gamma = grad_z * g, grad_gamma * g
        # estimation network: its input gradient joins the objective's direct one, both (D, N)
        w1, w2, has_b1, has_b2 = ctx.head_layers
        gz_head, head_grads = fused_head.backward(z, w1, w2, has_b1, has_b2, rest[0] if rest else None, ctx.keep,
                                                  t, y, grad_gamma.t(), True)
        g_z = grad_z + gz_head  # (D, N); not in place: a second backward (retain_graph) reads grad_z again
        if ctx.net is not None:
            grads = fused_mlp.train_backward(ctx.net, xb, ctx.acts, norms, g_z, 2.0 * g / xb.shape[0],
                                             _MODES[ctx.first], RECON_EPS, LOG_MSE_EPS, ctx.threads)
            return (None, None, *grads, *head_grads)
        latent_dim = z.shape[1] - 2
        # reconstruction features and the squared error, both with respect to x'
        g_recon = _native_backward(xb, x_recon, ctx.first, g_z[latent_dim:].t(), norms, 2.0 * g / xb.shape[0])
        g_latent, dec_grads = fused.backward(dec.ops, saved_dec, g_recon, True, True)
        g_latent = g_latent.add_(g_z[:latent_dim].t())  # (N, L)
        _, enc_grads = fused.backward(enc.ops, saved_enc, g_latent, True, False)
        return (None, None, *enc_grads, *dec_grads, *head_grads)

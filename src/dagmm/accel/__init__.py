"""The one door to the fast paths: the optional C kernels (``dagmm/accel/_native*.c``).

The rest of the package imports only what this module defines.  Each entry
point either takes the fast path or says it does not apply (returns None or
False), and the caller then runs the plain torch code of :mod:`dagmm.models`,
which computes the same function up to float rounding:

* :func:`energy_scorer` -- ``OutlierAEGMM.score``: encoder, decoder,
  reconstruction features and sample energy in one C call per batch;
* :func:`reconstructor` -- ``OutlierAE.score`` / ``reconstruct``: the
  auto-encoder in one C call per batch;
* :func:`aegmm_loss` and :func:`kernel_threads` -- the default
  ``OutlierAEGMM`` training loss as one autograd node (auto-encoder, features,
  estimation network and mixture objective in C);
* :func:`adam_plan` -- the optimiser step of
  :class:`dagmm.training.loop.LeanAdam` as one C call;
* :func:`for_each_batch` / :func:`workers_for` -- the batch runner of scoring
  (threads, no C).

This module is also the only place that checks what goes to C: every tensor's
device, dtype, shape and contiguity, and the lifetime of the memory behind a
raw address (the objects handed to the kernels hold the tensors they point
into; an Adam plan checks before each step that no parameter moved).  The
kernels themselves check nothing.

Where they run: the extension was built (``setup.py`` compiles it where a C
compiler is present; :func:`available`), its AVX2 + FMA clone is in use
(GCC on x86-64 Linux and a CPU that has them; :func:`fast`; Adam's step needs
only the build), the tensors are float32 on the CPU, and the switch
:data:`enabled` is on (``DAGMM_NATIVE=0`` in the environment at import, or
``dagmm.accel.enabled = False``, turns it off).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module

from . import _lib
from ._train import Head, TrainNet, kernel_threads
from .batches import for_each_batch, workers_for
from ..models.covariance import stacked_whitening
from ..models.features import LOG_MSE_EPS, RECON_EPS, default_recon_features, log_mse_cosine
from ..models.gmm import energy_terms
from ..models.losses import loss_aegmm
from ..models.nets import AEGMMNet, AENet

__all__ = ["AdamPlan", "adam_plan", "aegmm_loss", "available", "enabled", "energy_scorer", "fast", "for_each_batch",
           "kernel_threads", "reconstructor", "workers_for"]

#: Whether the C kernels are used where they apply (read from ``DAGMM_NATIVE`` at import).
enabled: bool = os.environ.get("DAGMM_NATIVE", "1") != "0"

_F32 = torch.float32


def available() -> bool:
    """Whether the C kernels were built with this install."""
    return _lib.lib is not None


def fast() -> bool:
    """Whether the kernels run vectorised here (built, AVX2 + FMA clone on this CPU): where they are used."""
    return _lib.FAST


def _on() -> bool:
    return enabled and _lib.FAST


def _cpu_f32(t: Optional[torch.Tensor]) -> bool:
    """A contiguous float32 CPU tensor (or no tensor: a Linear without bias)."""
    return t is None or (t.dtype == _F32 and t.device.type == "cpu" and t.is_contiguous())


# ------------------------------------------------------------------ chains
def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or getattr(_module, "_global_backward_pre_hooks", None))


def _leaves(seq: nn.Module, out: list) -> bool:
    """Append the leaf layers of an exact ``nn.Sequential`` (nested ones opened); False if any is hooked."""
    if type(seq) is not nn.Sequential or _hooked(seq):
        return False
    for m in seq:
        if type(m) is nn.Sequential:
            if not _leaves(m, out):
                return False
        elif _hooked(m):
            return False
        else:
            out.append(m)
    return True


class Chain:
    """A fully connected stack as the kernels take it: checked float32 CPU layers, in order.

    ``layers`` holds ``(weight (out, in), bias (out,) or None, activation code)``
    per Linear; the object keeps these tensors alive, so the addresses of
    :meth:`spec` stay valid while it exists.  ``flatten``: a leading
    ``Flatten()``; ``unflatten``: the row shape of a trailing ``Unflatten(1, shape)``.
    """

    __slots__ = ("layers", "flatten", "unflatten")

    def __init__(self, layers: list, flatten: bool, unflatten: Optional[tuple]) -> None:
        self.layers, self.flatten, self.unflatten = layers, flatten, unflatten

    @property
    def n_in(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def n_out(self) -> int:
        return self.layers[-1][0].shape[0]

    def spec(self) -> torch.Tensor:
        """The kernels' description: int64 (layers, 5) rows of (in, out, weight address, bias address or 0, act)."""
        return torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), act]
                             for w, b, act in self.layers], dtype=torch.int64)


def _chain(module: nn.Module) -> Optional[Chain]:
    """``module`` as a :class:`Chain`, or None where the kernels do not compute exactly ``module(x)``.

    Exact types only (a subclass with its own ``forward`` is never bypassed):
    ``Linear`` layers each followed by nothing, ``Tanh`` or ``ReLU``;
    ``Identity`` and ``Dropout`` that does not drop (eval mode or ``p=0``) are
    skipped; ``Flatten()`` first and ``Unflatten(1, shape)`` last.  No hooks.
    Parameters float32, contiguous, on the CPU.  Cheap (a walk over the
    layers), so it is done for each use and never describes a stale model.
    """
    leaves: list = []
    if _global_hooks() or not _leaves(module, leaves):
        return None
    flatten = bool(leaves) and type(leaves[0]) is nn.Flatten
    if flatten:
        if leaves[0].start_dim != 1 or leaves[0].end_dim != -1:
            return None
        leaves = leaves[1:]
    unflatten = None
    if leaves and type(leaves[-1]) is nn.Unflatten:
        if leaves[-1].dim != 1:
            return None
        unflatten, leaves = tuple(int(s) for s in leaves[-1].unflattened_size), leaves[:-1]
    lib = _lib.lib
    acts = {nn.Tanh: lib.ACT_TANH, nn.ReLU: lib.ACT_RELU}
    layers: list = []
    for m in leaves:
        kind = type(m)
        if kind is nn.Linear:
            w, b = m._parameters.get("weight"), m._parameters.get("bias")  # the dict: no Module.__getattr__
            if w is None or w.dim() != 2 or not (_cpu_f32(w) and _cpu_f32(b)):
                return None
            if layers and layers[-1][0].shape[0] != w.shape[1]:
                return None
            layers.append([w, b, lib.ACT_NONE])
        elif kind in acts:
            if not layers or layers[-1][2] != lib.ACT_NONE:
                return None  # an activation first, or two in a row
            layers[-1][2] = acts[kind]
        elif kind is nn.Dropout:
            if m.training and m.p > 0:
                return None
        elif kind is not nn.Identity:
            return None
    if not 0 < len(layers) <= lib.MAX_LAYERS:
        return None
    return Chain([tuple(layer) for layer in layers], flatten, unflatten)


def _head(module: nn.Module) -> Optional[Head]:
    """DAGMM's estimation network ``Linear, Tanh, [Dropout], Linear, Softmax(dim=1)`` as the head kernels take it."""
    leaves: list = []
    if _global_hooks() or not _leaves(module, leaves):
        return None
    kinds = tuple(type(m) for m in leaves)
    if kinds not in ((nn.Linear, nn.Tanh, nn.Linear, nn.Softmax), (nn.Linear, nn.Tanh, nn.Dropout, nn.Linear, nn.Softmax)):
        return None
    first, second = leaves[0], leaves[-2]
    if leaves[-1].dim not in (1, -1) or first.out_features != second.in_features:
        return None
    params = [first._parameters.get("weight"), first._parameters.get("bias"),
              second._parameters.get("weight"), second._parameters.get("bias")]
    if params[0] is None or params[2] is None or not all(_cpu_f32(p) for p in params):
        return None
    drop = leaves[2] if len(leaves) == 5 else None
    return Head(*params, drop.p if drop is not None and drop.training else None)


def _rows(x: torch.Tensor, width: int) -> Optional[torch.Tensor]:
    """``x`` as contiguous float32 CPU rows (N, width), N >= 1 (a copy only if not contiguous), or None."""
    if x.dtype != _F32 or x.device.type != "cpu" or x.dim() < 1 or x.shape[0] < 1:
        return None
    x = x.reshape(x.shape[0], -1)  # (N, width): a view when x is contiguous
    return x.contiguous() if x.shape[1] == width else None


# ------------------------------------------------------------------ scoring
def reconstructor(model: nn.Module) -> Optional[Callable[[torch.Tensor, torch.Tensor], bool]]:
    """``model(x)`` of an :class:`~dagmm.models.nets.AENet` in one C call per batch, where it applies.

    Returns ``fn(xb, out)`` that writes the reconstruction of ``xb`` into the
    float32 CPU contiguous ``out`` (same shape) and returns True, or returns
    False (nothing written) for tensors it does not take; None when the model
    is not one the kernel runs (encoder and decoder chains as :func:`_chain`
    takes them, in eval mode).  One chain of both stacks: the latent code is
    never written out.
    """
    if not _on() or type(model) is not AENet or _hooked(model):
        return None
    enc, dec = _chain(model.encoder), _chain(model.decoder)
    if enc is None or dec is None or enc.unflatten is not None or dec.flatten or enc.n_out != dec.n_in \
            or enc.n_in != dec.n_out or len(enc.layers) + len(dec.layers) > _lib.lib.MAX_LAYERS:
        return None
    net = Chain(enc.layers + dec.layers, enc.flatten, dec.unflatten)
    out_rows = dec.unflatten or (dec.n_out,)  # the shape of one row of model(x)
    spec = net.spec()

    def reconstruct(xb: torch.Tensor, out: torch.Tensor) -> bool:
        # without a leading Flatten a Linear would act on the last axis of a 3-D batch: not a chain of rows
        if xb.dim() < 2 or (not net.flatten and xb.dim() != 2) or not _cpu_f32(out) \
                or tuple(out.shape) != (xb.shape[0], *out_rows):
            return False
        rows = _rows(xb, net.n_in)
        if rows is None:
            return False
        lib = _lib.lib
        lib.mlp_forward(rows.data_ptr(), rows.shape[0], out.data_ptr(), spec.data_ptr(), len(net.layers), lib.TILE)
        return True

    return reconstruct


def energy_scorer(model: nn.Module, phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor,
                  error_scale: Optional[torch.Tensor] = None, mean: Optional[torch.Tensor] = None,
                  residual_prec_chol: Optional[torch.Tensor] = None, components: Optional[dict] = None
                  ) -> Optional[Callable[[torch.Tensor, torch.Tensor], bool]]:
    """The sample energy of an :class:`~dagmm.models.nets.AEGMMNet` in one C call per batch, where it applies.

    Returns ``fn(xb, out)`` that writes the energies of float32 CPU rows ``xb``
    (N, F) into the float64 ``out`` (N,) and returns True, or returns False
    (nothing written) for rows it does not take; None when the model is not
    one the kernel runs: encoder and decoder chains (:func:`_chain`, no
    flatten), the built-in reconstruction features, a float64 CPU mixture.
    The energy is :func:`dagmm.models.gmm.sample_energy` of the latent code
    and features that ``model.encode`` computes (to float32 rounding of the
    network), plus the residual term of
    :func:`dagmm.models.covariance.residual_nll`: ``0.5 * |(r - mean)
    residual_prec_chol|^2`` when ``mean`` (F,) and ``residual_prec_chol``
    (F, F) are given (the product in float32, as a layer of the networks,
    the sum of squares in float64), else ``0.5 * sum_j r_j^2 /
    error_scale_j`` in float64 when ``error_scale`` (F,) is; ``x'`` is never
    written out.  ``components`` (the keyword arguments of
    :func:`dagmm.models.covariance.component_residual_log_prob`: ``means``
    (K, F), ``prec_chols`` (K, F, F)) makes it the joint
    mixture of the code and the residual instead: every ``P_k`` side by side
    as one layer of K F outputs (bias ``-m_k P_k``), each block's ``log det P_k
    - |.|^2 / 2`` added to component k's log-density before the log-sum-exp.
    """
    if not _on() or type(model) is not AEGMMNet or _hooked(model):
        return None
    lib = _lib.lib
    mode = {default_recon_features: lib.FEAT_RELATIVE, log_mse_cosine: lib.FEAT_LOG_MSE}.get(model.recon_features)
    enc, dec = _chain(model.encoder), _chain(model.decoder)
    if mode is None or enc is None or dec is None or enc.flatten or enc.unflatten or dec.flatten or dec.unflatten:
        return None
    k, d = mu.shape
    if (dec.n_in != enc.n_out or dec.n_out != enc.n_in or d != enc.n_out + 2 or d > lib.MAX_Z or k > lib.MAX_K
            or any(t.dtype != torch.float64 or t.device.type != "cpu" for t in (phi, mu, prec_chol))):
        return None
    if error_scale is not None and tuple(error_scale.shape) != (enc.n_in,):
        return None
    whiten = logdet = None  # the full residual term as a Linear layer: y = r P - mean P, weight (out, in) = P^T
    if components is not None:
        means, pc = components["means"].detach().cpu(), components["prec_chols"].detach().cpu()
        if tuple(means.shape) != (k, enc.n_in) or tuple(pc.shape) != (k, enc.n_in, enc.n_in):
            return None
        p_all, offset, logdet = stacked_whitening(means, pc)  # (F, K F), (K, F), (K,)
        whiten = Chain([(p_all.T.contiguous(), (-offset).reshape(-1).float().contiguous(), lib.ACT_NONE)],
                       False, None)
        logdet = logdet.contiguous()
        error_scale = residual_prec_chol = None
    if residual_prec_chol is not None:
        if tuple(residual_prec_chol.shape) != (enc.n_in, enc.n_in) or tuple(mean.shape) != (enc.n_in,):
            return None
        p64 = residual_prec_chol.detach().double().cpu()
        whiten = Chain([(p64.T.float().contiguous(), (-(mean.detach().double().cpu() @ p64)).float().contiguous(),
                         lib.ACT_NONE)], False, None)
        error_scale = None
    prec_t, offset, const = (t.contiguous() for t in energy_terms(phi, mu, prec_chol))
    enc_spec, dec_spec, width = enc.spec(), dec.spec(), enc.n_in
    inv_var = None if error_scale is None else (1.0 / error_scale.detach().double().cpu()).contiguous()  # (F,)
    whiten_spec = None if whiten is None else whiten.spec()

    def energy(xb: torch.Tensor, out: torch.Tensor) -> bool:
        rows = _rows(xb, width) if xb.dim() == 2 else None
        if rows is None or out.dtype != torch.float64 or out.device.type != "cpu" or not out.is_contiguous() \
                or out.shape != (rows.shape[0],):
            return False
        lib.aegmm_energy(rows.data_ptr(), rows.shape[0], enc_spec.data_ptr(), len(enc.layers), dec_spec.data_ptr(),
                         len(dec.layers), mode, RECON_EPS, LOG_MSE_EPS, prec_t.data_ptr(), offset.data_ptr(),
                         const.data_ptr(), k, 0 if inv_var is None else inv_var.data_ptr(),
                         0 if whiten is None else whiten_spec.data_ptr(), 0 if logdet is None else logdet.data_ptr(),
                         out.data_ptr(), lib.TILE)
        return True

    # the closure holds enc, dec, inv_var, whiten and logdet, so the tensors behind their pointers live as long as it
    return energy


# ----------------------------------------------------------------- training
def aegmm_loss(model: nn.Module, xb: torch.Tensor, loss_fn: Callable, w_energy: float, w_cov_diag: float,
               cov_eps: float = 1e-6) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(loss, x_recon)`` of ``loss_fn(xb, *model(xb))`` as one autograd node on the C kernels, or None.

    Applies to the library's :class:`~dagmm.models.nets.AEGMMNet` (exact type,
    no hooks) with :func:`~dagmm.models.losses.loss_aegmm`, the built-in
    reconstruction features, encoder and decoder chains (:func:`_chain`, each
    ending in a bare ``Linear``, no flatten), the estimation network
    ``Linear, Tanh, [Dropout], Linear, Softmax``, and contiguous float32 CPU
    rows with gradients enabled.  The value and every gradient are those of
    the composed modules up to float32 rounding (``tests/test_train_step.py``).
    Run it inside :func:`kernel_threads` to give the kernels torch's threads.
    """
    if not _on() or loss_fn is not loss_aegmm or type(model) is not AEGMMNet or _hooked(model):
        return None
    lib = _lib.lib
    mode = {default_recon_features: lib.FEAT_RELATIVE, log_mse_cosine: lib.FEAT_LOG_MSE}.get(model.recon_features)
    if mode is None or not torch.is_grad_enabled() or xb.dim() != 2 or xb.shape[0] < 1 or not _cpu_f32(xb):
        return None
    enc, dec, head = _chain(model.encoder), _chain(model.decoder), _head(model.gmm_density)
    if enc is None or dec is None or head is None or enc.flatten or enc.unflatten or dec.flatten or dec.unflatten:
        return None
    latent = enc.n_out
    if (enc.layers[-1][2] != lib.ACT_NONE or dec.layers[-1][2] != lib.ACT_NONE or enc.n_in != xb.shape[1]
            or dec.n_in != latent or dec.n_out != xb.shape[1] or latent + 2 > lib.MAX_Z
            or head.w1.shape[1] != latent + 2 or len(enc.layers) + len(dec.layers) > lib.MAX_LAYERS):
        return None
    net = TrainNet(enc.layers + dec.layers, len(enc.layers), mode)
    return net.loss(xb, head, float(w_energy), float(w_cov_diag), float(cov_eps))


# ---------------------------------------------------------------- optimiser
class AdamPlan:
    """Adam's update of a fixed list of parameters as one C call (``adam_step`` in ``_native_adam.c``).

    Made by :func:`adam_plan`, which checked every tensor; holds them all (so
    the addresses in its table stay valid) and the parameters' addresses at
    that time, which :meth:`moved` compares before each step.
    """

    __slots__ = ("tensors", "table", "where")

    def __init__(self, tensors: tuple, table: torch.Tensor, where: list) -> None:
        self.tensors, self.table, self.where = tensors, table, where

    def moved(self) -> bool:
        """Whether a parameter was given new storage (``p.data = ...``) since the plan was made."""
        return [p.data_ptr() for p in self.tensors[0]] != self.where

    def step(self, grads: list, lr, beta1, beta2, eps, weight_decay, maximize: bool) -> bool:
        """One update with these gradients; False (nothing done) where the C step does not apply now.

        The caller checks :meth:`moved` first.  Gradients must be contiguous
        (``p.grad`` assignment already checks their dtype, device and shape).
        """
        # an elementwise loop that vectorises in any build: it needs no AVX2 + FMA clone (fast())
        if not enabled or _lib.lib is None or maximize \
                or not all(type(v) in (float, int) for v in (lr, beta1, beta2, eps, weight_decay)) \
                or not all(g is not None and g.is_contiguous() for g in grads):
            return False
        _lib.lib.adam_step(self.table.data_ptr(), [g.data_ptr() for g in grads], lr, beta1, beta2, eps, weight_decay)
        return True


def adam_plan(params: list, exp_avgs: list, exp_avg_sqs: list, steps: list) -> Optional[AdamPlan]:
    """An :class:`AdamPlan` for these parameters and their Adam state, or None where the C step cannot take them.

    Every parameter and moment must be a contiguous float32 CPU tensor of the
    parameter's shape, every step counter a one-element float32 CPU tensor.
    """
    if _lib.lib is None or not params:
        return None
    for p, m, v, t in zip(params, exp_avgs, exp_avg_sqs, steps):
        if not all(_cpu_f32(x) and x.shape == p.shape for x in (p, m, v)) or not _cpu_f32(t) or t.numel() != 1:
            return None
    table = torch.tensor([[p.data_ptr(), m.data_ptr(), v.data_ptr(), t.data_ptr(), p.numel()]
                          for p, m, v, t in zip(params, exp_avgs, exp_avg_sqs, steps)], dtype=torch.int64)  # (P, 5)
    tensors = (list(params), list(exp_avgs), list(exp_avg_sqs), list(steps))
    return AdamPlan(tensors, table, [p.data_ptr() for p in params])

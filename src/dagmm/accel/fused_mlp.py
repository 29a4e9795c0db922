"""Inference through a plain fully connected stack in one call of the C kernel of ``dagmm/accel/_native_mlp.c``.

:func:`dagmm.accel.fused.run` hands a stack here when no gradient is wanted, the
stack is a chain of ``Linear`` layers each followed by nothing, ``Tanh`` or
``ReLU`` (``Dropout`` that does not drop and ``Identity`` are skipped), every
parameter is float32 on the CPU, and the kernels are built and on
(:mod:`dagmm.accel.native`) as their x86-64-v3 (AVX2 + FMA) clone on a CPU that has
it (:data:`FAST`: built by GCC on x86-64 Linux; elsewhere the torch code runs).
The kernel takes a tile of rows through every layer while its activations
stay in cache, with bias and activation applied to each product in place:
5.8 against 9.9 ms for the KDDCUP encoder at 16384 rows on one thread of the
development machine (``python benchmarks/mlp_kernel.py``,
``benchmarks/results/mlp_kernel.md``).  The result is the same function as the
torch code up to float32 rounding (``tests/test_fused.py``).
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Optional

import torch

from . import native

__all__ = ["chain", "energy_kernel", "run"]

# kinds of dagmm.accel.fused (kept in step with its constants: LINEAR, TANH, RELU, DROPOUT)
_LINEAR, _TANH, _RELU, _DROPOUT = 0, 1, 2, 4
_ACT = {_TANH: 1, _RELU: 2}
# the kernels' limits: layers per stack, latent width + 2 features, mixture components
_MAX_LAYERS, _MAX_Z, _MAX_K = 64, 64, 64
# Built with the kernels' AVX2 + FMA clone and running on a CPU that has it: elsewhere the kernels
# are correct but slower than torch (dagmm/accel/_native_mlp.c, mlp_fast), and the torch code runs instead.
FAST: bool = native.kernels is not None and bool(native.kernels.mlp_fast())
# rows per tile: the activations of a tile of the KDDCUP networks (widest 120) fit in L1/L2
TILE = 48


def chain(ops: list, spec: tuple) -> Optional[list]:
    """``[(weight, bias, activation code), ...]`` when ``ops`` is a chain the kernel runs, else None."""
    if not FAST:
        return None
    layers: list = []
    for (kind, _, w, b, _), prob in zip(ops, spec):
        if kind == _LINEAR:
            if not w.is_contiguous() or (b is not None and not b.is_contiguous()):
                return None
            if layers and layers[-1][0].shape[0] != w.shape[1]:
                return None
            layers.append([w, b, 0])
        elif kind in _ACT:
            if not layers or layers[-1][2]:
                return None  # an activation first, or two in a row
            layers[-1][2] = _ACT[kind]
        elif kind != _DROPOUT or prob:
            return None  # sigmoid, softmax, or a dropout that drops
    return layers if 0 < len(layers) <= _MAX_LAYERS else None


def run(h: torch.Tensor, layers: list, out: torch.Tensor) -> torch.Tensor:
    """Write the stack's output for float32 CPU rows ``h`` (N, in) into ``out`` (N, out_last)."""
    h = h.contiguous()
    spec, n = _spec(layers)
    native.kernels.mlp_forward(h.data_ptr(), h.shape[0], out.data_ptr(), spec.data_ptr(), n, TILE)
    return out


def energy_kernel(model, phi: torch.Tensor, mu: torch.Tensor,
                  prec_chol: torch.Tensor) -> Optional[Callable[[torch.Tensor, torch.Tensor], bool]]:
    """The sample energy of an :class:`dagmm.models.nets.AEGMMNet` in one C call per batch, when it applies.

    Returns ``fn(xb, out)`` that writes the energies of float32 CPU rows ``xb``
    (N, F) into the float64 ``out`` (N,) and returns True, or returns False
    (nothing written) for rows it does not take; None when the model is not
    one the kernel runs: encoder and decoder chains as :func:`chain` takes
    them (in eval mode), float32 CPU parameters, the built-in reconstruction
    features, a CPU float64 mixture.  The energy is that of
    :func:`dagmm.models.gmm.sample_energy` on the latent code and features the
    module path computes (the same features code, to float64 rounding of the
    mixture algebra); ``x'`` is never written out
    (``benchmarks/results/NOTES-speed.md``, sixth pass).
    """
    from . import fused
    from ..models.features import LOG_MSE_EPS, RECON_EPS, default_recon_features, log_mse_cosine
    from ..models.gmm import energy_terms

    mode = {default_recon_features: 0, log_mse_cosine: 1}.get(getattr(model, "recon_features", None))
    if mode is None or not (native.enabled and native.kernels is not None):
        return None
    specs = []
    for net in (model.encoder, model.decoder):
        p = fused.plan(net)
        if p is None or p.flatten or p.unflatten is not None or not p.c_tanh:
            return None
        layers = chain(p.ops, p.spec())
        if layers is None:
            return None
        specs.append(_spec(layers))
    (enc, n_enc), (dec, n_dec) = specs
    f, lat = int(enc[0, 0]), int(enc[-1, 1])
    k, d = mu.shape
    if (int(dec[0, 0]) != lat or int(dec[-1, 1]) != f or d != lat + 2 or d > _MAX_Z or k > _MAX_K
            or any(t.dtype != torch.float64 or t.device.type != "cpu" for t in (phi, mu, prec_chol))):
        return None
    prec_t, offset, const = (t.contiguous() for t in energy_terms(phi, mu, prec_chol))

    def energy(xb: torch.Tensor, out: torch.Tensor) -> bool:
        if (xb.dtype != torch.float32 or xb.device.type != "cpu" or xb.dim() != 2 or xb.shape[1] != f
                or out.dtype != torch.float64 or not out.is_contiguous()):
            return False
        xb = xb.contiguous()
        native.kernels.aegmm_energy(xb.data_ptr(), xb.shape[0], enc.data_ptr(), n_enc, dec.data_ptr(), n_dec, mode,
                                    RECON_EPS, LOG_MSE_EPS, prec_t.data_ptr(), offset.data_ptr(), const.data_ptr(),
                                    k, out.data_ptr(), TILE)
        return True

    return energy


def _spec(layers: list) -> tuple:
    """The kernels' description of a chain: ``(int64 tensor (layers, 5), layer count)``."""
    spec = torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), act]
                         for w, b, act in layers], dtype=torch.int64)  # (layers, 5)
    return spec, len(layers)


# Training (dagmm.accel.train_step): the auto-encoder forward and backward in one call each.
# Rows per tile in training, as in inference: tiles of 24 to 128 rows made no measurable difference
# at batch 1024 (benchmarks/results/NOTES-speed.md, seventh pass).
TRAIN_TILE = 48


class TrainNet:
    """An encoder and decoder the training kernels of ``dagmm/accel/_native_train.c`` take, as one chain.

    Built by :func:`train_net`; holds the kernels' layer description (made
    from the parameters' current addresses, so build one per step), the
    parameters in :attr:`dagmm.accel.fused.Plan.params` order, and each layer's
    output width padded to a multiple of 8 (the width of its activation array).
    """

    __slots__ = ("spec", "n_layers", "n_enc", "params", "widths", "has_bias", "features", "latent")

    def __init__(self, layers: list, n_enc: int) -> None:
        self.spec, self.n_layers = _spec(layers)
        self.n_enc = n_enc
        self.params = [t for w, b, _ in layers for t in ((w,) if b is None else (w, b))]
        self.widths = [(w.shape[0] + 7) // 8 * 8 for w, _, _ in layers]  # each output padded to 8
        self.has_bias = [b is not None for _, b, _ in layers]
        self.features = layers[0][0].shape[1]
        self.latent = layers[n_enc - 1][0].shape[0]


def train_net(enc_ops: list, enc_spec: tuple, dec_ops: list, dec_spec: tuple) -> Optional[TrainNet]:
    """A :class:`TrainNet` for the encoder and decoder plans, or None where the kernels do not apply.

    Both must be chains :func:`chain` takes, ending in a bare ``Linear``, the
    decoder mapping the latent code back to the encoder's input width.
    """
    enc, dec = chain(enc_ops, enc_spec), chain(dec_ops, dec_spec)
    if enc is None or dec is None or enc[-1][2] or dec[-1][2] or len(enc) + len(dec) > _MAX_LAYERS:
        return None
    latent, features = enc[-1][0].shape[0], enc[0][0].shape[1]
    if dec[0][0].shape[1] != latent or dec[-1][0].shape[0] != features or latent + 2 > _MAX_Z:
        return None
    return TrainNet(enc + dec, len(enc))


class Activations:
    """The outputs of every layer of one :func:`train_forward` call, kept for its backward.

    ``table`` holds each layer's (N, ``widths[l]``) array's address; all but
    the last layer's live in ``hidden``, a buffer from this thread's pool
    that goes back to the pool once this object is gone (after the step's
    autograd graph is freed), so the next steps reuse warm memory instead of
    a fresh 1-2 MB block each (about 10% of a KDDCUP step,
    ``benchmarks/results/NOTES-speed.md``, seventh pass).  ``recon`` is a
    fresh (N, ``widths[-1]``) array, since ``x'`` is handed to the caller.
    """

    __slots__ = ("hidden", "recon", "table", "__weakref__")

    def __init__(self, hidden: torch.Tensor, recon: torch.Tensor, table: torch.Tensor) -> None:
        self.hidden, self.recon, self.table = hidden, recon, table


_POOL = threading.local()
_POOLED = 4  # buffers kept per thread: a step's and the one before it are alive together


def _hidden_buffer(size: int) -> tuple[torch.Tensor, Optional[list]]:
    """A float32 (size,) buffer no live :class:`Activations` holds, and its pool entry (None: not pooled).

    When none of this size is free, the free buffers of other sizes (the shorter last batch of an
    epoch, another model) are dropped, so the pool never keeps buffers of sizes no longer asked for.
    """
    pool = _POOL.__dict__.setdefault("entries", [])
    for entry in pool:
        if entry[1]() is None and entry[0].numel() == size:  # its Activations are gone: free
            return entry[0], entry
    # none free of this size: forget the free ones of other sizes (by identity: entries hold tensors)
    pool[:] = [entry for entry in pool if entry[1]() is not None]
    buf = torch.empty(size, dtype=torch.float32)
    if len(pool) >= _POOLED:
        return buf, None
    entry = [buf, None]
    pool.append(entry)
    return buf, entry


def train_forward(net: TrainNet, x: torch.Tensor, mode: int, eps: float, log_eps: float,
                  threads: int) -> tuple[Activations, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward pass of contiguous float32 CPU rows ``x`` (N, F).

    Returns ``(acts, z, norms, x_recon)``: every layer's output
    (:class:`Activations`, for :func:`train_backward`), the latent code
    beside the two reconstruction features (N, L + 2), the per-row norms of
    the features (N, 5, float64, for the backward) and ``x'`` (N, F).
    """
    n = x.shape[0]
    hidden, entry = _hidden_buffer(n * sum(net.widths[:-1]))
    recon = torch.empty((n, net.widths[-1]), dtype=torch.float32)
    offsets = [0]
    for w in net.widths[:-2]:
        offsets.append(offsets[-1] + n * w)
    base = hidden.data_ptr()
    table = torch.tensor([base + 4 * o for o in offsets] + [recon.data_ptr()], dtype=torch.int64)
    acts = Activations(hidden, recon, table)
    if entry is not None:
        entry[1] = weakref.ref(acts)
    z = torch.empty((n, net.latent + 2), dtype=torch.float32)
    norms = torch.empty((n, 5), dtype=torch.float64)
    native.kernels.train_forward(x.data_ptr(), n, net.features, net.spec.data_ptr(), net.n_layers, net.n_enc, mode,
                                 eps, log_eps, table.data_ptr(), z.data_ptr(), norms.data_ptr(), TRAIN_TILE, threads)
    return acts, z, norms, recon[:, :net.features]  # (N, F)


def train_backward(net: TrainNet, x: torch.Tensor, acts: Activations, norms: torch.Tensor, grad_z: torch.Tensor,
                   sq_coef: float, mode: int, eps: float, log_eps: float, threads: int) -> list[torch.Tensor]:
    """The parameter gradients (in :attr:`TrainNet.params` order) for the float32 dJ/dz ``grad_z`` (L + 2, N),
    plus ``sq_coef (x' - x)`` with respect to ``x'``."""
    grad_z = grad_z.contiguous()
    grads = [torch.empty_like(p) for p in net.params]
    addresses, it = [], iter(grads)
    for has_bias in net.has_bias:
        addresses += [next(it).data_ptr(), next(it).data_ptr() if has_bias else 0]
    table = torch.tensor(addresses, dtype=torch.int64)
    native.kernels.train_backward(x.data_ptr(), x.shape[0], net.features, net.spec.data_ptr(), net.n_layers,
                                  net.n_enc, mode, eps, log_eps, acts.table.data_ptr(), norms.data_ptr(),
                                  grad_z.data_ptr(),
                                  sq_coef, table.data_ptr(), TRAIN_TILE, threads)
    return grads

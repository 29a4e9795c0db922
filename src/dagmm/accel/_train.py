"""The default OutlierAEGMM training loss as one autograd node on the C kernels (private to dagmm.accel).

A training step of the paper's KDDCUP network is some thirty small operations
per direction; at batch 1024 on two CPU cores their fixed costs were about a
third of the step (``benchmarks/results/NOTES-speed.md``, fifth pass).  Here
the loss -- encoder, decoder, reconstruction features and squared error
(``_native_train.c``: one call forward, one backward, rows split over the
threads :func:`kernel_threads` grants), estimation network
(``_native_head.c``) and mixture objective (``_native.c``) -- is one node whose
backward runs the same kernels in reverse.  The squared error is summed in
float64 by the features code, which also adds its gradient to the features'.

Everything handed in was checked by the facade (:mod:`dagmm.accel`): the
layers are float32 contiguous CPU tensors chained in shape, the batch
contiguous float32 CPU rows.  The node saves the parameters, so autograd's
version counters catch a parameter changed in place between the forward and
the backward, and the tensors behind every address live until both are done.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator, NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

from . import _lib
from ..models.features import LOG_MSE_EPS, RECON_EPS
from ..models.gmm import _JITTER_TRIES, _cholesky_failure

__all__ = ["Head", "TrainNet", "kernel_threads"]


class Head(NamedTuple):
    """The estimation network's two Linear layers (biases may be None) and the dropout probability in effect."""

    w1: torch.Tensor
    b1: Optional[torch.Tensor]
    w2: torch.Tensor
    b2: Optional[torch.Tensor]
    prob: Optional[float]

    def params(self) -> list:
        return [t for t in self[:4] if t is not None]


# --------------------------------------------------------------- threads
_STATE = threading.local()


@contextlib.contextmanager
def kernel_threads() -> Iterator[None]:
    """Let the training kernels of this thread's steps have the cores torch's operations had.

    The auto-encoder kernels split a batch's rows between threads of their
    own.  Torch's OpenMP workers keep spinning for a while after each parallel
    operation, so on a machine with as many cores as torch threads those
    threads would share cores with spinning ones (two kernel threads were
    slower than one: ``benchmarks/results/NOTES-speed.md``, seventh pass).
    Inside this context, the first step that runs the kernels sets this
    thread's torch intra-op threads to one and gives the kernels the count it
    had; leaving the context sets it back.  Outside it, the kernels run on one
    thread and torch's setting is left alone.  ``OutlierAEGMM.fit`` trains
    inside it.
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


# ---------------------------------------------------- layer output buffers
class _Activations:
    """The outputs of every layer of one forward call, kept for its backward.

    ``table`` holds each layer's (N, ``widths[l]``) array's address; all but
    the last layer's live in ``hidden``, a buffer from this thread's pool that
    goes back to the pool once this object is gone (after the step's autograd
    graph is freed), so the next steps reuse warm memory instead of a fresh
    1-2 MB block each (about 10% of a KDDCUP step, ``NOTES-speed.md``, seventh
    pass).  ``recon`` is a fresh array, since ``x'`` is handed to the caller.
    """

    __slots__ = ("hidden", "recon", "table", "__weakref__")

    def __init__(self, hidden: torch.Tensor, recon: torch.Tensor, table: torch.Tensor) -> None:
        self.hidden, self.recon, self.table = hidden, recon, table


_POOL = threading.local()
_POOLED = 4  # buffers kept per thread: a step's and the one before it are alive together


def _hidden_buffer(size: int) -> tuple[torch.Tensor, Optional[list]]:
    """A float32 (size,) buffer no live :class:`_Activations` holds, and its pool entry (None: not pooled).

    When none of this size is free, the free buffers of other sizes (the shorter last batch of an
    epoch, another model) are dropped, so the pool never keeps buffers of sizes no longer asked for.
    """
    pool = _POOL.__dict__.setdefault("entries", [])
    for entry in pool:
        if entry[1]() is None and entry[0].numel() == size:  # its activations are gone: free
            return entry[0], entry
    # none free of this size: forget the free ones of other sizes (by identity: entries hold tensors)
    pool[:] = [entry for entry in pool if entry[1]() is not None]
    buf = torch.empty(size, dtype=torch.float32)
    if len(pool) >= _POOLED:
        return buf, None
    entry = [buf, None]
    pool.append(entry)
    return buf, entry


# ------------------------------------------------------------------- net
class TrainNet:
    """An encoder and decoder (checked chains, encoder first) as the training kernels take them.

    Holds the layers (and so the tensors behind :attr:`spec`'s addresses), the
    parameters in module order, each layer's output width padded to a
    multiple of 8 (the width of its activation array) and the feature mode.
    Made per step, from the parameters as they are then.
    """

    __slots__ = ("layers", "spec", "n_enc", "mode", "params", "widths", "features", "latent")

    def __init__(self, layers: list, n_enc: int, mode: int) -> None:
        self.layers, self.n_enc, self.mode = layers, n_enc, mode
        self.spec = torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), act]
                                  for w, b, act in layers], dtype=torch.int64)  # (layers, 5)
        self.params = [t for w, b, _ in layers for t in ((w,) if b is None else (w, b))]
        self.widths = [(w.shape[0] + 7) // 8 * 8 for w, _, _ in layers]  # each output padded to 8
        self.features = layers[0][0].shape[1]
        self.latent = layers[n_enc - 1][0].shape[0]

    def loss(self, xb: torch.Tensor, head: Head, w_energy: float, w_cov_diag: float,
             cov_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, x_recon)`` of contiguous float32 CPU rows ``xb`` (N, F)."""
        out: list = []
        params = [*self.params, *head.params()]
        loss = _AEGMMLoss.apply(xb, (self, head, w_energy, w_cov_diag, cov_eps, out), *params)
        return loss, out[0]

    def forward(self, x: torch.Tensor, threads: int) -> tuple:
        """``(acts, z (N, L + 2), norms (N, 5) float64, x_recon (N, F))``: every layer's output, for :meth:`backward`."""
        lib, n = _lib.lib, x.shape[0]
        hidden, entry = _hidden_buffer(n * sum(self.widths[:-1]))
        recon = torch.empty((n, self.widths[-1]), dtype=torch.float32)
        offsets = [0]
        for w in self.widths[:-2]:
            offsets.append(offsets[-1] + n * w)
        base = hidden.data_ptr()
        table = torch.tensor([base + 4 * o for o in offsets] + [recon.data_ptr()], dtype=torch.int64)
        acts = _Activations(hidden, recon, table)
        if entry is not None:
            entry[1] = weakref.ref(acts)
        z = torch.empty((n, self.latent + 2), dtype=torch.float32)
        norms = torch.empty((n, 5), dtype=torch.float64)  # norms, error, their product, cosine
        lib.train_forward(x.data_ptr(), n, self.features, self.spec.data_ptr(), len(self.layers), self.n_enc,
                          self.mode, RECON_EPS, LOG_MSE_EPS, table.data_ptr(), z.data_ptr(), norms.data_ptr(),
                          lib.TILE, threads)
        return acts, z, norms, recon[:, :self.features]  # (N, F)

    def backward(self, x: torch.Tensor, acts: _Activations, norms: torch.Tensor, grad_z: torch.Tensor,
                 sq_coef: float, threads: int) -> list[torch.Tensor]:
        """Parameter gradients (in :attr:`params` order) for the float32 dJ/dz ``grad_z`` (L + 2, N), plus
        ``sq_coef (x' - x)`` with respect to ``x'``."""
        lib = _lib.lib
        grad_z = grad_z.contiguous()
        grads = [torch.empty_like(p) for p in self.params]
        addresses, it = [], iter(grads)
        for _, b, _ in self.layers:
            addresses += [next(it).data_ptr(), next(it).data_ptr() if b is not None else 0]
        table = torch.tensor(addresses, dtype=torch.int64)
        lib.train_backward(x.data_ptr(), x.shape[0], self.features, self.spec.data_ptr(), len(self.layers),
                           self.n_enc, self.mode, RECON_EPS, LOG_MSE_EPS, acts.table.data_ptr(), norms.data_ptr(),
                           grad_z.data_ptr(), sq_coef, table.data_ptr(), lib.TILE, threads)
        return grads


# ------------------------------------------------------------------ head
def _uniforms(n: int, h: int, prob: Optional[float]) -> tuple[Optional[torch.Tensor], float]:
    """The dropout draws of an (n, h) activation and the keep probability.

    Uniforms from torch's generator (so ``torch.manual_seed`` makes them
    reproducible); the kernel keeps an element where ``floor(u + keep)`` is 1,
    with probability ``keep``.  ``torch.rand`` is about three times faster than
    ``bernoulli_`` on CPU.
    """
    if not prob:
        return None, 1.0
    if prob >= 1.0:  # everything dropped
        return torch.zeros((n, h)), 0.0
    return torch.rand((n, h)), 1.0 - prob


def _head_forward(x: torch.Tensor, head: Head) -> tuple:
    """``(y (k, N), t (h, N), u, keep)``: softmax outputs, tanh activations, dropout uniforms (or None), keep."""
    n, din = x.shape
    w1, b1, w2, b2, prob = head
    h, k = w1.shape[0], w2.shape[0]
    u, keep = _uniforms(n, h, prob)
    t, y = x.new_empty((h, n)), x.new_empty((k, n))
    _lib.lib.head_forward(
        x.data_ptr(), *x.stride(), n, din, w1.data_ptr(), 0 if b1 is None else b1.data_ptr(), h, w2.data_ptr(),
        0 if b2 is None else b2.data_ptr(), k, 0 if u is None else u.data_ptr(),
        *(u.stride() if u is not None else (0, 0)), keep, t.data_ptr(), y.data_ptr())
    return y, t, u, keep


def _head_backward(x, head: Head, u, keep: float, t, y, g) -> tuple:
    """``(gx (din, N), [gw1, gb1, gw2, gb2])`` of :func:`_head_forward` for ``g`` (N, k), any strides
    (the biases' entries only where the layers have one)."""
    n, din = x.shape
    w1, b1, w2, b2, _ = head
    h, k = w1.shape[0], w2.shape[0]
    g = g if g.dtype == torch.float32 else g.float()
    gx = x.new_empty((din, n))
    gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
    gb1 = w1.new_empty(h) if b1 is not None else None
    gb2 = w2.new_empty(k) if b2 is not None else None
    _lib.lib.head_backward(
        x.data_ptr(), *x.stride(), n, din, w1.data_ptr(), h, w2.data_ptr(), k, 0 if u is None else u.data_ptr(),
        *(u.stride() if u is not None else (0, 0)), keep, t.data_ptr(), y.data_ptr(), g.data_ptr(), *g.stride(),
        gx.data_ptr(), gw1.data_ptr(), 0 if gb1 is None else gb1.data_ptr(), gw2.data_ptr(),
        0 if gb2 is None else gb2.data_ptr())
    return gx, [gr for gr in (gw1, gb1, gw2, gb2) if gr is not None]


# ------------------------------------------------------------- objective
def objective(z: torch.Tensor, gamma: torch.Tensor, w_energy: float, w_cov_diag: float,
              cov_eps: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Value, dJ/dz (D, N) and dJ/dgamma (K, N) of :func:`dagmm.models.losses.mixture_objective` by the C kernel.

    For float32/float64 CPU ``z`` (N, D) and ``gamma`` (N, K) of any strides.
    Raises the same :class:`dagmm.models.gmm.CholeskyError` as the torch code.
    """
    n, d = z.shape
    k = gamma.shape[1]
    grad_z = torch.empty((d, n), dtype=z.dtype)
    grad_gamma = torch.empty((k, n), dtype=gamma.dtype)
    value, jitter, bad, finite = _lib.lib.mixture_objective(
        z.data_ptr(), *z.stride(), z.dtype == torch.float64, gamma.data_ptr(), *gamma.stride(),
        gamma.dtype == torch.float64, grad_z.data_ptr(), grad_gamma.data_ptr(), n, d, k, w_energy, w_cov_diag,
        cov_eps, _JITTER_TRIES)
    if bad:
        raise _cholesky_failure(bad, jitter, finite)
    return value, grad_z, grad_gamma


# ------------------------------------------------------------------ node
class _AEGMMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xb, config, *params):
        net, head, w_energy, w_cov_diag, cov_eps, out = config
        threads = _threads()
        acts, z, norms, x_recon = net.forward(xb, threads)
        y, t, u, keep = _head_forward(z, head)  # y (K, N)
        value, grad_z, grad_gamma = objective(z, y.t(), w_energy, w_cov_diag, cov_eps)  # (D, N), (K, N)
        sq_err = norms[:, 2].square().sum().item()  # sum_i ||x_i - x'_i||^2 in float64
        out.append(x_recon.detach())
        ctx.net, ctx.head, ctx.acts, ctx.keep, ctx.threads = net, head, acts, keep, threads
        ctx.n_params = len(params)
        ctx.save_for_backward(xb, norms, z, y, t, grad_z, grad_gamma, *params, *([u] if u is not None else []))
        return torch.tensor(sq_err / xb.shape[0] + value, dtype=xb.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xb, norms, z, y, t, grad_z, grad_gamma, *rest = ctx.saved_tensors
        u = rest[ctx.n_params] if len(rest) > ctx.n_params else None
        g = float(grad)
        if g != 1.0:  # loss.backward() passes exactly 1
            grad_z, grad_gamma = grad_z * g, grad_gamma * g
        # estimation network: its input gradient joins the objective's direct one, both (D, N)
        gz_head, head_grads = _head_backward(z, ctx.head, u, ctx.keep, t, y, grad_gamma.t())
        g_z = grad_z + gz_head  # (D, N); not in place: a second backward (retain_graph) reads grad_z again
        grads = ctx.net.backward(xb, ctx.acts, norms, g_z, 2.0 * g / xb.shape[0], ctx.threads)
        return (None, None, *grads, *head_grads)

"""``dagmm fit --distributed``: OutlierAEGMM trained with ``torch.distributed`` (DDP) under ``torchrun``.

Each rank holds its shard of the rows.  Gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`; with ``global_mixture`` the
batch mixture statistics of the loss (Σγ, Σγ(z-s), Σγ(z-s)(z-s)ᵀ about the
global batch mean ``s``) are summed over ranks with a differentiable
all-reduce, so the loss and its gradient are those of single-process training
on the concatenated global batch.  The final scoring mixture is the sum of
every rank's statistics and the threshold the exact percentile over all ranks'
scores; rank 0 saves.

The step is the plain torch path (``model(x)`` and autograd), not the C
training kernels of :mod:`dagmm.accel`: DDP needs the gradients in the
parameters' ``.grad`` through its hooks, which the fused step bypasses.

Batches (so that a single process can reproduce them): rank ``r`` of ``W``
holds the rows ``numpy.array_split(range(N), W)[r]``; in epoch ``e`` it draws
``numpy.random.default_rng([seed, e, r]).permutation(n_r)`` and step ``t``
uses its rows ``perm[t*b:(t+1)*b]``, ``b = batch_size // W``; every rank takes
``min_r n_r // b`` steps.  The global batch of a step is the concatenation of
the ranks' batches in rank order.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["init_process_group", "shard_rows", "train_ddp", "fit_table"]


def _dist():
    import torch.distributed as dist

    return dist


def init_process_group() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on GPU); ``(rank, world size)``."""
    dist = _dist()
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"--distributed runs under torchrun (environment {', '.join(missing)} not set): "
                             "torchrun --nproc-per-node 2 -m dagmm fit DATA --distributed --out MODEL")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard_rows(n_rows: int, rank: int, world: int) -> np.ndarray:
    """The row indices of ``rank``: contiguous, as ``numpy.array_split`` divides ``range(n_rows)``."""
    return np.array_split(np.arange(n_rows), world)[rank]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the ranks' gradients (d(sum_r x_r)/dx_q = 1 for every q)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


def _sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    t = t.clone()
    _dist().all_reduce(t, group=group)
    return t


def _global_mixture_loss(xb, x_recon, z, gamma, n_global: int, world: int, w_energy: float, w_cov_diag: float,
                         cov_eps: float, group: Any) -> torch.Tensor:
    """This rank's share of the DAGMM loss of the global batch (DDP averages it back to the loss's gradient).

    ``W (Σ_local ‖x-x'‖² + λ1 Σ_local E) / N + λ2 P``: summed over ranks and
    divided by ``W`` it is the loss of the global batch; the mixture's
    dependence on every rank flows back through the differentiable all-reduce
    of its statistics (its backward sums the ranks' gradients).
    """
    from ..models.gmm import (GMMStats, cholesky_with_jitter, cov_diag_penalty, gmm_params_from_stats, gmm_stats,
                              precision_cholesky, sample_energy)

    shift = _sum(z.detach().double().sum(0), group) / n_global  # (D,) global batch mean: a constant, as in fit
    local = gmm_stats(z, gamma, shift)
    total = GMMStats(torch.tensor(float(n_global), dtype=torch.float64),
                     *(_AllReduceSum.apply(t, group) for t in (local.sum_gamma, local.sum_gamma_z, local.sum_gamma_zz)),
                     shift)
    phi, mu, cov = gmm_params_from_stats(total)
    chol, eps = cholesky_with_jitter(cov, cov_eps)
    energy = sample_energy(z, phi, mu, precision_cholesky(chol)).sum()
    recon = (x_recon - xb).square().sum()
    share = (recon.double() + w_energy * energy) * (world / n_global)
    return (share + w_cov_diag * cov_diag_penalty(cov, eps)).to(xb.dtype)


def train_ddp(model: torch.nn.Module, X: np.ndarray, *, epochs: int, batch_size: int, lr: float, seed: int,
              w_energy: float, w_cov_diag: float, cov_eps: float = 1e-6, global_mixture: bool = True,
              verbose: bool = False) -> list[dict]:
    """Train an ``AEGMMNet`` on this rank's rows ``X`` (network units) with DDP; the batches are in the module doc.

    Parameters
    ----------
    model : AEGMMNet
        ``forward(x) -> (x_recon, z, gamma)``; rank 0's initial weights are broadcast.
    X : (n_r, F) float32
        This rank's shard, already scaled as the network sees it.
    batch_size : int
        Rows of the global batch (``batch_size // world`` per rank).
    global_mixture : bool
        Sum the loss's mixture statistics over ranks (the global batch's loss);
        otherwise each rank's loss uses its own batch's mixture (DDP's usual mean of local losses).

    Returns
    -------
    list of dict
        ``{'epoch', 'loss'}`` per epoch; the loss is the mean over steps of the global batch's loss.
    """
    from torch.nn.parallel import DistributedDataParallel

    from ..models.losses import loss_aegmm
    from ..training.loop import TrainingDivergedError, default_adam

    dist = _dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    b = batch_size // world
    if b < 2:
        raise ValueError(f"batch_size {batch_size} over {world} processes leaves {b} row(s) per rank; use at "
                         f"least {2 * world}.")
    counts = torch.tensor([len(X) // b], dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.MIN)
    steps = int(counts)
    if steps < 1:
        raise ValueError(f"A rank holds fewer rows than its batch of {b}; use a smaller --batch-size.")
    group = dist.new_group(backend="gloo") if global_mixture else None  # its own channel: never interleaves with DDP's
    ddp = DistributedDataParallel(model)
    opt = default_adam(ddp.parameters(), lr)
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    history = []
    model.train()
    for epoch in range(epochs):
        perm = torch.from_numpy(np.random.default_rng([seed, epoch, rank]).permutation(len(X)))
        total = torch.zeros((), dtype=torch.float64)
        for step in range(steps):
            xb = X_t.index_select(0, perm[step * b:(step + 1) * b])
            x_recon, z, gamma = ddp(xb)
            if global_mixture:
                loss = _global_mixture_loss(xb, x_recon, z, gamma, b * world, world, w_energy, w_cov_diag, cov_eps,
                                            group)
            else:
                loss = loss_aegmm(xb, x_recon, z, gamma, w_energy, w_cov_diag, cov_eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double()
        mean = float(_sum(total)) / (world * steps)  # global_mixture: sum over ranks / W is the global loss
        if not math.isfinite(mean):
            raise TrainingDivergedError(f"Training diverged: the loss became {mean} in epoch {epoch + 1}. Try a lower "
                                        "--lr or a larger --batch-size.")
        history.append({"epoch": epoch + 1, "loss": mean})
        if verbose and rank == 0:
            print(f"epoch {epoch + 1}/{epochs}: loss {mean:.6g}", flush=True)
    model.eval()
    if group is not None:
        dist.destroy_process_group(group)
    return history


# ------------------------------------------------------------------ dagmm fit --distributed
def _allreduce(a: np.ndarray, op: str) -> np.ndarray:
    """``a`` reduced elementwise over the ranks (``op`` ``"sum"`` or ``"max"``), for ``fit_scaling(reduce=...)``."""
    dist = _dist()
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.numpy()


def _global_preprocessor(pre: Any, df: Any) -> Any:
    """``pre`` fitted on this rank's rows, made global: numeric scaling and categories over all ranks.

    Equals :meth:`TabularPreprocessor.fit` on the concatenated rows: the numeric
    columns are scaled by :func:`dagmm.training.scaling.fit_scaling` with its
    sums and maxima all-reduced (up to float64 rounding of sums in another order).
    """
    from ..tables.preprocess import TabularPreprocessor
    from ..training.scaling import fit_scaling

    dist = _dist()
    local = pre.to_dict()
    names = list(pre.numeric_)
    numeric = {}
    if names:
        values = np.column_stack([df[name].to_numpy(dtype=np.float64) for name in names])  # (N, C), as fit reads them
        mean, scale = fit_scaling(values, columns=names, reduce=_allreduce)
        numeric = {name: [float(m), float(sd)] for name, m, sd in zip(names, mean, scale)}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local["categorical"])
    categorical = {name: sorted(set().union(*(g[name] for g in gathered))) for name in pre.categorical_}
    return TabularPreprocessor.from_dict({**local, "numeric": numeric, "categorical": categorical})


def _global_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature float64 mean and scale over all ranks (``fit_scaling`` on the whole), and the global row count."""
    from ..training.scaling import fit_scaling

    n = int(_sum(torch.tensor([len(X)], dtype=torch.int64)))
    mean, scale = fit_scaling(X, reduce=_allreduce)
    return mean, scale, n


def _read_shard(path: str, rank: int, world: int) -> Any:
    """This rank's rows: files[rank::world] of a directory or glob with enough files, else a row slice of one table."""
    import pandas as pd

    from ..tables.tableio import read_table

    if os.path.isdir(path) or any(ch in path for ch in "*?["):
        from .files import parquet_files

        files = parquet_files(path)
        if len(files) < world:
            raise ValueError(f"{path} has {len(files)} file(s) for {world} processes; give at least one per rank.")
        return pd.concat([read_table(f) for f in files[rank::world]], ignore_index=True)
    df = read_table(path)
    return df.iloc[shard_rows(len(df), rank, world)].reset_index(drop=True)


def fit_table(path: str, *, columns: Optional[Sequence[str]] = None, exclude: Sequence[str] = (),
              label_column: Optional[str] = None, n_gmm: Optional[int] = None, epochs: Optional[int] = None,
              batch_size: Optional[int] = None, lr: Optional[float] = None, seed: int = 0,
              global_mixture: bool = False, threshold_perc: float = 95.0, verbose: bool = True) -> tuple:
    """Train an ``OutlierAEGMM`` on a table with every ``torchrun`` process; ``(detector, preprocessor, rows, rank, world)``.

    The automatic architecture and loss weights come from the global row count
    (:func:`dagmm.training.auto.aegmm_config`); ``epochs`` default to 20 (no
    early stopping across ranks), ``batch_size`` to the automatic one, ``lr``
    to 1e-3.  Every rank returns the same fitted detector.
    """
    import dagmm
    from ..models.features import log_mse_cosine
    from ..models.gmm import GMMStats, gmm_params_from_stats
    from ..models.nets import build_aegmm_nets
    from ..tables.preprocess import TabularPreprocessor
    from ..training.auto import AUTO_LR, aegmm_config
    from ..training.scaling import apply_scaling

    rank, world = init_process_group()
    df = _read_shard(path, rank, world)
    if len(df) == 0:
        raise ValueError(f"rank {rank} got no rows of {path}.")
    pre = _global_preprocessor(TabularPreprocessor(columns, exclude, label_column).fit(df), df)
    X = pre.transform(df)
    mean, scale, n = _global_scaling(X)
    Xs = apply_scaling(X, mean, scale)  # what fit() trains on
    config = aegmm_config(n, X.shape[1:])
    if n_gmm is not None:
        config["n_gmm"] = int(n_gmm)
    epochs = 20 if epochs is None else int(epochs)
    batch_size = config["batch_size"] if batch_size is None else int(batch_size)
    lr = AUTO_LR if lr is None else float(lr)
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    enc, dec, dens = build_aegmm_nets(config, config["n_gmm"], 2)
    torch.manual_seed(seed * 1009 + rank + 1)  # then each rank its own dropout masks, not copies of rank 0's
    od = dagmm.OutlierAEGMM(encoder_net=enc, decoder_net=dec, gmm_density_net=dens, n_gmm=config["n_gmm"],
                            recon_features=log_mse_cosine, standardize=True, data_type="tabular")
    history = train_ddp(od.aegmm, Xs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        w_energy=config["w_energy"], w_cov_diag=config["w_cov_diag"], cov_eps=od.cov_eps,
                        global_mixture=global_mixture, verbose=verbose)
    # what fit() would have set; the mixture and the threshold follow from all ranks' rows
    od.scaler_mean_, od.scaler_scale_, od.feature_shape_ = mean, scale, tuple(X.shape[1:])
    od.history_ = history
    od.auto_config_ = {**config, "n_rows": n, "standardize": True, "epochs": epochs, "epochs_run": len(history),
                       "batch_size": batch_size, "early_stopping": None, "lr": lr, "recon_features": "log_mse_cosine",
                       "distributed": {"world_size": world, "global_mixture": bool(global_mixture)}}
    od._fitted = True
    shift = od.mixture_stats(X[:16384]).shift if rank == 0 else torch.zeros(config["encoder"][-1] + 2, dtype=torch.float64)
    _dist().broadcast(shift, 0)
    local = od.mixture_stats(X, shift)
    od.set_mixture(gmm_params_from_stats(GMMStats(_sum(local.n), _sum(local.sum_gamma), _sum(local.sum_gamma_z),
                                                  _sum(local.sum_gamma_zz), shift)))
    scores = od.score(X)
    gathered: list = [None] * world
    _dist().all_gather_object(gathered, scores)
    od.threshold = float(np.percentile(np.concatenate(gathered), threshold_perc))
    _dist().barrier()
    return od, pre, n, rank, world

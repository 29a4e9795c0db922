"""The one training loop shared by every detector.

Data live in a single in-memory tensor; each epoch draws a seeded permutation
and slices mini-batches from it, so there is no per-row ``DataLoader``
overhead and no host/device round trip inside the step.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from .gmm import CholeskyError

__all__ = ["TrainingDivergedError", "default_adam", "resolve_optimizer", "train"]

OptimizerArg = Union[None, type, Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]]
BatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last finite weights were restored."""


def default_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where this torch build has one for the parameters' device.

    The fused update is the same Adam step in one kernel per parameter group
    instead of about ten small ops per parameter tensor, which is most of
    the optimizer's cost for DAGMM's small layers.  Older torch versions (and
    devices without a fused kernel) get the multi-tensor ``foreach`` version,
    or the plain loop.
    """
    params = list(params)
    for kwargs in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.Adam(params, lr=lr, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise AssertionError("unreachable: plain Adam always builds")  # pragma: no cover


def resolve_optimizer(optimizer: OptimizerArg, params: Iterable[nn.Parameter], default_lr: float) -> torch.optim.Optimizer:
    """Build an optimizer from the forms that ``fit`` accepts.

    Parameters
    ----------
    optimizer : None, ``torch.optim.Optimizer`` subclass, or callable
        ``None`` gives Adam with ``default_lr`` (fused where available,
        see :func:`default_adam`); a subclass is built on
        ``params`` with ``lr=default_lr``; a callable ``params -> Optimizer``
        is called with ``params``.  An already built optimizer instance is
        refused, since it would not hold this model's parameters.
    """
    params = list(params)
    if optimizer is None:
        return default_adam(params, default_lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer: pass an Optimizer class (e.g. torch.optim.Adam) or a callable "
            "`params -> Optimizer` (e.g. lambda p: torch.optim.Adam(p, lr=1e-3)), not an "
            "optimizer instance: the detector builds the network, so an instance cannot hold its parameters."
        )
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=default_lr)
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: the callable must return a torch.optim.Optimizer, got {type(opt).__name__}."
            )
        return opt
    raise TypeError(
        f"optimizer: expected None, a torch.optim.Optimizer subclass or a callable, got {type(optimizer).__name__}."
    )


def _call_callbacks(callbacks: Optional[Iterable[Any]], epoch: int, logs: dict) -> bool:
    stop = False
    for cb in callbacks or ():
        hook = getattr(cb, "on_epoch_end", None)
        result = hook(epoch, logs) if hook is not None else cb(epoch, logs)
        stop = stop or bool(result)
    return stop


def train(
    model: nn.Module,
    X: torch.Tensor,
    batch_loss: BatchLoss,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    *,
    generator: Optional[torch.Generator] = None,
    verbose: bool = True,
    log_metric: Optional[tuple[str, Callable[[torch.Tensor, torch.Tensor], Any]]] = None,
    callbacks: Optional[Iterable[Any]] = None,
    desc: str = "fit",
) -> list[dict]:
    """Mini-batch training of ``model`` on the rows of ``X``.

    Parameters
    ----------
    model : nn.Module
        Put in train mode for the duration.
    X : (N, ...) tensor
        Training data, already on the model's device.
    batch_loss : callable
        ``batch_loss(xb) -> (loss, x_recon)``.
    optimizer : torch.optim.Optimizer
    epochs, batch_size : int
    generator : torch.Generator, optional
        Source of the per-epoch permutations (on ``X``'s device).
    verbose : bool, default True
        Show a progress bar with the running loss (and metric).
    log_metric : (name, fn), optional
        ``fn(xb, x_recon)`` averaged over each epoch and shown and logged as ``name``.
    callbacks : iterable, optional
        Objects with ``on_epoch_end(epoch, logs)`` or callables ``(epoch, logs)``;
        a truthy return value stops training after that epoch.

    Returns
    -------
    list of dict
        One entry per epoch: ``{'epoch', 'loss'[, name]}``.

    Raises
    ------
    TrainingDivergedError
        If the loss or the GMM covariances became non-finite; the weights of
        the end of the last finite epoch are restored first.
    """
    from tqdm.auto import tqdm

    n = X.shape[0]
    steps = math.ceil(n / batch_size)
    history: list[dict] = []
    model.train()
    bar = tqdm(total=epochs * steps, desc=desc, disable=not verbose, leave=True, unit="step")
    try:
        for epoch in range(epochs):
            good_state = copy.deepcopy(model.state_dict())
            good_opt = copy.deepcopy(optimizer.state_dict())
            perm = torch.randperm(n, device=X.device, generator=generator)
            # Running sums stay on the device: reading them (loss.item(),
            # float(...)) would wait for the device every step.
            loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
            metric_sum = torch.zeros((), dtype=torch.float64, device=X.device)
            try:
                for step in range(steps):
                    xb = X.index_select(0, perm[step * batch_size:(step + 1) * batch_size])
                    rows = xb.shape[0]
                    loss, x_recon = batch_loss(xb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum.add_(loss.detach(), alpha=rows)
                    if log_metric is not None:
                        with torch.no_grad():
                            metric_sum.add_(torch.as_tensor(log_metric[1](xb, x_recon.detach())).to(metric_sum),
                                            alpha=rows)
                    if verbose:
                        bar.update(1)
                        if step == steps - 1 or step % 20 == 0:
                            post = {"epoch": epoch + 1, "loss": f"{loss.item():.4g}"}
                            if log_metric is not None:
                                post[log_metric[0]] = f"{metric_sum.item() / min(n, (step + 1) * batch_size):.4g}"
                            bar.set_postfix(post, refresh=False)
            except CholeskyError as err:
                model.load_state_dict(good_state)
                optimizer.load_state_dict(good_opt)
                raise TrainingDivergedError(
                    f"Training diverged in epoch {epoch + 1}: {err} The weights from the end of "
                    f"epoch {epoch} were restored."
                ) from err
            epoch_loss = float(loss_sum) / n
            if not math.isfinite(epoch_loss):
                model.load_state_dict(good_state)
                optimizer.load_state_dict(good_opt)
                raise TrainingDivergedError(
                    f"Training diverged: the loss became {epoch_loss} in epoch {epoch + 1}. The "
                    f"weights from the end of epoch {epoch} were restored. Try a lower learning rate, "
                    "standardising the input features, a larger batch_size or a larger cov_eps."
                )
            logs = {"epoch": epoch + 1, "loss": epoch_loss}
            if log_metric is not None:
                logs[log_metric[0]] = float(metric_sum) / n
            history.append(logs)
            if _call_callbacks(callbacks, epoch, logs):
                break
    finally:
        bar.close()
        model.eval()
    return history

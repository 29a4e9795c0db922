"""The one trainer shared by every detector: the loop, the optimiser, early stopping, the schedule's run.

Data live in a single in-memory tensor; each epoch draws a seeded permutation
and slices mini-batches from it, so there is no per-row ``DataLoader``
overhead and no host/device round trip inside the step.  :func:`train_scheduled`
runs :func:`train` as a schedule of :mod:`dagmm.training.auto` says, with
:class:`EarlyStopping` on a held-out slice.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.optim import optimizer as _opt

from .. import accel
from ..models.gmm import CholeskyError

__all__ = ["EarlyStopping", "LeanAdam", "TrainingDivergedError", "default_adam", "resolve_optimizer", "split_holdout",
           "train", "train_scheduled"]

OptimizerArg = Union[None, type, Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]]
BatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last finite weights were restored."""


class LeanAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with its per-step Python bookkeeping done once.

    For DAGMM's twenty small parameter tensors, ``Optimizer.step`` spent more
    time in Python (hooks, per-parameter state lookups, grouping by device)
    than the fused kernel spent updating them.  After a first ordinary step
    has created the state, each step here is the same two calls the parent
    makes, the step-counter increment and ``torch._fused_adam_``, on lists
    kept from that step: the same kernel with the same arguments, so the
    same numbers (``tests/test_training.py`` compares them bit for bit).
    Where the C kernels are on (:mod:`dagmm.accel`) and every parameter,
    gradient and state tensor is a contiguous float32 CPU tensor, the step is
    instead one C call for all parameters and their step counters
    (:func:`dagmm.accel.adam_plan`, ``dagmm/accel/_native_adam.c``): the same update to
    float32 rounding, without the fused kernel's per-tensor dispatch, which
    cost several times the arithmetic here (``benchmarks/results/NOTES-speed.md``,
    seventh pass).
    Anything the cached lists could miss sends the step back to the parent:
    a closure, a missing gradient, several parameter groups, AMSGrad, step
    hooks, or a ``load_state_dict`` / ``add_param_group`` since the cache was made.
    """

    _lean: Optional[tuple] = None

    def step(self, closure=None):  # type: ignore[override]
        lean = self._lean
        if lean is None or closure is not None or self._hooked():
            loss = super().step(closure)
            self._lean = self._cache()
            return loss
        params, exp_avgs, exp_avg_sqs, steps, plan = lean
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            self._lean = None
            return self.step()  # the parent steps and makes a new cache
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        if plan is not None:
            # The C step writes to the addresses it was given: a parameter given new storage (p.data = ...)
            # sends the step back to the parent, which makes a new cache.
            if plan.moved():
                self._lean = None
                return self.step()  # the parent steps and makes a new cache
            if plan.step(grads, group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["maximize"]):
                return None
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=group["maximize"], grad_scale=None, found_inf=None)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none or self._lean is None or self._hooked():
            return super().zero_grad(set_to_none)
        for p in self._lean[0]:
            p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        self._lean = None
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._lean = None
        super().add_param_group(param_group)

    def _hooked(self) -> bool:
        return bool(self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _opt._global_optimizer_pre_hooks or _opt._global_optimizer_post_hooks)

    def _cache(self) -> Optional[tuple]:
        if len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        if not group.get("fused") or group["amsgrad"] or group.get("decoupled_weight_decay") \
                or group.get("differentiable") or group.get("capturable"):
            return None
        params = group["params"]
        if not params or any(p not in self.state or not self.state[p] for p in params):
            return None
        # one device and dtype: the parent groups tensors by both before calling the kernel
        if len({(p.device, p.dtype) for p in params}) != 1:
            return None
        states = [self.state[p] for p in params]
        exp_avgs, exp_avg_sqs, steps = ([s[k] for s in states] for k in ("exp_avg", "exp_avg_sq", "step"))
        return list(params), exp_avgs, exp_avg_sqs, steps, accel.adam_plan(params, exp_avgs, exp_avg_sqs, steps)


def default_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where this torch build has one for the parameters' device.

    The fused update is the same Adam step in one kernel per parameter group
    instead of about ten small ops per parameter tensor, which is most of
    the optimizer's cost for DAGMM's small layers; :class:`LeanAdam` also
    skips the Python bookkeeping around it.  Older torch versions (and
    devices without a fused kernel) get the multi-tensor ``foreach`` version,
    or the plain loop.
    """
    params = list(params)
    for cls, kwargs in ((LeanAdam, {"fused": True}), (torch.optim.Adam, {"foreach": True}), (torch.optim.Adam, {})):
        try:
            return cls(params, lr=lr, **kwargs)
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


def split_holdout(n_rows: int, val_rows: int, seed: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint (fit, held-out) row indices; seeded when ``seed`` is given."""
    rng = np.random.default_rng(None if seed is None else int(seed) + 2)
    perm = rng.permutation(n_rows)
    return np.sort(perm[val_rows:]), np.sort(perm[:val_rows])


class EarlyStopping:
    """Epoch-end callback for :func:`train`: held-out loss, patience in steps, best weights.

    Every ``eval_every`` optimizer steps (checked at epoch ends) it computes
    ``val_loss()`` with the model in eval mode, keeps a copy of the weights
    with the lowest value, and stops training when ``patience_steps`` steps
    have passed without improvement or ``max_steps`` were taken.  Call
    :meth:`restore` afterwards to load the best weights.
    """

    def __init__(self, model: nn.Module, val_loss: Callable[[], float], steps_per_epoch: int,
                 max_steps: int, patience_steps: int, eval_every: int) -> None:
        self.model = model
        self.val_loss = val_loss
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_steps = int(max_steps)
        self.patience_steps = int(patience_steps)
        self.eval_every = int(eval_every)
        self.steps = 0
        self.last_eval = 0
        self.best = math.inf
        self.best_step = 0
        self.best_state: Optional[dict] = None
        self.evaluations: list[tuple[int, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        self.steps += self.steps_per_epoch
        done = self.steps >= self.max_steps
        if self.steps - self.last_eval >= self.eval_every or done:
            self.last_eval = self.steps
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    value = float(self.val_loss())
            finally:
                self.model.train(was_training)
            logs["val_loss"] = value
            self.evaluations.append((self.steps, value))
            if math.isfinite(value) and value < self.best:
                self.best, self.best_step = value, self.steps
                self.best_state = copy.deepcopy(self.model.state_dict())
            elif self.steps - self.best_step >= self.patience_steps:
                return True
        return done

    def restore(self) -> None:
        """Load the weights with the lowest held-out loss (no-op if none was finite)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def summary(self) -> dict:
        return {"steps": self.steps, "best_step": self.best_step,
                "best_val_loss": self.best if math.isfinite(self.best) else None}


def train_scheduled(model: nn.Module, X: np.ndarray, batch_loss: Callable, optimizer: torch.optim.Optimizer,
                    plan: dict, *, seed: Optional[int], generator: Optional[torch.Generator],
                    device: torch.device, callbacks: Optional[Sequence[Any]] = None,
                    **train_kwargs: Any) -> tuple[list[dict], Optional[dict]]:
    """Run :func:`train` on X as ``plan`` (from :func:`dagmm.training.auto.resolve_schedule`) says.

    With early stopping, ``plan['val_rows']`` random rows are held out, the
    held-out loss ``batch_loss(X_val)[0]`` is tracked by :class:`EarlyStopping`
    (before the user's callbacks, so their ``logs`` carry ``val_loss``) and
    the best weights are restored.  Returns the history and the
    early-stopping summary (``None`` without early stopping).
    """
    stopper = None
    cbs = list(callbacks or ())
    if plan["early_stopping"]:
        fit_idx, val_idx = split_holdout(len(X), plan["val_rows"], seed)
        X_val = torch.from_numpy(X[val_idx]).to(device)
        X = X[fit_idx]

        def val_loss() -> float:
            try:
                return float(batch_loss(X_val)[0])
            except CholeskyError:
                return math.inf

        stopper = EarlyStopping(model, val_loss, plan["steps_per_epoch"], plan["max_steps"],
                                plan["patience_steps"], plan["eval_every"])
        cbs.insert(0, stopper)
    X_t = torch.from_numpy(np.ascontiguousarray(X)).to(device)
    history = train(model, X_t, batch_loss, optimizer, plan["epochs"], plan["batch_size"],
                    generator=generator, callbacks=cbs, **train_kwargs)
    if stopper is None:
        return history, None
    stopper.restore()
    return history, stopper.summary()

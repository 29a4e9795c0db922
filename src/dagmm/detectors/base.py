"""What every detector shares: device, seeding, batching, thresholds and the output dict."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch

from ..accel import for_each_batch, workers_for
from .._validation import align_columns, check_array, check_positive_int, column_names
from ..training.scaling import apply_scaling, fit_scaling
from ..models.covariance import CentredMoments, floor_diagonal, ledoit_wolf, whitening_factor
from .._version import __version__

__all__ = ["BaseDetector", "NotFittedError", "resolve_device", "seeded"]

#: Rows per forward pass when scoring; bounds memory independently of N.
DEFAULT_SCORE_BATCH = 16384


class NotFittedError(RuntimeError):
    """A method that needs a fitted detector was called before ``fit``."""


def resolve_device(device: Union[None, str, torch.device]) -> torch.device:
    """``None`` means CPU; a CUDA device must be available."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a valid torch device ({err}). Use 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available here; use device='cpu'.")
    return dev


@contextlib.contextmanager
def seeded(seed: Optional[int], device: torch.device) -> Iterator[Optional[torch.Generator]]:
    """Seed torch inside a forked RNG so the caller's global state is untouched.

    Yields a generator for data shuffling on ``device`` (``None`` when unseeded).
    """
    if seed is None:
        yield None
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}.")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed) + 1)
        yield gen


def _check_threshold_value(value: Any) -> Optional[float]:
    """A finite number as float, or None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number or None, got {type(value).__name__} {value!r:.40}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {value}.")
    return value


class BaseDetector:
    """Threshold, metadata, device handling and batched inference.

    Subclasses set ``_fitted`` and implement ``score``.
    """

    def __init__(self, threshold: Optional[float] = None, data_type: Optional[str] = None,
                 device: Union[None, str, torch.device] = None) -> None:
        self.threshold = threshold
        self.data_type = data_type
        self.device = resolve_device(device)
        self._fitted = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "threshold":  # checked on every assignment, not only in __init__: od.threshold = "abc"
            value = _check_threshold_value(value)
        super().__setattr__(name, value)

    @property
    def meta(self) -> dict:
        """``{'name', 'detector_type', 'data_type', 'online', 'version'}``."""
        return {
            "name": type(self).__name__,
            "detector_type": "outlier",
            "data_type": self.data_type,
            "online": False,
            "version": __version__,
        }

    def _check_fitted(self, action: str) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(X) before {action}."
            )

    def _check_threshold(self) -> float:
        if self.threshold is None:
            raise ValueError(
                f"{type(self).__name__} has no threshold: call infer_threshold(X, threshold_perc) "
                "or set detector.threshold before predict."
            )
        return self.threshold

    def _batched(self, fn: Callable[[torch.Tensor], Any], X: np.ndarray, batch_size: int) -> Iterator[Any]:
        """Apply ``fn`` to device tensors of at most ``batch_size`` rows, in inference mode."""
        batch_size = check_positive_int(batch_size, "batch_size")
        with torch.inference_mode():
            for start in range(0, X.shape[0], batch_size):
                xb = torch.from_numpy(X[start:start + batch_size]).to(self.device, non_blocking=True)
                yield fn(xb)

    def _batched_into(self, fn: Callable[[torch.Tensor, torch.Tensor], None], X: np.ndarray, batch_size: int,
                      row_shape: tuple, dtype: torch.dtype, on_device: bool = True) -> np.ndarray:
        """Fill one preallocated (N, *row_shape) result batch by batch, in inference mode.

        ``fn(xb, out)`` writes the result for the rows ``xb`` into ``out``.
        On CPU the batches are shared among ``torch.get_num_threads()``
        threads, one batch at a time each (:func:`dagmm.accel.for_each_batch`), so ``fn``
        must not depend on the order of the batches.
        With ``on_device=True`` the result lives on the detector's device
        and crosses to the host in one transfer at the end (on CPU it is the
        returned array itself: no copy at all); use it for small per-row
        results such as scores.  With ``on_device=False`` each batch is
        copied into the host array, so device memory stays bounded by
        ``batch_size`` even for results as large as X.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        n = X.shape[0]
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        host = np.empty((n, *row_shape), dtype=np_dtype)
        host_t = torch.from_numpy(host)
        buf = host_t if (on_device is False or self.device.type == "cpu") else torch.empty(
            (n, *row_shape), dtype=dtype, device=self.device)
        staged = buf is host_t and self.device.type != "cpu"

        def body(start: int, stop: int) -> None:
            xb = torch.from_numpy(X[start:stop]).to(self.device, non_blocking=True)
            if staged:
                out = torch.empty((stop - start, *row_shape), dtype=dtype, device=self.device)
                fn(xb, out)
                buf[start:stop].copy_(out)
            else:
                fn(xb, buf[start:stop])

        for_each_batch(body, n, batch_size, workers_for(self.device, -(-n // batch_size)))
        if buf is not host_t:
            host_t.copy_(buf)  # the one device-to-host transfer
        return host

    def _residuals(self, X: np.ndarray, reconstruct_into: Callable[[torch.Tensor, torch.Tensor], None],
                   batch_size: int = DEFAULT_SCORE_BATCH) -> Iterator[torch.Tensor]:
        """The reconstruction residuals ``x - x'`` of X (network units), batch by batch, float32 (n, F)."""
        for start in range(0, len(X), batch_size):
            xb = torch.from_numpy(X[start:start + batch_size]).to(self.device)
            out = torch.empty_like(xb)
            with torch.inference_mode():
                reconstruct_into(xb, out)
                yield torch.sub(xb, out).flatten(1)

    def _training_error_scale(self, X: np.ndarray, floor: float,
                              reconstruct_into: Callable[[torch.Tensor, torch.Tensor], None],
                              batch_size: int = DEFAULT_SCORE_BATCH) -> np.ndarray:
        """Mean squared reconstruction error of each feature on the training rows X (network units), float32,
        shape of a row; ``reconstruct_into(xb, out)`` writes the network's reconstruction of ``xb`` into ``out``.

        Dividing by it expresses every feature's error in units of its typical
        error: a column the auto-encoder reconstructs almost exactly counts as
        much as one it barely models, instead of being drowned by it.  Values
        are floored at ``floor`` times their mean (and at 1e-12) so that a
        column reconstructed perfectly cannot dominate.
        """
        total = torch.zeros(int(np.prod(X.shape[1:])), dtype=torch.float64)
        for r in self._residuals(X, reconstruct_into, batch_size):
            total += r.square().double().sum(0).cpu()
        return self._floored_scale(total.numpy() / len(X), floor, X.shape[1:])

    @staticmethod
    def _floored_scale(mean_square: np.ndarray, floor: float, shape: tuple) -> np.ndarray:
        """Per-feature mean squared errors (F,) floored at ``floor`` times their mean (and 1e-12), float32 ``shape``."""
        mean = np.asarray(mean_square, dtype=np.float64).reshape(shape)
        return np.maximum(mean, max(floor * float(mean.mean()), 1e-12)).astype(np.float32)

    def _training_residual_gaussian(self, X: np.ndarray, floor: float,
                                    reconstruct_into: Callable[[torch.Tensor, torch.Tensor], None],
                                    batch_size: int = DEFAULT_SCORE_BATCH) -> dict:
        """A full-covariance Gaussian of the training residuals ``x - x'`` (network units), in two passes over X.

        Returns a dict: ``mean`` (F,) float64, the residuals' mean; ``prec_chol``
        (F, F) float32, the upper factor of their Ledoit-Wolf covariance's
        inverse (:func:`dagmm.models.covariance.whitening_factor`, variances
        floored at ``floor`` times their mean); ``shrinkage``, the Ledoit-Wolf
        weight; ``cov``, that covariance (float64 tensor); and ``error_scale``,
        what :meth:`_training_error_scale` gives, from the same sums (so that no
        third pass is needed for it).
        """
        total = None
        for r in self._residuals(X, reconstruct_into, batch_size):
            part = r.double().sum(0).cpu()
            total = part if total is None else total + part
        moments = CentredMoments(total / len(X))
        for r in self._residuals(X, reconstruct_into, batch_size):
            moments.add(r.cpu())
        cov, shrinkage = ledoit_wolf(moments)
        cov = floor_diagonal(cov, floor)
        return {"mean": moments.centre.numpy(), "prec_chol": whitening_factor(cov).float().numpy(),
                "shrinkage": shrinkage, "cov": cov,
                "error_scale": self._floored_scale(moments.mean_square().numpy(), floor, X.shape[1:])}

    @staticmethod
    def _percentile(scores: np.ndarray, threshold_perc: float) -> float:
        return float(np.percentile(scores, threshold_perc))

    def _checked(self, X: Any, name: str = "X") -> np.ndarray:
        """Validated float32 X, in the standardised units the network saw in ``fit`` (if any).

        A DataFrame's columns are put in the fitted order by name
        (``feature_names_in_``); the scaling runs in float64 before the cast.
        """
        X = align_columns(X, getattr(self, "feature_names_in_", None), name)
        mean = getattr(self, "scaler_mean_", None)
        X = check_array(X, name, feature_shape=getattr(self, "feature_shape_", None), precise=mean is not None)
        return apply_scaling(X, mean, getattr(self, "scaler_scale_", None), name)

    def _fit_input(self, X: Any) -> np.ndarray:
        """Validate the training data and remember its column names (``feature_names_in_``, like scikit-learn).

        float64 data stays float64 here, for :meth:`_fit_standardization`.
        """
        names = column_names(X)
        X = check_array(X, "X", min_rows=2, precise=True)
        self.feature_names_in_ = names
        return X

    def _fit_standardization(self, X: np.ndarray, auto: bool) -> tuple[np.ndarray, bool]:
        """Fit the input scaling that ``self.standardize`` asks for (``'auto'``: on when ``auto``).

        Sets ``scaler_mean_`` and ``scaler_scale_`` (float64, ``None`` when
        off; :mod:`dagmm.training.scaling`) and returns ``(X in the network's
        units as float32, whether scaling is on)``.
        """
        on = auto if self.standardize == "auto" else bool(self.standardize)
        if on:
            self.scaler_mean_, self.scaler_scale_ = fit_scaling(X)
            return apply_scaling(X, self.scaler_mean_, self.scaler_scale_), on
        self.scaler_mean_ = self.scaler_scale_ = None
        return check_array(X, "X"), on  # float32, values too large for it refused

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}(threshold={self.threshold}, data_type={self.data_type!r}, {state})"

"""Input checks shared by every detector; each error names the argument and the fix."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["check_array", "check_percent", "check_positive_int"]


def check_array(
    X: Any,
    name: str = "X",
    feature_shape: Optional[Sequence[int]] = None,
    min_rows: int = 1,
) -> np.ndarray:
    """Validate a data array and return it as C-contiguous float32.

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (N, F) or (N, ...)
    name : str
        Argument name used in error messages.
    feature_shape : sequence of int, optional
        Expected ``X.shape[1:]`` (the shape the detector was fitted on).
    min_rows : int, default 1

    Raises
    ------
    TypeError
        Non-numeric or complex data.
    ValueError
        Fewer than two dimensions, too few rows, NaN/inf, or a feature shape
        that differs from ``feature_shape``.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    elif hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas
        X = X.to_numpy()
    X = np.asarray(X)
    if X.dtype == bool or not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(
            f"{name} must hold real numbers (float or int), got dtype {X.dtype}. "
            "Encode categorical columns numerically (e.g. one-hot) before calling."
        )
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (n_samples, n_features), got shape {X.shape}. "
            "Reshape a single sample with X.reshape(1, -1) or a single feature with X.reshape(-1, 1)."
        )
    if X.shape[0] < min_rows:
        raise ValueError(f"{name} has {X.shape[0]} rows; at least {min_rows} required.")
    if any(s == 0 for s in X.shape[1:]):
        raise ValueError(f"{name} has no features: shape {X.shape}.")
    if feature_shape is not None and tuple(X.shape[1:]) != tuple(feature_shape):
        raise ValueError(
            f"{name} has feature shape {tuple(X.shape[1:])}, but the detector was fitted on "
            f"feature shape {tuple(feature_shape)}. Pass data with the same columns as in fit."
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    rows = _nonfinite_rows(X.reshape(X.shape[0], -1))
    if rows.size:
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if rows.size > 10 else "")
        raise ValueError(
            f"{name} contains NaN or infinite values (or values too large for float32) in "
            f"{rows.size} row(s): {shown}. Impute or drop them first."
        )
    return X


def _nonfinite_rows(X: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-D float32 array that hold NaN or +-inf.

    A row sum is non-finite whenever the row holds NaN or inf, so one BLAS
    matrix-vector product screens every row at memory speed with (N,) extra
    memory, instead of an (N, F) boolean mask.  A sum can also overflow for
    large finite values, so the rows it flags are checked element by element.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        sums = X @ np.ones(X.shape[1], dtype=X.dtype)  # (N,)
    suspect = np.flatnonzero(~np.isfinite(sums))
    if suspect.size == 0:
        return suspect
    return suspect[~np.isfinite(X[suspect]).all(axis=1)]


def check_percent(value: Any, name: str) -> float:
    """A percentage in [0, 100]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 100], got {type(value).__name__}.")
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{name} must be in [0, 100], got {value}.")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """A strictly positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)

"""Input checks shared by every detector; each error names the argument and the fix."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["align_columns", "check_array", "check_percent", "check_positive_int", "column_names"]


def column_names(X: Any) -> Optional[list[str]]:
    """The column names of a DataFrame whose names are all strings (as scikit-learn's ``feature_names_in_``)."""
    cols = getattr(X, "columns", None)
    if cols is None or isinstance(X, np.ndarray) or not hasattr(X, "to_numpy"):
        return None
    names = list(cols)
    return [str(c) for c in names] if names and all(isinstance(c, str) for c in names) else None


def align_columns(X: Any, fitted: Optional[Sequence[str]], name: str = "X") -> Any:
    """``X`` with its DataFrame columns in the fitted order (looked up by name).

    Arrays, and detectors fitted without names, pass through unchanged.

    Raises
    ------
    ValueError
        If the DataFrame lacks fitted columns or has columns the detector was not fitted on.
    """
    names = column_names(X)
    if fitted is None or names is None:
        return X
    fitted = list(fitted)
    if names == fitted:
        return X
    missing = [c for c in fitted if c not in set(names)]
    unknown = [c for c in names if c not in set(fitted)]
    if missing or unknown or len(set(names)) != len(names):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(repr(c) for c in missing[:10])}")
        if unknown:
            parts.append(f"not seen in fit {', '.join(repr(c) for c in unknown[:10])}")
        if not parts:
            parts.append("duplicated column names")
        raise ValueError(f"{name} has other columns than the detector was fitted on ({'; '.join(parts)}). "
                         f"Pass a DataFrame with the columns {fitted[:10]}{' ...' if len(fitted) > 10 else ''} "
                         "(any order).")
    return X[fitted]  # same names, another order: reorder by name


def check_array(
    X: Any,
    name: str = "X",
    feature_shape: Optional[Sequence[int]] = None,
    min_rows: int = 1,
    precise: bool = False,
) -> np.ndarray:
    """Validate a data array and return it as C-contiguous float32.

    With ``precise=True`` float64 and integer data come back as float64
    instead, so a scaling can be applied before the cast to float32
    (:mod:`dagmm.training.scaling`); float32 and float16 data come back as float32.

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
    wide = precise and not (np.issubdtype(X.dtype, np.floating) and X.dtype.itemsize <= 4)
    X = np.ascontiguousarray(X, dtype=np.float64 if wide else np.float32)
    rows = _nonfinite_rows(X.reshape(X.shape[0], -1))
    if rows.size:
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if rows.size > 10 else "")
        raise ValueError(
            f"{name} contains NaN or infinite values (or values too large for float32) in "
            f"{rows.size} row(s): {shown}. Impute or drop them first."
        )
    return X


def _nonfinite_rows(X: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-D float array that hold NaN or +-inf.

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

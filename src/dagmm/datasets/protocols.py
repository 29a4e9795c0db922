"""Train/test splits of the three evaluation protocols for tabular anomaly detection.

| protocol | train | test |
|---|---|---|
| ``'A'`` (DAGMM paper) | a random 50% of all rows, normal rows only | the other 50%, at its natural anomaly ratio |
| ``'B'``, ``'C'`` | a random half of the normal rows | the other normal half and all anomalies |

B and C share the split and differ only in the threshold the evaluation uses
(B: a percentile over train and test energies; C: the number of true
anomalies, so precision = recall = F1).  Scaling is fitted on the training
rows only, so no test statistic leaks into training.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .._validation import check_array
from ..training.scaling import apply_scaling, fit_scaling

__all__ = ["PROTOCOLS", "SCALERS", "fit_scaler", "protocol_indices", "protocol_split"]

PROTOCOLS = ("A", "B", "C")
SCALERS = ("zscore", "minmax", None)


def protocol_indices(y: Any, protocol: str = "A", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of :func:`protocol_split`, both sorted.

    Useful to build a validation split inside the training part: under
    protocol A the rows of the training half that are *not* in ``train``
    (its anomalies) are in neither index.
    """
    y = np.asarray(y).reshape(-1)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'A', 'B' or 'C', got {protocol!r}.")
    return _split_indices(y, protocol, int(seed))


def _split_indices(y: np.ndarray, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if protocol == "A":
        perm = rng.permutation(len(y))
        half = len(y) // 2
        train, test = np.sort(perm[:half]), np.sort(perm[half:])
        return train[y[train] == 0], test
    normal = rng.permutation(np.flatnonzero(y == 0))
    half = len(normal) // 2
    train = np.sort(normal[:half])
    test = np.sort(np.concatenate([normal[half:], np.flatnonzero(y == 1)]))
    return train, test


def protocol_split(
    X: Any,
    y: Any,
    protocol: str = "A",
    seed: int = 0,
    scaler: Optional[str] = "zscore",
    scale_columns: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split labelled data for one evaluation protocol and scale it.

    Parameters
    ----------
    X : array-like, shape (N, F)
    y : array-like, shape (N,)
        1 = anomaly, 0 = normal.
    protocol : {'A', 'B', 'C'}, default 'A'
        See the module docstring.
    seed : int, default 0
        Seed of the random split (numpy ``default_rng``).
    scaler : {'zscore', 'minmax', None}, default 'zscore'
        Fitted on ``X_train`` only and applied to both parts.  ``'zscore'``:
        ``(x - mean) / std``; ``'minmax'``: ``(x - min) / (max - min)``.  A
        column that is constant in ``X_train`` gets divisor 1, so it maps to
        0 in training and to its offset from the training value in the test.
    scale_columns : int array or bool mask, optional
        Columns to scale (default all); the others, e.g. one-hot indicators,
        pass through unchanged.

    Returns
    -------
    X_train : float32 ndarray, shape (N_train, F)
        Normal rows only.
    X_test : float32 ndarray, shape (N_test, F)
    y_test : int64 ndarray, shape (N_test,)
    """
    X = check_array(X, "X", min_rows=2)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}.")
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but X has {X.shape[0]} rows; pass one label per row.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must contain only 0 (normal) and 1 (anomaly).")
    y = y.astype(np.int64)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'A', 'B' or 'C', got {protocol!r}.")
    if scaler not in SCALERS:
        raise ValueError(f"scaler must be 'zscore', 'minmax' or None, got {scaler!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
    train, test = _split_indices(y, protocol, int(seed))
    transform = fit_scaler(X[train], scaler, scale_columns)
    return transform(X[train]), transform(X[test]), y[test]


def fit_scaler(X_train: Any, scaler: Optional[str] = "zscore",
               scale_columns: Any = None) -> Callable[[np.ndarray], np.ndarray]:
    """The scaling of :func:`protocol_split`, fitted on ``X_train``, as a function.

    Parameters
    ----------
    X_train : array-like, shape (N_train, F)
    scaler : {'zscore', 'minmax', None}, default 'zscore'
    scale_columns : int array or bool mask, optional
        Columns to scale (default all).

    Returns
    -------
    callable
        ``transform(X) -> float32 ndarray`` of the shape of ``X``.
    """
    if scaler not in SCALERS:
        raise ValueError(f"scaler must be 'zscore', 'minmax' or None, got {scaler!r}.")
    X_train = np.asarray(X_train)
    cols = np.arange(X_train.shape[1]) if scale_columns is None else np.arange(X_train.shape[1])[scale_columns]
    part = X_train[:, cols]
    if scaler == "zscore":  # the one standardisation of dagmm (float64, constant columns get scale 1)
        offset, scale = fit_scaling(part, columns=[str(c) for c in cols])
    elif scaler == "minmax":
        part = part.astype(np.float64)
        offset, scale = part.min(0), part.max(0) - part.min(0)
        scale[scale == 0] = 1.0
    else:
        offset, scale = np.zeros(len(cols)), np.ones(len(cols))

    def transform(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if len(cols) == X.shape[1]:
            return apply_scaling(X, offset, scale)
        out = np.array(X, dtype=np.float32, order="C")  # a copy; the columns left alone are only cast
        out[:, cols] = apply_scaling(X[:, cols], offset, scale)
        return out

    return transform

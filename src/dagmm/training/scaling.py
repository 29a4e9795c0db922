"""The one standardisation of dagmm: per-column mean and scale, computed and applied in float64.

Every z-scoring in the package goes through here: the detectors'
``scaler_mean_`` / ``scaler_scale_``, the ``DAGMM`` estimator's ``x_mean_`` /
``x_std_``, the table preprocessing of ``dagmm fit`` and the ``'zscore'``
scaler of the dataset protocols.

The rule, in one place
----------------------
- **float64 throughout.**  The statistics are computed in float64 and the
  scaling ``(X - mean) / scale`` is applied in float64 *before* the cast to
  float32, so a column such as ``1.7e9 + N(0, 10)`` (a timestamp, an amount)
  keeps its signal: in float32 the offset alone would eat it (the float32
  spacing at 1.7e9 is 128).
- **Overflow-safe statistics.**  Each column is divided by its largest
  absolute value before the mean and the standard deviation are taken and
  multiplied back afterwards, so the statistics of any finite column are
  finite (a cell of ``1e300`` does not make the standard deviation ``inf``).
- **Non-finite input is an error** naming the column(s) (:class:`ValueError`):
  NaN or infinity in the data scaling is fitted on is never skipped silently.
- **Constant columns get scale 1** (they map to ``X - mean``, i.e. 0).  A
  column is constant when its standard deviation is at most
  :data:`CONSTANT_ULPS` units of rounding of the input dtype at the column's
  magnitude: ``std <= CONSTANT_ULPS * eps(dtype) * max|x|``.  For float32
  input a column that varies only by float32 rounding counts as constant;
  for float64 (and integer) input only a truly constant column does, so a
  small variation on a large offset is kept.
- **Overflow after scaling is an error.**  A value whose standardised form
  does not fit float32 raises :class:`ValueError` instead of becoming ``inf``.

Statistics written by dagmm 0.1 were float32; they load and apply unchanged
(cast to float64 when applied), so old files score the same up to float32
rounding of the result.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["CONSTANT_ULPS", "fit_scaling", "apply_scaling"]

#: A column whose std is within this many units of rounding (of its dtype, at its magnitude) is constant.
CONSTANT_ULPS = 8

#: Rows scaled at a time, so a float32 input never needs a whole float64 copy.
_BLOCK_ROWS = 65536


def _eps(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating) and dtype.itemsize <= 4:
        return float(np.finfo(np.float32).eps)
    return float(np.finfo(np.float64).eps)  # float64, integers, bool: exact in float64 at this magnitude


def _names(columns: Optional[Sequence[Any]], n: int) -> list[str]:
    return [str(c) for c in columns] if columns is not None else [str(i) for i in range(n)]


def _local(a: np.ndarray, op: str) -> np.ndarray:
    return a


def fit_scaling(X: Any, columns: Optional[Sequence[Any]] = None,
                reduce: Optional[Callable[[np.ndarray, str], np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(mean, scale)`` of each column of ``X`` (shape ``X.shape[1:]``) by the module's rule.

    Parameters
    ----------
    X : array-like, shape (N, ...)
        Real numbers; any float or integer dtype.
    columns : sequence, optional
        Names of the columns of a 2-D ``X``, used in error messages
        (default: their indices).
    reduce : callable, optional
        ``reduce(array, op)`` with ``op`` ``"sum"`` or ``"max"``, returning the
        elementwise reduction of ``array`` over several holders of parts of the
        rows (an all-reduce over ``torch.distributed`` ranks, say): the result
        is then the scaling of all their rows together, by the same rule and
        passes, and every holder raises the same errors.  Default: ``X`` is all
        the rows.

    Raises
    ------
    ValueError
        If ``X`` has no rows or holds NaN or infinity (the message names the columns).
    """
    X = np.asarray(X)
    reduce = reduce or _local
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError("Cannot fit a scaling on data with no rows.")
    flat = X.reshape(X.shape[0], -1)
    blocks = range(0, flat.shape[0], _BLOCK_ROWS)
    n = float(reduce(np.array([flat.shape[0]], dtype=np.float64), "sum")[0])
    finite = np.ones(flat.shape[1], dtype=bool)
    peak = np.zeros(flat.shape[1])
    with np.errstate(invalid="ignore"):
        for s in blocks:  # pass 1: the largest magnitude of each column (row blocks: bounded float64 copies)
            b = np.abs(flat[s:s + _BLOCK_ROWS].astype(np.float64))
            finite &= np.isfinite(b).all(axis=0)
            np.maximum(peak, b.max(axis=0), out=peak)
    finite = reduce((~finite).astype(np.float64), "max") == 0
    if not finite.all():
        bad = np.flatnonzero(~finite)
        names = _names(columns, flat.shape[1])
        shown = ", ".join(repr(names[j]) for j in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"Column(s) {shown} hold NaN or infinite values; the scaling cannot be fitted. "
                         "Impute or drop them first.")
    peak = reduce(peak, "max")
    unit = np.where(peak > 0, peak, 1.0)  # columns divided by it lie in [-1, 1]: no sum or square overflows
    total = np.zeros(flat.shape[1])
    for s in blocks:
        total += (flat[s:s + _BLOCK_ROWS].astype(np.float64) / unit).sum(axis=0)
    m = reduce(total, "sum") / n
    sq = np.zeros(flat.shape[1])
    for s in blocks:  # pass 3: two-pass variance, no cancellation
        sq += np.square(flat[s:s + _BLOCK_ROWS].astype(np.float64) / unit - m).sum(axis=0)
    sq = reduce(sq, "sum")
    rel_std = np.sqrt(sq / n)  # std / max|x|
    const = rel_std <= CONSTANT_ULPS * _eps(X.dtype)
    mean = m * unit
    scale = np.where(const, 1.0, rel_std * unit)
    return mean.reshape(X.shape[1:]), scale.reshape(X.shape[1:])


def apply_scaling(X: Any, mean: Optional[np.ndarray], scale: Optional[np.ndarray], name: str = "X",
                  first_row: int = 0) -> np.ndarray:
    """``(X - mean) / scale`` computed in float64, returned as C-contiguous float32.

    ``mean is None`` means no scaling: ``X`` as float32.  Statistics of any
    float dtype are accepted (float32 ones from files of dagmm 0.1 included).

    ``first_row`` is added to the row numbers in error messages (for chunks).

    Raises
    ------
    ValueError
        If a scaled value does not fit float32 (the message names the rows).
    """
    X = np.asarray(X)
    if mean is None:
        return np.ascontiguousarray(X, dtype=np.float32)
    mean64 = np.asarray(mean, dtype=np.float64)
    scale64 = np.asarray(scale, dtype=np.float64)
    out = np.empty(X.shape, dtype=np.float32)
    bad_rows = []
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, X.shape[0], _BLOCK_ROWS):
            block = (X[start:start + _BLOCK_ROWS].astype(np.float64) - mean64) / scale64
            out[start:start + _BLOCK_ROWS] = block
            part = out[start:start + _BLOCK_ROWS].reshape(len(block), -1)
            finite = np.isfinite(part).all(axis=1)
            if not finite.all():
                bad_rows.extend((first_row + start + np.flatnonzero(~finite)).tolist())
    if bad_rows:
        shown = ", ".join(str(r) for r in bad_rows[:10]) + (", ..." if len(bad_rows) > 10 else "")
        raise ValueError(f"{name} has values that are NaN, infinite or too large for float32 after "
                         f"standardisation with the training statistics, in {len(bad_rows)} row(s): {shown}.")
    return out

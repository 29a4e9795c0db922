"""A percentile of a Dask array without gathering it: exact by histogram refinement, or one pass approximate.

``numpy.percentile`` (linear interpolation) needs the values of rank
``floor(h)`` and ``floor(h) + 1`` in sorted order, ``h = (n - 1) q / 100``.
Each is found by counting the values per histogram bucket over the whole
array (one pass, a few KB back per block), keeping the bucket that holds the
rank, and repeating inside it until it holds few enough values to fetch and
sort (``max_fetch``).  Bucket membership is decided by the same comparisons
(``edges[j] <= v < edges[j + 1]``) in the counting and in the fetching, so the
ranks add up exactly.  Ties are handled: a bucket whose values are all equal
is answered without fetching.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

__all__ = ["percentile"]

_MAX_ROUNDS = 64


def _bucket_counts(block: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``block`` in the buckets ``(-inf, e0), [e0, e1), ..., [e_last, inf)``: (1, len(edges) + 1)."""
    idx = np.searchsorted(edges, block.ravel(), side="right")  # bucket j holds edges[j-1] <= v < edges[j]
    return np.bincount(idx, minlength=len(edges) + 1)[None, :]


def _counts(x: Any, edges: np.ndarray) -> np.ndarray:
    import dask.array as da

    parts = da.map_blocks(_bucket_counts, x.reshape(-1), edges, chunks=((1,) * x.reshape(-1).numblocks[0],
                          (len(edges) + 1,)), new_axis=1, dtype=np.int64)
    return parts.sum(axis=0).compute()


def _select(x: Any, rank: int, lo: float, hi: float, bins: int, max_fetch: int) -> float:
    """The value of 0-based ``rank`` in sorted order; all values lie in ``[lo, hi]``."""
    top_closed = True  # the first window includes hi (the maximum); refined windows are half-open
    for _ in range(_MAX_ROUNDS):
        if lo == hi:
            return float(lo)
        edges = np.linspace(lo, hi, bins + 1)
        if top_closed:  # the maximum goes into the last bucket, [edges[-2], hi]
            edges[-1] = np.nextafter(hi, np.inf)
        counts = _counts(x, edges)
        cum = np.cumsum(counts)
        j = int(np.searchsorted(cum, rank, side="right"))  # bucket holding the rank
        if j == 0 or j == len(edges):  # pragma: no cover - the window always holds the rank
            raise RuntimeError("percentile: rank outside the histogram window (the data changed between passes?)")
        a, b = edges[j - 1], edges[j]
        below = int(cum[j - 1])  # values before bucket j
        inside = x[(x >= a) & (x < b)]
        if counts[j] <= max_fetch:
            values = np.sort(np.asarray(inside.compute()))
            if len(values) != counts[j]:  # pragma: no cover - same comparisons as the counts
                raise RuntimeError("percentile: the fetched bucket does not match its count")
            return float(values[rank - below])
        vmin, vmax = (float(v) for v in _dask().compute(inside.min(), inside.max()))
        if vmin == vmax:  # one value repeated more than max_fetch times
            return vmin
        lo, hi, top_closed = vmin, vmax, True
    raise RuntimeError(f"percentile: no answer after {_MAX_ROUNDS} refinements")  # pragma: no cover


def _dask():
    import dask

    return dask


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation, term for term (``numpy.lib._function_base_impl._lerp``)."""
    diff = b - a
    return float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t)


def percentile(x: Any, q: float, method: str = "exact", bins: Optional[int] = None,
               max_fetch: int = 1_000_000) -> float:
    """The ``q``-th percentile of all values of the Dask array ``x``.

    Parameters
    ----------
    x : dask.array.Array
        Any shape; all values count.  Persisted for the passes (it is read
        about three times per refinement round).
    q : float in [0, 100]
    method : 'exact' or 'approx'
        ``'exact'`` equals ``numpy.percentile(x.compute(), q)`` (the default
        linear method) without bringing more than ``max_fetch`` values to the
        client; usually two or three passes per order statistic.
        ``'approx'``: one counting pass over ``bins`` buckets of ``[min, max]``
        and linear interpolation inside the bucket; it is within two bucket
        widths, ``2 (max - min) / bins``, of the exact value.
    bins : int, optional
        Buckets per pass; default 4096 (exact) or 65536 (approx).
    max_fetch : int
        Largest bucket fetched to the client to sort.
    """
    import dask

    if method not in ("exact", "approx"):
        raise ValueError(f"method must be 'exact' or 'approx', got {method!r}.")
    bins = int(bins or (4096 if method == "exact" else 65536))
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}.")
    x = x.reshape(-1).persist()
    if any(math.isnan(c) for c in x.chunks[0]):
        x = x.compute_chunk_sizes()
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("percentile of an empty collection")
    lo, hi = (float(v) for v in dask.compute(x.min(), x.max()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("the scores contain NaN or infinite values; no percentile is defined.")
    h = (n - 1) * (float(q) / 100.0)
    r0 = int(math.floor(h))
    t = h - r0
    if method == "approx":
        edges = np.linspace(lo, hi, bins + 1)
        edges[-1] = np.nextafter(hi, np.inf)
        counts = _counts(x, edges)
        cum = np.cumsum(counts)
        j = int(np.searchsorted(cum, r0, side="right"))
        below = cum[j - 1]
        width = edges[j] - edges[j - 1]
        return float(edges[j - 1] + width * min(1.0, (h - below + 0.5) / counts[j]))
    v0 = _select(x, r0, lo, hi, bins, max_fetch)
    if t == 0 or r0 + 1 >= n:
        return v0
    return _lerp(v0, _select(x, r0 + 1, lo, hi, bins, max_fetch), t)

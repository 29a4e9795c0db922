"""Scoring a table file chunk by chunk with a ``dagmm fit`` model: one loop for ``dagmm score`` and its Dask engine."""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from .tableio import ChunkWriter, iter_table

__all__ = ["instance_scores", "score_chunks", "write_scores"]


def instance_scores(od: Any, X: np.ndarray) -> np.ndarray:
    """Per-row scores of either detector (``OutlierAE.score`` returns feature and instance scores)."""
    scores = od.score(X)
    return scores[1] if isinstance(scores, tuple) else scores


def score_chunks(od: Any, pre: Any, data: str, chunk_rows: int,
                 extra_column: Optional[str] = None) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
    """``(row numbers, scores, values of extra_column or None)`` for each chunk of ``data``."""
    if chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be a positive integer, got {chunk_rows}.")
    seen = 0
    for chunk in iter_table(data, chunk_rows):
        X = pre.transform(chunk, row_offset=seen)
        scores = instance_scores(od, X)
        extra = None
        if extra_column is not None:
            if extra_column not in chunk.columns:
                raise ValueError(f"Column {extra_column!r} not found in {data}.")
            extra = chunk[extra_column].to_numpy()
        yield chunk.index.to_numpy(), scores, extra
        seen += len(chunk)


def write_scores(od: Any, pre: Any, data: str, out: str, id_column: Optional[str] = None,
                 chunk_rows: int = 100_000) -> tuple[int, int]:
    """Write ``(id or row, score, is_outlier)`` for every row of ``data`` to ``out``; ``(rows, outliers)``.

    The file appears only when complete (:class:`~dagmm.tables.tableio.ChunkWriter`).
    """
    import pandas as pd

    writer = ChunkWriter(out)
    n = n_out = 0
    try:
        for rows, scores, ids in score_chunks(od, pre, data, chunk_rows, id_column):
            flags = (scores > od.threshold).astype(np.int64)
            first = (id_column, ids) if id_column else ("row", rows)
            writer.write(pd.DataFrame({first[0]: first[1], "score": scores, "is_outlier": flags}))
            n += len(scores)
            n_out += int(flags.sum())
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return n, n_out

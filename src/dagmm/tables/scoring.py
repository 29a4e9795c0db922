"""Scoring a table file chunk by chunk with a ``dagmm fit`` model: one loop for ``dagmm score`` and its Dask engine."""

from __future__ import annotations

import sys
from typing import Any, Iterator, Optional

import numpy as np

from .tableio import ChunkWriter, iter_table

__all__ = ["instance_scores", "score_chunks", "write_scores"]


def instance_scores(od: Any, X: np.ndarray) -> np.ndarray:
    """Per-row scores of either detector (``OutlierAE.score`` returns feature and instance scores)."""
    scores = od.score(X)
    return scores[1] if isinstance(scores, tuple) else scores


def _total_rows(path: str) -> Optional[int]:
    """Rows in a Parquet or .npy file (cheap, from metadata); None for CSV."""
    from .tableio import table_format

    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if fmt == "npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except Exception:  # the reader reports a bad file properly
        return None
    return None


def score_chunks(od: Any, pre: Any, data: str, chunk_rows: int, extra_column: Optional[str] = None,
                 progress: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
    """``(row numbers, scores, values of extra_column or None)`` for each chunk of ``data``.

    Columns that were text at fit are read as text in every chunk; row numbers in
    errors count from the start of the file.
    """
    from tqdm.auto import tqdm

    if chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be a positive integer, got {chunk_rows}.")
    seen = 0
    bar = tqdm(total=_total_rows(data), desc="dagmm score", unit="row", disable=not progress, leave=False,
               file=sys.stderr)
    try:
        for chunk in iter_table(data, chunk_rows, str_columns=pre.categorical_columns):
            if len(chunk) == 0:  # a header-only CSV still yields one empty chunk
                continue
            extra = None
            if extra_column is not None:
                if extra_column not in chunk.columns:
                    raise ValueError(f"Column {extra_column!r} not found in {data}.")
                extra = chunk[extra_column].to_numpy()
            X = pre.transform(chunk, row_offset=seen)
            try:
                scores = instance_scores(od, X)
            except ValueError as err:  # the detector counts rows within the chunk
                if seen == 0:
                    raise
                raise ValueError(f"{err} (rows counted from row {seen}, the first of this chunk)") from None
            yield chunk.index.to_numpy(), scores, extra
            seen += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()


def write_scores(od: Any, pre: Any, data: str, out: str, id_column: Optional[str] = None,
                 chunk_rows: int = 100_000, progress: bool = False) -> tuple[int, int]:
    """Write ``(id or row, score, is_outlier)`` for every row of ``data`` to ``out``; ``(rows, outliers)``.

    The file appears only when complete (:class:`~dagmm.tables.tableio.ChunkWriter`).
    """
    import pandas as pd

    writer = ChunkWriter(out)
    n = n_out = 0
    try:
        for rows, scores, ids in score_chunks(od, pre, data, chunk_rows, id_column, progress):
            flags = (scores > od.threshold).astype(np.int64)
            first = (id_column, ids) if id_column else ("row", rows)
            writer.write(pd.DataFrame({first[0]: first[1], "score": scores, "is_outlier": flags}))
            n += len(scores)
            n_out += int(flags.sum())
        if n == 0:  # a file with a header and no rows: still a scores file, with its columns
            writer.write(pd.DataFrame({id_column or "row": [], "score": np.empty(0),
                                       "is_outlier": np.empty(0, dtype=np.int64)}))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return n, n_out

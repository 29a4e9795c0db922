"""Reading and writing tabular files (CSV, Parquet, ``.npy``), whole or in chunks.

Scoring streams its input chunk by chunk so that memory does not grow with
the file.  Parquet needs ``pyarrow``; all formats need ``pandas``.

A CSV has no types: pandas guesses them from the values it sees, so the same
column can come back as text in one chunk and as numbers in the next.
``str_columns`` names the columns to read as text whatever they hold (the
categorical columns of a fitted preprocessing), in every chunk.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np

__all__ = ["read_table", "iter_table", "ChunkWriter", "table_format"]

_FORMATS = {".csv": "csv", ".gz": "csv", ".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}


def table_format(path: str) -> str:
    """'csv', 'parquet' or 'npy' from the file name; ValueError otherwise."""
    name = os.path.basename(path).lower()
    if name.endswith(".csv.gz"):
        return "csv"
    ext = os.path.splitext(name)[1]
    if ext not in _FORMATS or ext == ".gz":
        raise ValueError(f"Unsupported file type {path!r}: use .csv, .csv.gz, .parquet/.pq or .npy.")
    return _FORMATS[ext]


def _pandas():
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover
        raise ImportError("Reading tabular files needs pandas: pip install pandas") from err
    return pd


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover
        raise ImportError("Parquet files need pyarrow: pip install pyarrow") from err
    return pq


def _npy_frame(arr: np.ndarray, start: int = 0) -> Any:
    pd = _pandas()
    if arr.ndim != 2:
        raise ValueError(f".npy input must be a 2-D array (rows, features), got shape {arr.shape}.")
    return pd.DataFrame(np.asarray(arr), columns=[str(i) for i in range(arr.shape[1])],
                        index=pd.RangeIndex(start, start + arr.shape[0]))


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")


def _csv_types(str_columns: Optional[Sequence[str]]) -> Optional[dict]:
    return {c: str for c in str_columns} if str_columns else None


def read_table(path: str, str_columns: Optional[Sequence[str]] = None) -> Any:
    """Read a whole file into a DataFrame (``str_columns`` of a CSV as text)."""
    _check_exists(path)
    fmt = table_format(path)
    pd = _pandas()
    try:
        if fmt == "csv":  # low_memory=False: one type per column for the whole file, not per internal block
            return pd.read_csv(path, low_memory=False, dtype=_csv_types(str_columns))
        if fmt == "parquet":
            return pd.read_parquet(path)
        return _npy_frame(np.load(path, allow_pickle=False))
    except (ValueError, OSError, UnicodeDecodeError) as err:
        if isinstance(err, ValueError) and "must be a 2-D" in str(err):
            raise
        raise ValueError(f"Cannot read {path} as {fmt}: {err}") from err
    except pd.errors.ParserError as err:  # pragma: no cover - rare malformed CSV
        raise ValueError(f"Cannot read {path} as csv: {err}") from err


def iter_table(path: str, chunk_rows: int = 100_000, str_columns: Optional[Sequence[str]] = None) -> Iterator[Any]:
    """Yield DataFrames of at most ``chunk_rows`` rows with a running RangeIndex (``str_columns`` as text)."""
    _check_exists(path)
    fmt = table_format(path)
    pd = _pandas()
    try:
        if fmt == "csv":
            yield from pd.read_csv(path, chunksize=chunk_rows, dtype=_csv_types(str_columns))
        elif fmt == "parquet":
            pq = _pyarrow_parquet()
            start = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                df = batch.to_pandas()
                df.index = pd.RangeIndex(start, start + len(df))
                start += len(df)
                yield df
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2:
                raise ValueError(f".npy input must be a 2-D array (rows, features), got shape {arr.shape}.")
            for start in range(0, arr.shape[0], chunk_rows):
                yield _npy_frame(arr[start:start + chunk_rows], start)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"Cannot read {path} as {fmt}: {err}") from err


class ChunkWriter:
    """Append DataFrames to a CSV or Parquet file, one chunk at a time.

    Written to ``path + '.partial'`` and renamed on :meth:`close`, so an
    interrupted run never leaves a file that looks complete.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.format = table_format(path)
        if self.format == "npy":
            raise ValueError("Scores are written as .csv or .parquet, not .npy.")
        self._tmp = path + ".partial"
        self._writer: Optional[Any] = None
        self._fh = None

    def write(self, df: Any) -> None:
        if self.format == "csv":
            if self._fh is None:
                self._fh = open(self._tmp, "w", encoding="utf-8", newline="")
                df.to_csv(self._fh, index=False)
            else:
                df.to_csv(self._fh, index=False, header=False)
        else:
            import pyarrow as pa

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._writer is None:
                self._writer = _pyarrow_parquet().ParquetWriter(self._tmp, table.schema)
            self._writer.write_table(table)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._writer is not None:
            self._writer.close()
        if os.path.exists(self._tmp):
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._writer is not None:
            self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

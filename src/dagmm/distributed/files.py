"""``dagmm score|fit --engine dask``: Parquet directories and globs, one Dask task per file.

Every input file is one partition: scoring reads it chunk by chunk
(``--chunk-rows``), so a worker holds one chunk of one file at a time, and
writes one output file per input file to the output directory (complete or
absent: :class:`dagmm.tables.tableio.ChunkWriter`).  Input and output paths
must be visible to every worker (a shared file system or the same machine).
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ._ship import DetectorFiles, loaded, pack_dir

__all__ = ["parquet_files", "dask_client", "score_files", "fit_files", "DEFAULT_SAMPLE_ROWS"]

#: Rows ``dagmm fit --engine dask`` trains on when ``--sample-rows`` is not given.
DEFAULT_SAMPLE_ROWS = 200_000
_SUFFIXES = (".parquet", ".pq")


def parquet_files(source: str) -> list[str]:
    """The Parquet files of a directory (recursively, sorted) or a glob pattern."""
    if os.path.isdir(source):
        found = sorted(str(p) for p in Path(source).rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())
    else:
        found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        if not found and os.path.isfile(source):
            found = [source]
    if not found:
        raise FileNotFoundError(f"No Parquet files (.parquet, .pq) found at {source!r}: give a directory or a glob "
                                "such as 'data/*.parquet'.")
    bad = [p for p in found if Path(p).suffix.lower() not in _SUFFIXES]
    if bad:
        raise ValueError(f"--engine dask reads Parquet only; {bad[0]!r} is not a .parquet/.pq file.")
    return found


def _output_names(files: Sequence[str], source: str) -> list[str]:
    """One output file name per input: its path below the directory, '/' written as '__'."""
    base = source if os.path.isdir(source) else None
    names = []
    for f in files:
        rel = os.path.relpath(f, base) if base else os.path.basename(f)
        names.append(str(Path(rel).with_suffix("")).replace(os.sep, "__") + ".parquet")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"Two input files would write the same output {sorted(dup)[0]!r}; give a directory "
                         "instead of a glob, or rename the files.")
    return names


@contextlib.contextmanager
def dask_client(scheduler: Optional[str] = None, workers: Optional[int] = None) -> Iterator[Any]:
    """A ``distributed.Client`` of ``scheduler``, or of a ``LocalCluster`` on 127.0.0.1 when none is given."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover
        raise ImportError("--engine dask needs Dask: pip install 'dagmm[dask]'") from err
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    kwargs = {} if workers is None else {"n_workers": int(workers), "threads_per_worker": 1}
    with LocalCluster(host="127.0.0.1", processes=True, dashboard_address=None, **kwargs) as cluster, \
            Client(cluster) as client:
        yield client


def _score_file(files: DetectorFiles, src: str, out: str, id_column: Optional[str], chunk_rows: int) -> tuple:
    from ..tables.scoring import write_scores

    det, pre = loaded(files)
    return write_scores(det, pre, src, out, id_column, chunk_rows)


def score_files(model_dir: str, source: str, out_dir: str, *, id_column: Optional[str] = None,
                chunk_rows: int = 100_000, scheduler: Optional[str] = None,
                workers: Optional[int] = None) -> tuple[int, int, list[str]]:
    """Score every Parquet file of ``source`` with a ``dagmm fit`` model on Dask.

    Returns ``(rows, outliers, output files)``; the outputs hold ``row`` (the
    row number within its file) or ``id_column``, ``score`` and ``is_outlier``.
    """
    import dask

    from ..tables.model import DETECTOR, load_table_model

    inputs = parquet_files(source)
    names = _output_names(inputs, source)
    _, pre, _ = load_table_model(model_dir)  # checks the model (and its threshold) before any task runs
    files = dask.delayed(pack_dir(Path(model_dir) / DETECTOR, pre), pure=True)
    os.makedirs(out_dir, exist_ok=True)
    outs = [os.path.join(out_dir, n) for n in names]
    tasks = [dask.delayed(_score_file, pure=False)(files, src, out, id_column, chunk_rows)
             for src, out in zip(inputs, outs)]
    with dask_client(scheduler, workers) as client:
        results = client.compute(tasks, sync=True)
    return sum(r[0] for r in results), sum(r[1] for r in results), outs


def fit_files(od: Any, pre: Any, source: str, *, sample_rows: int, seed: int, threshold_perc: float,
              fit_kwargs: dict, scheduler: Optional[str] = None, workers: Optional[int] = None) -> tuple[int, int]:
    """Train ``od`` on a sample of the Parquet files of ``source``, then fit its mixture and threshold on all.

    ``pre`` (an unfitted :class:`~dagmm.tables.preprocess.TabularPreprocessor`)
    is fitted on the sample.  The threshold comes from the exact
    :func:`dagmm.distributed.infer_threshold` over every row; an
    ``OutlierAEGMM`` whose scoring mixture is the membership one gets it from
    :func:`dagmm.distributed.fit_mixture` over every row, while the automatic
    default keeps the EM mixture of the sample's codes (EM is not a sum over
    rows; see ``fit_mixture``).  Returns ``(rows in all files, rows in the sample)``.
    """
    import dask.dataframe as dd
    import pandas as pd

    from .collections import fit_mixture, infer_threshold

    inputs = parquet_files(source)
    with dask_client(scheduler, workers):
        # one partition per file, read as `dagmm score` reads it (no columns made up from hive-style folder names)
        ddf = dd.from_map(pd.read_parquet, inputs)
        import pyarrow.parquet as pq

        n = sum(pq.ParquetFile(f).metadata.num_rows for f in inputs)  # from the footers, no data read
        if n < 2:
            raise ValueError(f"{source} has {n} row(s); training needs at least 2.")
        frac = min(1.0, sample_rows / n)
        sample = (ddf.sample(frac=frac, random_state=seed) if frac < 1 else ddf).compute()
        pre.fit(sample)
        od.fit(pre.transform(sample), seed=seed, **fit_kwargs)
        if type(od).__name__ == "OutlierAEGMM" and "mixture_fit" not in od.auto_config_:
            fit_mixture(od, ddf, preprocessor=pre)
        infer_threshold(od, ddf, threshold_perc, preprocessor=pre)
    return n, len(sample)

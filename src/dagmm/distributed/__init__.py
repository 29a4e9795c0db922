"""Beyond one process: score and fit on Dask (``pip install 'dagmm[dask]'``), train with ``torch.distributed``.

- :func:`score`, :func:`predict`: lazy results for a ``dask.array`` or ``dask.dataframe``,
  one chunk per partition; the detector travels as its saved files (JSON + safetensors
  bytes) and is loaded once per worker process.
- :func:`fit_mixture`: the scoring mixture of an ``OutlierAEGMM`` exactly over all partitions.
- :func:`infer_threshold`: the percentile over the collection, exact or approximate.
- ``dagmm score|fit --engine dask`` over Parquet directories (:mod:`dagmm.distributed.files`) and
  ``dagmm fit --distributed`` under ``torchrun`` (:mod:`dagmm.distributed.ddp`).

See ``docs/distributed.md``.
"""

from .collections import fit_mixture, infer_threshold, predict, score, ship
from .quantile import percentile

__all__ = ["score", "predict", "fit_mixture", "infer_threshold", "percentile", "ship"]

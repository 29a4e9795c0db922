"""Scoring, flagging, the scoring mixture and the threshold over Dask arrays and DataFrames.

Every function ships the detector once, as the bytes of its saved files
(:mod:`dagmm.distributed._ship`), as a single key of the task graph: each
worker fetches it once and loads it once per process.  Results are lazy with
one chunk per input partition; nothing here gathers the rows on the client.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .._validation import check_percent
from ._ship import DetectorFiles, loaded, note_rows, pack
from .quantile import percentile

__all__ = ["score", "predict", "fit_mixture", "infer_threshold", "ship"]

_EXTRA = "pip install 'dagmm[dask]'"


def _dask():
    try:
        import dask
        import dask.array as da
        import dask.dataframe as dd
    except ImportError as err:  # pragma: no cover - the extra is in the test environment
        raise ImportError(f"dagmm.distributed needs Dask: {_EXTRA}") from err
    return dask, da, dd


def _kind(detector: Any) -> str:
    name = type(detector).__name__
    if name not in ("OutlierAEGMM", "OutlierAE"):
        raise TypeError(f"detector must be a fitted OutlierAEGMM or OutlierAE, got {name}.")
    if not getattr(detector, "_fitted", False):
        from ..detectors.base import NotFittedError

        raise NotFittedError(f"This {name} is not fitted yet: call fit(X) before using it on Dask collections.")
    return name


def ship(detector: Any, preprocessor: Optional[Any] = None) -> Any:
    """The detector's saved files as one lazy Dask value (a single graph key shared by every task)."""
    dask, _, _ = _dask()
    return dask.delayed(pack(detector, preprocessor), pure=True)


# ------------------------------------------------------------------ partitions
def _rows(part: Any, files: DetectorFiles, columns: Optional[Sequence[str]]) -> np.ndarray:
    """One partition as the float32 rows the detector takes (table preprocessing applied when shipped)."""
    det, pre = loaded(files)
    if hasattr(part, "columns"):  # a pandas partition
        if pre is not None:
            x = pre.transform(part)
        else:
            missing = [c for c in columns if c not in part.columns]
            if missing:
                raise ValueError(f"columns {missing} are not in the DataFrame (it has {list(part.columns)[:20]}).")
            x = part[list(columns)].to_numpy(dtype=np.float32)
    else:
        x = np.asarray(part)
    note_rows(len(x))
    return x


def _instance_block(part: Any, files: DetectorFiles, columns: Any, outlier_perc: float) -> np.ndarray:
    det, _ = loaded(files)
    x = _rows(part, files, columns)
    out = det.score(x, outlier_perc) if type(det).__name__ == "OutlierAE" else det.score(x)
    return out[1] if isinstance(out, tuple) else out  # (n,) float64


def _feature_block(part: Any, files: DetectorFiles, columns: Any) -> np.ndarray:
    det, _ = loaded(files)
    return det.score(_rows(part, files, columns))[0]  # (n, ...) float32


def _instance_from_features(fscore: np.ndarray, outlier_perc: float) -> np.ndarray:
    from ..detectors.ae import OutlierAE

    return OutlierAE.instance_score(fscore, outlier_perc)


def _stats_block(part: Any, files: DetectorFiles, columns: Any, shift: Optional[np.ndarray]) -> tuple:
    """Mixture statistics of one partition as float64 NumPy arrays ``(n, Σγ, Σγz, Σγzzᵀ, shift)``."""
    det, _ = loaded(files)
    x = _rows(part, files, columns)
    if len(x) == 0:
        return None
    s = det.mixture_stats(x, shift)
    return tuple(t.detach().cpu().numpy().astype(np.float64) for t in s)


def _add_stats(a: Optional[tuple], b: Optional[tuple]) -> Optional[tuple]:
    if a is None or b is None:
        return a if b is None else b
    if not np.array_equal(a[4], b[4]):  # pragma: no cover - every partition gets the same shift
        raise ValueError("partition statistics taken about different shifts")
    return tuple(x + y for x, y in zip(a[:4], b[:4])) + (a[4],)


# ------------------------------------------------------------------- inputs
def _prepare(detector: Any, X: Any, columns: Optional[Sequence[str]], preprocessor: Optional[Any]) -> tuple:
    """``(collection, is_frame, columns)``: X checked, a dask.array rechunked to whole rows."""
    _, da, dd = _dask()
    if isinstance(X, dd.DataFrame):
        if preprocessor is None:
            cols = list(X.columns) if columns is None else list(columns)
            want = int(np.prod(getattr(detector, "feature_shape_", (len(cols),))))
            if len(cols) != want:
                raise ValueError(f"X has {len(cols)} column(s) {cols[:10]} but the detector was fitted on {want} "
                                 "features; pass columns=[...] naming them in the order used in fit.")
            columns = cols
        return X, True, columns
    if isinstance(X, da.Array):
        if columns is not None or preprocessor is not None:
            raise ValueError("columns and preprocessor apply to a dask.dataframe.DataFrame, not to a dask.array.")
        if X.ndim < 2:
            raise ValueError(f"X must have a row axis and feature axes, got a dask.array of shape {X.shape}.")
        shape = getattr(detector, "feature_shape_", None)
        if shape is not None and tuple(X.shape[1:]) != tuple(shape):
            raise ValueError(f"X has feature shape {tuple(X.shape[1:])} but the detector was fitted on {tuple(shape)}.")
        # one block spans every feature: a block is a set of whole rows
        return X.rechunk({i: -1 for i in range(1, X.ndim)}), False, None
    raise TypeError(f"X must be a dask.array.Array or a dask.dataframe.DataFrame, got {type(X).__name__}; "
                    "for NumPy or pandas data call the detector's own methods.")


def _lazy_scores(detector: Any, X: Any, columns: Any, preprocessor: Any, outlier_perc: float,
                 features: bool) -> tuple:
    """``(instance scores, feature scores or None, is_frame)`` as lazy Dask collections."""
    _, da, _ = _dask()
    kind = _kind(detector)
    X, frame, columns = _prepare(detector, X, columns, preprocessor)
    files = ship(detector, preprocessor)
    if frame:
        if features:
            raise ValueError("feature scores are returned for a dask.array only; convert with X.to_dask_array("
                             "lengths=True).")
        import pandas as pd

        meta = pd.Series(np.zeros(0, np.float64), name="instance_score")
        return X.map_partitions(_series_block, files, columns, outlier_perc, meta=meta), None, True
    if kind == "OutlierAE" and features:
        fscore = da.map_blocks(_feature_block, X, files, None, dtype=np.float32)
        iscore = da.map_blocks(_instance_from_features, fscore, outlier_perc, drop_axis=list(range(1, X.ndim)),
                               dtype=np.float64)
        return iscore, fscore, False
    iscore = da.map_blocks(_instance_block, X, files, None, outlier_perc, drop_axis=list(range(1, X.ndim)),
                           dtype=np.float64)
    return iscore, None, False


def _series_block(part: Any, files: DetectorFiles, columns: Any, outlier_perc: float) -> Any:
    import pandas as pd

    return pd.Series(_instance_block(part, files, columns, outlier_perc), index=part.index, name="instance_score")


# ------------------------------------------------------------------- public
def score(detector: Any, X: Any, *, columns: Optional[Sequence[str]] = None, preprocessor: Optional[Any] = None,
          outlier_perc: float = 100.0, return_feature_score: bool = False) -> Any:
    """Lazy instance scores of a Dask collection, one chunk per partition.

    Parameters
    ----------
    detector : OutlierAEGMM or OutlierAE
        Fitted; it travels to the workers as its saved files and is loaded once per worker process.
    X : dask.array.Array (N, F) or dask.dataframe.DataFrame
        Rows in the units of the training data.  An array is rechunked so that
        each block holds whole rows; a DataFrame is read by column name.
    columns : sequence of str, optional
        DataFrame columns in the order the detector was fitted on (default: all, in order).
    preprocessor : dagmm.tables.preprocess.TabularPreprocessor, optional
        Applied to each DataFrame partition first (the ``dagmm fit`` encoding).
    outlier_perc : float, default 100
        ``OutlierAE`` only: percentage of the worst features averaged per row.
    return_feature_score : bool, default False
        ``OutlierAE`` and a dask.array only: also return the feature scores.

    Returns
    -------
    dask.array.Array (N,) float64 or dask.dataframe.Series
        Equal to ``detector.score`` on the concatenated rows (the same code on each block).
        With ``return_feature_score=True``, ``(feature scores, instance scores)`` like ``OutlierAE.score``.
    """
    outlier_perc = check_percent(outlier_perc, "outlier_perc")
    if return_feature_score and _kind(detector) != "OutlierAE":
        raise ValueError("return_feature_score=True needs an OutlierAE; OutlierAEGMM has instance scores only.")
    iscore, fscore, _ = _lazy_scores(detector, X, columns, preprocessor, outlier_perc, return_feature_score)
    return (fscore, iscore) if return_feature_score else iscore


def predict(detector: Any, X: Any, *, columns: Optional[Sequence[str]] = None, preprocessor: Optional[Any] = None,
            outlier_type: str = "instance", outlier_perc: float = 100.0, return_feature_score: bool = False,
            return_instance_score: bool = True) -> dict:
    """Lazy ``predict``: ``{'meta', 'data': {'is_outlier', 'instance_score', 'feature_score'}}``.

    ``is_outlier`` is ``score > detector.threshold`` (strict) per row, or per
    feature for ``OutlierAE`` with ``outlier_type='feature'`` (dask.array only);
    values not requested are ``None``.  Other arguments as :func:`score`.
    """
    threshold = detector._check_threshold() if hasattr(detector, "_check_threshold") else detector.threshold
    if outlier_type not in ("instance", "feature"):
        raise ValueError(f"outlier_type must be 'instance' or 'feature', got {outlier_type!r}.")
    features = return_feature_score or outlier_type == "feature"
    if features and _kind(detector) != "OutlierAE":
        raise ValueError("feature scores and outlier_type='feature' need an OutlierAE.")
    outlier_perc = check_percent(outlier_perc, "outlier_perc")
    iscore, fscore, frame = _lazy_scores(detector, X, columns, preprocessor, outlier_perc, features)
    flagged = fscore if outlier_type == "feature" else iscore
    flags = (flagged > threshold).astype(np.int64)
    if frame:
        flags = flags.rename("is_outlier")
    return {"meta": detector.meta, "data": {
        "is_outlier": flags,
        "instance_score": iscore if return_instance_score else None,
        "feature_score": fscore if return_feature_score else None,
    }}


def _blocks(X: Any, frame: bool) -> list:
    return list(X.to_delayed()) if frame else list(X.to_delayed().ravel())


def fit_mixture(detector: Any, X: Any, *, columns: Optional[Sequence[str]] = None,
                preprocessor: Optional[Any] = None, batch_size: int = 16384, membership: bool = False) -> Any:
    """Estimate the scoring mixture of an ``OutlierAEGMM`` exactly over a whole Dask collection.

    This is the estimation network's membership mixture (the paper's, and
    what ``fit`` installs for user nets and ``architecture='paper'``).  The
    automatic default instead fits its scoring mixture by EM on the training
    codes (``auto_config_['mixture_fit']``), which is not a sum over rows;
    replacing it with the membership mixture changes the model, so for such
    a detector this raises unless ``membership=True`` says that is meant
    (``auto_config_['mixture']`` then records ``'membership'``).

    Train on what fits in memory (a sample), then call this on all the data:
    each partition contributes its additive statistics (Σγ, Σγ(z-s), Σγ(z-s)(z-s)ᵀ
    about one shared reference point ``s``, in float64, from
    :meth:`OutlierAEGMM.mixture_stats`), summed in a tree, and the detector's
    ``phi_``, ``mu_``, ``cov_`` are set from the sum (:meth:`OutlierAEGMM.set_mixture`).
    The result equals the in-memory estimate on the concatenated rows up to
    float64 rounding of the sums (the tests check 1e-8).

    ``s`` is the mean latent of the first rows of the first partition, which
    is computed first on its own; the other partitions then run in parallel.
    Other arguments as :func:`score`.

    Returns
    -------
    detector
        The same object, its mixture replaced.
    """
    dask, _, _ = _dask()
    if type(detector).__name__ != "OutlierAEGMM":
        raise TypeError(f"fit_mixture needs an OutlierAEGMM, got {type(detector).__name__} (it has no mixture).")
    _kind(detector)
    em = (getattr(detector, "auto_config_", None) or {}).get("mixture_fit")
    if em is not None and not membership:
        raise ValueError(
            f"This detector's scoring mixture was fitted by EM on its training codes ({em['n_components']} "
            "component(s) chosen by BIC, auto_config_['mixture_fit']); fit_mixture estimates the estimation "
            "network's membership mixture instead, a different model. Keep the EM mixture (a sample's codes "
            "estimate it well) and call infer_threshold over all rows, or pass membership=True to replace it.")
    X, frame, columns = _prepare(detector, X, columns, preprocessor)
    files = ship(detector, preprocessor)
    blocks = _blocks(X, frame)
    first, rest = None, list(blocks)
    while first is None and rest:  # the first non-empty partition fixes the shift
        first = dask.delayed(_stats_block)(rest.pop(0), files, columns, None).compute()
    if first is None:
        raise ValueError("fit_mixture: X has no rows.")
    parts = [dask.delayed(_stats_block)(b, files, columns, first[4]) for b in rest]
    while len(parts) > 1:  # pairwise tree: no task sums more than two
        parts = [dask.delayed(_add_stats)(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    total = _add_stats(first, parts[0].compute() if parts else None)

    import torch

    from ..models.gmm import GMMStats, gmm_params_from_stats

    stats = GMMStats(*(torch.from_numpy(np.asarray(t, dtype=np.float64)) for t in total))
    detector.set_mixture(gmm_params_from_stats(stats))
    if em is not None:
        detector.auto_config_.pop("mixture_fit")
        detector.auto_config_["mixture"] = "membership"
    return detector


def infer_threshold(detector: Any, X: Any, threshold_perc: float = 95.0, *, method: str = "exact",
                    columns: Optional[Sequence[str]] = None, preprocessor: Optional[Any] = None,
                    outlier_type: str = "instance", outlier_perc: float = 100.0, bins: Optional[int] = None) -> float:
    """Set ``detector.threshold`` to the ``threshold_perc`` percentile of the scores of a Dask collection.

    Parameters
    ----------
    method : 'exact' or 'approx', default 'exact'
        ``'exact'``: the value ``numpy.percentile`` gives on all the scores
        (linear interpolation), found by histogram refinement without
        gathering them (:func:`dagmm.distributed.quantile.percentile`; the
        scores are persisted on the workers, 8 bytes per row, for the few
        passes).  ``'approx'``: one histogram pass; the result differs from
        the exact one by at most two bin widths, ``2 * (max - min) / bins``.
    bins : int, optional
        Histogram bins per pass (default 4096 exact, 65536 approximate).
    outlier_type : 'instance' or 'feature'
        ``'feature'`` (``OutlierAE``, dask.array): over all feature scores.
    Other arguments as :func:`score`.

    Returns
    -------
    float
        The threshold, also stored on ``detector``.
    """
    threshold_perc = check_percent(threshold_perc, "threshold_perc")
    if outlier_type not in ("instance", "feature"):
        raise ValueError(f"outlier_type must be 'instance' or 'feature', got {outlier_type!r}.")
    features = outlier_type == "feature"
    if features and _kind(detector) != "OutlierAE":
        raise ValueError("outlier_type='feature' needs an OutlierAE.")
    iscore, fscore, frame = _lazy_scores(detector, X, columns, preprocessor, check_percent(outlier_perc, "outlier_perc"),
                                         features)
    values = fscore.ravel() if features else (iscore.to_dask_array() if frame else iscore)
    detector.threshold = percentile(values, threshold_perc, method=method, bins=bins)
    return detector.threshold

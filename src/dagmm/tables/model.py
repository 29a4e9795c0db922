"""Model directories written by ``dagmm fit``: a saved detector beside its table preprocessing.

A directory holds ``detector/`` (written by :func:`dagmm.save_detector`) and
``preprocessing.json`` (the :class:`~dagmm.tables.preprocess.TabularPreprocessor`
and the CLI settings).  ``dagmm score``, ``dagmm evaluate`` and ``dagmm serve``
all read them through :func:`load_table_model`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

__all__ = ["DETECTOR", "PREPROCESSING", "NumericColumns", "is_table_model", "load_scoring_model", "load_table_model"]

PREPROCESSING = "preprocessing.json"
DETECTOR = "detector"


def _recovered(path: Union[str, os.PathLike]) -> Path:
    """``path``, put back first if a ``dagmm fit`` killed between two renames left it missing."""
    from ..persistence import recover_directory

    path = Path(path)
    if os.path.lexists(path) or not path.parent.is_dir():
        return path
    found = recover_directory(path, marker=PREPROCESSING)
    return path if os.path.lexists(path) else found


def is_table_model(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a directory written by ``dagmm fit`` (it has ``preprocessing.json``)."""
    return (_recovered(path) / PREPROCESSING).is_file()


def load_table_model(model_dir: Union[str, os.PathLike]) -> tuple[Any, Any, dict]:
    """``(detector, preprocessor, settings)`` of a ``dagmm fit`` directory.

    Raises
    ------
    FileNotFoundError
        If the directory or its ``preprocessing.json`` is missing.
    ValueError
        If the detector has no threshold.
    """
    import dagmm

    from .preprocess import TabularPreprocessor

    path = _recovered(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"No model directory at {model_dir}")
    settings_file = path / PREPROCESSING
    if not settings_file.is_file():
        raise FileNotFoundError(f"{model_dir} has no {PREPROCESSING}: it was not written by `dagmm fit`.")
    with open(settings_file, encoding="utf-8") as fh:
        settings = json.load(fh)
    pre = TabularPreprocessor.from_dict(settings["preprocessor"])
    od = dagmm.load_detector(str(path / DETECTOR))
    if od.threshold is None:
        raise ValueError(f"The detector in {model_dir} has no threshold.")
    return od, pre, settings


class NumericColumns:
    """The table input of a detector saved from Python: numeric columns, no preprocessing.

    Columns are looked up by the detector's ``feature_names_in_`` when it was
    fitted on a DataFrame; otherwise every column of the file except ``skip``
    (the id or label column) is used in file order and their number must be
    the detector's feature count.  Values are passed unscaled: the detector
    applies its own standardisation, as ``detector.score`` does.
    """

    categorical_columns: list = []

    def __init__(self, detector: Any, skip: Sequence[str] = ()) -> None:
        self.detector = detector
        self.names = getattr(detector, "feature_names_in_", None)
        shape = getattr(detector, "feature_shape_", None)
        if shape is None and hasattr(detector, "n_features_in_"):
            shape = (detector.n_features_in_,)
        if shape is not None and len(shape) != 1:
            raise ValueError(f"The detector was fitted on rows of shape {tuple(shape)}, not on table rows; "
                             "score it from Python.")
        self.n_features = None if shape is None else int(shape[0])
        self.skip = [c for c in skip if c]

    def transform(self, df: Any, row_offset: int = 0) -> np.ndarray:
        """The numeric feature columns of ``df`` as float64 (N, F); errors name the column and rows."""
        if self.names is not None:
            missing = [c for c in self.names if c not in df.columns]
            if missing:
                raise ValueError(f"Column(s) {', '.join(map(repr, missing[:10]))} that the detector was fitted on "
                                 f"are not in the data (it has {', '.join(map(repr, map(str, df.columns[:20])))}).")
            cols = list(self.names)
        else:
            cols = [c for c in df.columns if c not in set(self.skip)]
            if self.n_features is not None and len(cols) != self.n_features:
                raise ValueError(
                    f"The detector takes {self.n_features} numeric columns (it was fitted on an array, so columns "
                    f"are taken in file order), but the data has {len(cols)} besides the id/label column: "
                    f"{', '.join(map(repr, map(str, cols[:20])))}. Pass a file with exactly those columns.")
        rows = np.arange(row_offset, row_offset + len(df))
        out = np.empty((len(df), len(cols)), dtype=np.float64)
        for j, c in enumerate(cols):
            col = df[c]
            try:
                out[:, j] = col.to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"Column {str(c)!r} holds non-numeric values; a detector saved from Python scores "
                                 "numeric columns only (use `dagmm fit` for tables with text columns).") from None
            bad = ~np.isfinite(out[:, j])
            if bad.any():
                shown = ", ".join(str(int(r)) for r in rows[bad][:10]) + (", ..." if bad.sum() > 10 else "")
                raise ValueError(f"Column {str(c)!r} has NaN or infinite values in {int(bad.sum())} row(s): {shown}. "
                                 "A blank cell is NaN: impute them first.")
        return out


def load_scoring_model(model_dir: Union[str, os.PathLike], skip: Sequence[str] = ()) -> tuple[Any, Any, dict]:
    """``(detector, input, settings)`` for ``dagmm score`` / ``evaluate``.

    A ``dagmm fit`` directory gives its :class:`TabularPreprocessor`; a
    directory written by :func:`dagmm.save_detector` gives
    :class:`NumericColumns` and empty settings.
    """
    import dagmm

    path = _recovered(model_dir)
    if (path / PREPROCESSING).is_file():
        return load_table_model(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No model directory at {model_dir}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no {PREPROCESSING} (written by `dagmm fit`) and no config.json "
                                "(written by dagmm.save_detector): it is not a model directory.")
    od = dagmm.load_detector(str(path))
    if getattr(od, "threshold", None) is None:
        raise ValueError(f"The detector in {model_dir} has no threshold: call od.infer_threshold(X) before "
                         "saving it, or set od.threshold.")
    return od, NumericColumns(od, skip), {}

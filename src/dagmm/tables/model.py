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
from typing import Any, Union

__all__ = ["DETECTOR", "PREPROCESSING", "is_table_model", "load_table_model"]

PREPROCESSING = "preprocessing.json"
DETECTOR = "detector"


def is_table_model(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a directory written by ``dagmm fit`` (it has ``preprocessing.json``)."""
    return (Path(path) / PREPROCESSING).is_file()


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

    path = Path(model_dir)
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

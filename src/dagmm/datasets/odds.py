"""Thyroid and Arrhythmia from the ODDS library (Rayana, 2016), as MATLAB files."""

from __future__ import annotations

import os
from typing import Union

import numpy as np

from ._fetch import fetch

__all__ = ["ODDS_FILES", "load_arrhythmia", "load_thyroid"]

#: name -> (canonical URL from the ODDS pages at http://odds.cs.stonybrook.edu/, SHA-256, shape, anomalies)
ODDS_FILES = {
    "thyroid": ("https://www.dropbox.com/s/bih0e15a0fukftb/thyroid.mat?dl=1",
                "49155d7861b977e90808faf68343ff67a67f63090c2744d514dbb67ac68e7e33", (3772, 6), 93),
    "arrhythmia": ("https://www.dropbox.com/s/lmlwuspn1sey48r/arrhythmia.mat?dl=1",
                   "e4d47e499591ae31e5d7f0cd983367092353eac240f48e14c9b36457edb3460d", (452, 274), 66),
}


def _load(name: str, data_home: Union[None, str, os.PathLike], download: bool) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    url, checksum, shape, _ = ODDS_FILES[name]
    path = fetch(data_home, f"odds/{name}.mat", url, checksum, download, f"load_{name}")
    mat = loadmat(path)
    if "X" not in mat or "y" not in mat or mat["X"].shape != shape:
        raise ValueError(f"{path} is not the ODDS {name} file: expected X of shape {shape} and y.")
    X = np.ascontiguousarray(mat["X"], dtype=np.float32)
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    return X, y


def load_thyroid(data_home: Union[None, str, os.PathLike] = None, download: bool = False,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """ODDS Thyroid: 3,772 rows, 6 continuous features, 93 anomalies (2.5%).

    Parameters
    ----------
    data_home : path, optional
        Cache folder; default ``$DAGMM_DATA`` or ``~/.cache/dagmm``.  The file
        is read from ``<data_home>/odds/thyroid.mat``.
    download : bool, default False
        Fetch it from the ODDS link in :data:`ODDS_FILES` when missing
        (checked against its SHA-256).

    Returns
    -------
    X : float32 ndarray, shape (3772, 6), unscaled.
    y : int64 ndarray, shape (3772,), 1 = anomaly.
    """
    return _load("thyroid", data_home, download)


def load_arrhythmia(data_home: Union[None, str, os.PathLike] = None, download: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """ODDS Arrhythmia: 452 rows, 274 features, 66 anomalies (15%).

    Parameters
    ----------
    data_home : path, optional
        Cache folder; default ``$DAGMM_DATA`` or ``~/.cache/dagmm``.  The file
        is read from ``<data_home>/odds/arrhythmia.mat``.
    download : bool, default False
        Fetch it from the ODDS link in :data:`ODDS_FILES` when missing
        (checked against its SHA-256).

    Returns
    -------
    X : float32 ndarray, shape (452, 274), unscaled.
    y : int64 ndarray, shape (452,), 1 = anomaly.
    """
    return _load("arrhythmia", data_home, download)

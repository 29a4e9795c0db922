"""KDD Cup 1999 (10% file) in the DAGMM task, and KDDCUP-Rev.

Encoding (fixed, so results are comparable between runs and machines):

* the 34 continuous columns of ``kddcup.names`` come first, raw, in file order;
* then the one-hot encoding of all 7 symbolic columns, in file order
  (``protocol_type`` 3, ``service`` 66, ``flag`` 11, ``land`` 2, ``logged_in`` 2,
  ``is_host_login`` 1, ``is_guest_login`` 2 values), each column's values sorted:
  87 columns.

That gives :data:`KDDCUP99_N_FEATURES` = 121 features.  Nothing is dropped:
``num_outbound_cmds`` and the single ``is_host_login`` indicator are constant
in the 10% file (the paper reports 120 features, presumably one of these two
removed).  Constant columns carry no information and every scaler of
:func:`dagmm.datasets.protocol_split` maps them to 0, so they do not change a
detector's result.
"""

from __future__ import annotations

import gzip
from typing import Union
import os

import numpy as np

from ._fetch import fetch

__all__ = [
    "KDDCUP99_COLUMNS",
    "KDDCUP99_N_CONTINUOUS",
    "KDDCUP99_N_FEATURES",
    "KDDCUP99_SHA256",
    "KDDCUP99_SYMBOLIC",
    "KDDCUP99_URL",
    "KDDCUP_REV_N_ANOMALIES",
    "load_kddcup99",
]

KDDCUP99_URL = "http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz"
KDDCUP99_SHA256 = "8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561"
_RELPATH = "kddcup99/kddcup.data_10_percent.gz"

#: The 41 feature columns of ``kddcup.names``, in file order.
KDDCUP99_COLUMNS = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment",
    "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted",
    "num_root", "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds",
    "is_host_login", "is_guest_login", "count", "srv_count", "serror_rate", "srv_serror_rate",
    "rerror_rate", "srv_rerror_rate", "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate",
    "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
)
#: The columns ``kddcup.names`` marks as symbolic; they are one-hot encoded.
KDDCUP99_SYMBOLIC = ("protocol_type", "service", "flag", "land", "logged_in", "is_host_login", "is_guest_login")
KDDCUP99_N_CONTINUOUS = len(KDDCUP99_COLUMNS) - len(KDDCUP99_SYMBOLIC)  # 34, the first columns of X
KDDCUP99_N_FEATURES = 121
#: Attacks drawn as anomalies for KDDCUP-Rev (20% of the result, as in the paper).
KDDCUP_REV_N_ANOMALIES = 24_319


def _read(path: os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    with gzip.open(path, "rt") as f:
        df = pd.read_csv(f, header=None, names=[*KDDCUP99_COLUMNS, "label"])
    if df.shape[1] != len(KDDCUP99_COLUMNS) + 1 or df.isna().any().any():
        raise ValueError(f"{path} is not the KDD Cup 1999 file: expected 42 complete columns per row.")
    continuous = [c for c in KDDCUP99_COLUMNS if c not in KDDCUP99_SYMBOLIC]
    parts = [df[continuous].to_numpy(np.float32)]
    for col in KDDCUP99_SYMBOLIC:
        values = df[col].astype(str)
        cats = np.sort(values.unique())
        codes = np.searchsorted(cats, values.to_numpy())
        parts.append(np.eye(len(cats), dtype=np.float32)[codes])  # (N, n_values)
    X = np.ascontiguousarray(np.concatenate(parts, axis=1))
    normal = (df["label"].to_numpy() == "normal.")
    return X, normal


def load_kddcup99(data_home: Union[None, str, os.PathLike] = None, download: bool = False, rev: bool = False,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """KDD Cup 1999 (10%) in the DAGMM task, or KDDCUP-Rev.

    Parameters
    ----------
    data_home : path, optional
        Cache folder; default ``$DAGMM_DATA`` or ``~/.cache/dagmm``.  The file
        is read from ``<data_home>/kddcup99/kddcup.data_10_percent.gz``.
    download : bool, default False
        Fetch the file from :data:`KDDCUP99_URL` (2 MiB) when it is missing;
        it is checked against :data:`KDDCUP99_SHA256`.
    rev : bool, default False
        KDDCUP-Rev: all ``normal.`` rows are the normal class and
        :data:`KDDCUP_REV_N_ANOMALIES` attack rows drawn at random (with
        ``seed``) are the anomalies.  Rows keep their file order.
    seed : int, default 0
        Seed of the attack sample; ignored when ``rev`` is False.

    Returns
    -------
    X : float32 ndarray, shape (494021, 121) or (121597, 121)
        Unscaled: continuous columns raw, then one-hot indicators (see the
        module docstring for the exact layout).
    y : int64 ndarray, shape (N,)
        1 = anomaly.  In the DAGMM task the ``normal.`` traffic (97,278 rows,
        19.69%) is the anomaly class; with ``rev=True`` the sampled attacks are.

    Raises
    ------
    FileNotFoundError
        The file is not cached and ``download`` is False.
    """
    path = fetch(data_home, _RELPATH, KDDCUP99_URL, KDDCUP99_SHA256, download, "load_kddcup99")
    X, normal = _read(path)
    if not rev:
        return X, normal.astype(np.int64)
    keep = rev_rows(normal, seed)
    return X[keep], (~normal[keep]).astype(np.int64)


def rev_rows(normal: np.ndarray, seed: int) -> np.ndarray:
    """File rows of KDDCUP-Rev, in file order: every ``normal.`` row and a seeded draw of the attacks.

    ``normal`` is the (N,) boolean mask of the file's ``normal.`` rows; ``load_kddcup99(rev=True,
    seed=seed)`` returns exactly these rows.
    """
    attacks = np.flatnonzero(~normal)
    drawn = np.random.default_rng(seed).choice(attacks, size=KDDCUP_REV_N_ANOMALIES, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(normal), drawn]))

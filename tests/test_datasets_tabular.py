"""Tabular loaders (KDDCUP, KDDCUP-Rev, Thyroid, Arrhythmia) and the protocol splits."""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from dagmm.datasets import kddcup99, load_arrhythmia, load_kddcup99, load_thyroid, odds, protocol_split
from dagmm.datasets.kddcup99 import KDDCUP99_COLUMNS, KDDCUP99_N_CONTINUOUS, KDDCUP99_SYMBOLIC, rev_rows


@pytest.fixture(scope="module")
def kdd(request):
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (it lives in ../shared/data beside the repo)")
    return load_kddcup99(SHARED_DATA)


# ----------------------------------------------------------------- loaders
def test_kddcup99_shape_labels_and_encoding(kdd, shared_data):
    X, y = kdd
    assert X.shape == (494021, 121) and X.dtype == np.float32 and y.dtype == np.int64
    assert int(y.sum()) == 97278  # the `normal.` rows are the anomaly class
    # the width is 34 continuous columns plus one indicator per value of each symbolic column
    with gzip.open(shared_data / "kddcup99" / "kddcup.data_10_percent.gz", "rt") as f:
        rows = list(csv.reader(f))
    sym_idx = [KDDCUP99_COLUMNS.index(c) for c in KDDCUP99_SYMBOLIC]
    n_values = [len({r[i] for r in rows}) for i in sym_idx]
    assert n_values == [3, 66, 11, 2, 2, 1, 2]
    assert X.shape[1] == KDDCUP99_N_CONTINUOUS + sum(n_values) == 34 + 87
    # every row has exactly one indicator on per symbolic column
    np.testing.assert_array_equal(X[:, 34:].sum(1), np.full(len(X), 7.0, dtype=np.float32))
    np.testing.assert_array_equal(y, [r[-1] == "normal." for r in rows])
    cont_idx = [i for i in range(41) if i not in sym_idx]
    for k in (0, 12345, len(rows) - 1):
        np.testing.assert_allclose(X[k, :34], [float(rows[k][i]) for i in cont_idx], rtol=1e-6)
        # protocol_type comes first among the indicators, its values sorted: icmp, tcp, udp
        assert X[k, 34:37].tolist() == [float(rows[k][1] == v) for v in ("icmp", "tcp", "udp")]


def test_kddcup_rev_composition_and_seed(kdd, shared_data):
    X_all, y_all = kdd
    X, y = load_kddcup99(shared_data, rev=True, seed=3)
    assert X.shape == (97278 + 24319, 121) and int(y.sum()) == 24319
    normal_rows = X_all[y_all == 1]  # `normal.` traffic
    np.testing.assert_array_equal(X[y == 0], normal_rows)  # all of it, in file order
    X2, y2 = load_kddcup99(shared_data, rev=True, seed=3)
    np.testing.assert_array_equal(X, X2)
    X3, _ = load_kddcup99(shared_data, rev=True, seed=4)
    assert not np.array_equal(X, X3)
    # rev_rows names the file rows the benchmark labels by attack type: the same rows, in file order
    rows = rev_rows(y_all == 1, 3)
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(X_all[rows], X)


def test_odds_loaders(shared_data):
    X, y = load_thyroid(shared_data)
    assert X.shape == (3772, 6) and X.dtype == np.float32 and int(y.sum()) == 93 and set(np.unique(y)) == {0, 1}
    X, y = load_arrhythmia(shared_data)
    assert X.shape == (452, 274) and int(y.sum()) == 66 and y.dtype == np.int64


def test_data_home_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("DAGMM_DATA", str(shared_data))
    assert load_thyroid()[0].shape == (3772, 6)


def test_missing_file_explains_where_and_how(tmp_path):
    where = tmp_path / "odds" / "thyroid.mat"
    with pytest.raises(FileNotFoundError, match=r"load_thyroid\(download=True\) to fetch it from https://") as err:
        load_thyroid(tmp_path)
    assert str(where) in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"kddcup.data_10_percent.gz not found. Call load_kddcup99"):
        load_kddcup99(tmp_path)


def test_download_verifies_checksum_and_writes_atomically(tmp_path, shared_data, monkeypatch):
    src = shared_data / "odds" / "arrhythmia.mat"
    url, checksum, shape, n = odds.ODDS_FILES["arrhythmia"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == checksum
    monkeypatch.setitem(odds.ODDS_FILES, "arrhythmia", (src.as_uri(), "0" * 64, shape, n))
    home = tmp_path / "cache"
    with pytest.raises(OSError, match="expected 0000"):
        load_arrhythmia(home, download=True)
    assert not any(p.is_file() for p in home.rglob("*"))  # the bad download was deleted
    monkeypatch.setitem(odds.ODDS_FILES, "arrhythmia", (src.as_uri(), checksum, shape, n))
    X, y = load_arrhythmia(home, download=True)
    assert X.shape == (452, 274) and (home / "odds" / "arrhythmia.mat").is_file()
    assert [p.name for p in (home / "odds").iterdir()] == ["arrhythmia.mat"]
    # KDD uses the same machinery with its own URL and checksum
    kdd_src = tmp_path / "server" / "kdd.gz"
    kdd_src.parent.mkdir()
    shutil.copy(shared_data / "kddcup99" / "kddcup.data_10_percent.gz", kdd_src)
    monkeypatch.setattr(kddcup99, "KDDCUP99_URL", kdd_src.as_uri())
    X, y = load_kddcup99(home, download=True)
    assert int(y.sum()) == 97278


# --------------------------------------------------------------- protocols
@pytest.fixture
def labelled(rng):
    """Rows tagged by their index in column 0, 20% anomalies."""
    n = 1001
    X = np.column_stack([np.arange(n), rng.normal(5.0, 3.0, size=(n, 3))]).astype(np.float32)
    y = (rng.random(n) < 0.2).astype(np.int64)
    return X, y


def test_protocol_a_composition(labelled):
    X, y = labelled
    X_train, X_test, y_test = protocol_split(X, y, "A", seed=1, scaler=None)
    train_ids, test_ids = X_train[:, 0].astype(int), X_test[:, 0].astype(int)
    assert len(test_ids) == len(X) - len(X) // 2  # the other half, whole
    np.testing.assert_array_equal(y_test, y[test_ids])  # natural ratio, labels aligned
    assert (y[train_ids] == 0).all()  # normal rows only
    # the training rows are exactly the normal rows of the complementary half
    rest = np.setdiff1d(np.arange(len(X)), test_ids)
    np.testing.assert_array_equal(np.sort(train_ids), rest[y[rest] == 0])


@pytest.mark.parametrize("protocol", ["B", "C"])
def test_protocol_b_c_composition(labelled, protocol):
    X, y = labelled
    X_train, X_test, y_test = protocol_split(X, y, protocol, seed=1, scaler=None)
    train_ids, test_ids = X_train[:, 0].astype(int), X_test[:, 0].astype(int)
    normal = np.flatnonzero(y == 0)
    assert len(train_ids) == len(normal) // 2 and (y[train_ids] == 0).all()
    assert set(test_ids) == (set(normal) - set(train_ids)) | set(np.flatnonzero(y == 1))
    np.testing.assert_array_equal(y_test, y[test_ids])


def test_protocol_seed_determinism(labelled):
    X, y = labelled
    a = protocol_split(X, y, "A", seed=5)
    b = protocol_split(X, y, "A", seed=5)
    c = protocol_split(X, y, "A", seed=6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(protocol_split(X, y, "B", seed=5)[0], protocol_split(X, y, "C", seed=5)[0])


@pytest.mark.parametrize("scaler, reference", [("zscore", StandardScaler), ("minmax", MinMaxScaler)])
def test_scaler_uses_training_statistics_only(labelled, scaler, reference):
    X, y = labelled
    raw_train, raw_test, _ = protocol_split(X, y, "A", seed=2, scaler=None)
    X_train, X_test, _ = protocol_split(X, y, "A", seed=2, scaler=scaler)
    ref = reference().fit(raw_train.astype(np.float64))
    np.testing.assert_allclose(X_train, ref.transform(raw_train), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(X_test, ref.transform(raw_test), rtol=1e-5, atol=1e-5)
    # statistics of the whole data would give something else
    full = reference().fit(X.astype(np.float64))
    assert not np.allclose(X_test, full.transform(raw_test), atol=1e-3)


def test_scale_columns_and_constant_columns(labelled):
    X, y = labelled
    X = np.column_stack([X, np.ones(len(X), dtype=np.float32)])
    raw_train, raw_test, _ = protocol_split(X, y, "C", seed=0, scaler=None)
    X_train, X_test, _ = protocol_split(X, y, "C", seed=0, scaler="zscore", scale_columns=[1, 2, 4])
    np.testing.assert_array_equal(X_train[:, [0, 3]], raw_train[:, [0, 3]])  # left alone
    ref = StandardScaler().fit(raw_train[:, [1, 2]].astype(np.float64))
    np.testing.assert_allclose(X_test[:, [1, 2]], ref.transform(raw_test[:, [1, 2]]), rtol=1e-5, atol=1e-5)
    assert (X_train[:, 4] == 0).all() and (X_test[:, 4] == 0).all()  # constant column: divisor 1, no NaN


def test_fit_scaler_is_the_split_scaling_and_rejects_unknown_names(labelled):
    from dagmm.datasets import fit_scaler, protocol_indices

    X, y = labelled
    train, test = protocol_indices(y, "A", seed=3)
    X_train, X_test, _ = protocol_split(X, y, "A", seed=3, scaler="minmax")
    transform = fit_scaler(X[train], "minmax")
    np.testing.assert_array_equal(transform(X[train]), X_train)
    np.testing.assert_array_equal(transform(X[test]), X_test)
    np.testing.assert_array_equal(fit_scaler(X[train], None)(X[test]), X[test].astype(np.float32))
    with pytest.raises(ValueError, match="scaler must be 'zscore', 'minmax' or None, got 'robust'"):
        fit_scaler(X[train], "robust")


def test_protocol_split_errors(labelled):
    X, y = labelled
    with pytest.raises(ValueError, match="protocol must be 'A', 'B' or 'C', got 'D'"):
        protocol_split(X, y, "D")
    with pytest.raises(ValueError, match="scaler must be 'zscore', 'minmax' or None, got 'robust'"):
        protocol_split(X, y, scaler="robust")
    with pytest.raises(ValueError, match="y has 3 labels but X has 1001 rows"):
        protocol_split(X, y[:3])
    with pytest.raises(ValueError, match=r"y must contain only 0 \(normal\) and 1 \(anomaly\)"):
        protocol_split(X, y * 2)


def test_protocol_indices_match_split(labelled):
    from dagmm.datasets import protocol_indices

    X, y = labelled
    train, test = protocol_indices(y, "A", seed=4)
    X_train, X_test, y_test = protocol_split(X, y, "A", seed=4, scaler=None)
    np.testing.assert_array_equal(X_train[:, 0], train)
    np.testing.assert_array_equal(X_test[:, 0], test)

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagmm.tables.preprocess import TabularPreprocessor
from dagmm.tables.tableio import ChunkWriter, iter_table, read_table, table_format


@pytest.fixture
def frame(rng):
    n = 50
    return pd.DataFrame({
        "id": np.arange(n),
        "bytes": rng.normal(100, 10, n),
        "proto": rng.choice(["tcp", "udp", "icmp"], n),
        "flag": rng.random(n) > 0.5,
        "y": rng.integers(0, 2, n),
    })


def test_encoding_matches_pandas_and_sklearn(frame):
    from sklearn.preprocessing import StandardScaler

    pre = TabularPreprocessor(exclude=["id"], label_column="y").fit(frame)
    X = pre.transform(frame)
    assert pre.feature_columns_ == ["bytes", "proto", "flag"]
    assert pre.output_names() == ["bytes", "proto=icmp", "proto=tcp", "proto=udp", "flag=False", "flag=True"]
    np.testing.assert_allclose(X[:, 0], StandardScaler().fit_transform(frame[["bytes"]])[:, 0], rtol=1e-5)
    onehot = pd.get_dummies(frame["proto"]).to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(X[:, 1:4], onehot)
    assert X.dtype == np.float32 and X.shape == (50, 6)


def test_column_order_and_json_round_trip(frame, tmp_path):
    pre = TabularPreprocessor(exclude=["id"], label_column="y").fit(frame)
    pre.save(tmp_path / "p.json")
    again = TabularPreprocessor.load(tmp_path / "p.json")
    shuffled = frame[["y", "flag", "proto", "id", "bytes"]]
    np.testing.assert_array_equal(again.transform(shuffled), pre.transform(frame))


def test_unseen_category_is_all_zero(frame):
    pre = TabularPreprocessor(columns=["proto"]).fit(frame)
    new = pd.DataFrame({"proto": ["sctp", "tcp"]})
    np.testing.assert_array_equal(pre.transform(new), [[0, 0, 0], [0, 1, 0]])


def test_errors(frame):
    with pytest.raises(ValueError, match=r"Column\(s\) 'nope' from --columns not found; the data has columns 'id'"):
        TabularPreprocessor(columns=["nope"]).fit(frame)
    bad = frame.copy()
    bad.loc[[3, 7], "bytes"] = np.nan
    with pytest.raises(ValueError, match=r"Column 'bytes' has NaN or infinite values in 2 row\(s\): 3, 7\."):
        TabularPreprocessor().fit(bad)
    pre = TabularPreprocessor(exclude=["id"]).fit(frame)
    with pytest.raises(ValueError, match=r"in 2 row\(s\): 103, 107\."):
        pre.transform(bad, row_offset=100)
    with pytest.raises(ValueError, match=r"from the fitted model's columns not found"):
        pre.transform(frame.drop(columns=["proto"]))
    d = pre.to_dict()
    d["format_version"] = 99
    with pytest.raises(ValueError, match="newer than this dagmm supports"):
        TabularPreprocessor.from_dict(d)


@pytest.mark.parametrize("ext", [".csv", ".csv.gz", ".parquet", ".npy"])
def test_read_and_chunked_read_agree(tmp_path, rng, ext):
    arr = rng.normal(size=(23, 3))
    df = pd.DataFrame(arr, columns=["0", "1", "2"])
    path = str(tmp_path / f"d{ext}")
    if ext == ".npy":
        np.save(path, arr)
    elif ext == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    whole = read_table(path)
    chunks = list(iter_table(path, chunk_rows=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert chunks[-1].index[0] == 20
    np.testing.assert_allclose(pd.concat(chunks).to_numpy(), whole.to_numpy())
    np.testing.assert_allclose(whole.to_numpy(dtype=float), arr)


def test_table_errors_and_writer(tmp_path):
    with pytest.raises(ValueError, match=r"Unsupported file type 'x.txt'"):
        table_format("x.txt")
    with pytest.raises(FileNotFoundError, match="No such file"):
        read_table(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="Cannot read .* as parquet"):
        read_table(str(tmp_path / "bad.parquet"))
    for ext in (".csv", ".parquet"):
        out = str(tmp_path / f"s{ext}")
        w = ChunkWriter(out)
        w.write(pd.DataFrame({"row": [0, 1], "score": [0.5, 1.5]}))
        w.write(pd.DataFrame({"row": [2], "score": [2.5]}))
        w.close()
        np.testing.assert_allclose(read_table(out)["score"], [0.5, 1.5, 2.5])

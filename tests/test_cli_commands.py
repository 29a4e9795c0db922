"""Every ``dagmm`` subcommand in a subprocess, on small files written to tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score


def dagmm_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagmm", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _events(n: int, seed: int, n_outliers: int = 0) -> pd.DataFrame:
    """Rows of a small event table: 3 numeric columns, 2 categorical ones, an id and a label."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    df = pd.DataFrame({
        "event_id": [f"e{seed}-{i}" for i in range(n)],
        "bytes": 1000 + 200 * a + rng.normal(scale=20, size=n),
        "duration": 5 + a + rng.normal(scale=0.1, size=n),
        "packets": 50 + 10 * a + rng.normal(scale=1, size=n),
        "protocol": rng.choice(["tcp", "udp", "icmp"], size=n, p=[0.6, 0.3, 0.1]),
        "flag": rng.choice(["SF", "REJ"], size=n, p=[0.9, 0.1]),
        "label": 0,
    })
    if n_outliers:
        idx = rng.choice(n, n_outliers, replace=False)
        df.loc[idx, "bytes"] += rng.choice([-1, 1], n_outliers) * 1500  # breaks the bytes/duration link
        df.loc[idx, "label"] = 1
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("cli")
    train, test = _events(600, 0), _events(300, 1, n_outliers=30)
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    # Same rows, columns in another order: the model looks columns up by name.
    test[list(reversed(test.columns))].to_csv(d / "test_reordered.csv", index=False)
    test.to_parquet(d / "test.parquet", index=False)
    return {"dir": d, "train": d / "train.csv", "test": d / "test.csv", "test_df": test,
            "reordered": d / "test_reordered.csv", "parquet": d / "test.parquet"}


@pytest.fixture(scope="module")
def model(files) -> Path:
    out = files["dir"] / "model"
    res = dagmm_cli("fit", str(files["train"]), "--out", str(out), "--epochs", "3", "--batch-size", "64",
                    "--n-gmm", "2", "--exclude", "event_id", "--label-column", "label", "--quiet", "--seed", "0")
    assert res.returncode == 0, res.stderr
    assert "Trained OutlierAEGMM on 600 rows x 8 features" in res.stdout
    return out


def _python_scores(model: Path, df: pd.DataFrame) -> np.ndarray:
    """The same scores through the Python API: the saved preprocessing, then the saved detector."""
    import dagmm
    from dagmm.tables.preprocess import TabularPreprocessor

    settings = json.loads((model / "preprocessing.json").read_text())
    pre = TabularPreprocessor.from_dict(settings["preprocessor"])
    return dagmm.load_detector(str(model / "detector")).score(pre.transform(df))


def test_fit_writes_model_and_threshold(model):
    settings = json.loads((model / "preprocessing.json").read_text())
    assert settings["preprocessor"]["feature_columns"] == ["bytes", "duration", "packets", "protocol", "flag"]
    assert settings["threshold_perc"] == 95.0
    info = dagmm_cli("info", str(model))
    assert info.returncode == 0, info.stderr
    assert "detector: OutlierAEGMM" in info.stdout
    import torch

    import dagmm

    assert f"saved by: dagmm {dagmm.__version__}, torch {torch.__version__}, format version 1" in info.stdout
    assert "components (n_gmm): 2" in info.stdout
    assert "2 categorical column(s) one-hot encoded" in info.stdout


def test_score_matches_python_api_in_any_column_order(files, model, tmp_path):
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    res = dagmm_cli("score", str(model), str(files["test"]), "--out", str(out_a), "--id-column", "event_id")
    assert res.returncode == 0, res.stderr
    assert dagmm_cli("score", str(model), str(files["reordered"]), "--out", str(out_b),
                     "--chunk-rows", "7").returncode == 0
    a, b = pd.read_csv(out_a), pd.read_csv(out_b)
    assert list(a.columns) == ["event_id", "score", "is_outlier"]
    assert list(b.columns) == ["row", "score", "is_outlier"]
    assert a["event_id"].tolist() == files["test_df"]["event_id"].tolist()
    assert b["row"].tolist() == list(range(300))
    expected = _python_scores(model, files["test_df"])
    # the same code on the same 300 rows in one batch; CSV round-trips float64 exactly (repr), so
    # only the 17-digit text of the scores themselves separates them (~1e-16 relative)
    np.testing.assert_allclose(a["score"], expected, rtol=1e-12)
    # Other column order, 7-row chunks: float32 matrix products round differently at another batch
    # size, so equal up to float32 precision rather than bit for bit.
    np.testing.assert_allclose(b["score"], expected, rtol=1e-4, atol=1e-5)
    import dagmm

    threshold = dagmm.load_detector(str(model / "detector")).threshold
    assert (a["is_outlier"] == (expected > threshold)).all()
    assert f"Scored 300 rows: {int(a['is_outlier'].sum())} outliers" in res.stdout


def test_score_parquet_in_and_out(files, model, tmp_path):
    out = tmp_path / "scores.parquet"
    res = dagmm_cli("score", str(model), str(files["parquet"]), "--out", str(out))
    assert res.returncode == 0, res.stderr
    got = pd.read_parquet(out)
    np.testing.assert_allclose(got["score"], _python_scores(model, files["test_df"]), rtol=1e-12)
    assert not Path(str(out) + ".partial").exists()


def test_evaluate_matches_sklearn(files, model, tmp_path):
    roc = tmp_path / "roc.png"
    res = dagmm_cli("evaluate", str(model), str(files["test"]), "--label-column", "label", "--roc", str(roc))
    assert res.returncode == 0, res.stderr
    table = dict(line.strip("|").split("|") for line in res.stdout.splitlines()
                 if line.startswith("| ") and "metric" not in line)
    table = {k.strip(): v.strip() for k, v in table.items()}
    import dagmm

    y = files["test_df"]["label"].to_numpy()
    scores = _python_scores(model, files["test_df"])
    flags = scores > dagmm.load_detector(str(model / "detector")).threshold
    p, r, f1, _ = precision_recall_fscore_support(y, flags, average="binary", zero_division=0)
    assert table["rows"] == "300" and table["outliers (labelled)"] == "30"
    assert float(table["precision"]) == pytest.approx(p, abs=1e-4)
    assert float(table["recall"]) == pytest.approx(r, abs=1e-4)
    assert float(table["F1"]) == pytest.approx(f1, abs=1e-4)
    assert float(table["AUROC"]) == pytest.approx(roc_auc_score(y, scores), abs=1e-4)
    assert float(table["AUPRC"]) == pytest.approx(average_precision_score(y, scores), abs=1e-4)
    assert roc.stat().st_size > 1000


def test_threshold_data_and_ae_detector(files, tmp_path):
    out = tmp_path / "ae"
    res = dagmm_cli("fit", str(files["train"]), "--out", str(out), "--detector", "ae", "--epochs", "2",
                    "--exclude", "event_id", "--label-column", "label", "--threshold-data", str(files["test"]),
                    "--threshold-perc", "90", "--quiet")
    assert res.returncode == 0, res.stderr
    import dagmm

    od = dagmm.load_detector(str(out / "detector"))
    assert type(od).__name__ == "OutlierAE"
    scores = _python_scores(out, files["test_df"])[1]
    assert od.threshold == pytest.approx(np.percentile(scores, 90), rel=1e-6)


def test_refit_replaces_model_and_refuses_foreign_directory(files, tmp_path):
    foreign = tmp_path / "not_a_model"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    res = dagmm_cli("fit", str(files["train"]), "--out", str(foreign), "--epochs", "1", "--quiet",
                    "--exclude", "event_id", "--label-column", "label")
    assert res.returncode == 1
    assert "is not a dagmm model directory" in res.stderr
    assert (foreign / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".dagmm-new-*"))  # the finished model was cleaned up, not left behind


@pytest.mark.parametrize("case", ["missing", "format", "column", "nan", "newer", "no_model", "bad_int"])
def test_errors_are_one_line_with_exit_codes(case, files, model, tmp_path):
    if case == "missing":
        res = dagmm_cli("fit", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m"))
        code, msg = 1, "dagmm fit: error: No such file: "
    elif case == "format":
        (tmp_path / "data.txt").write_text("a,b\n1,2\n")
        res = dagmm_cli("score", str(model), str(tmp_path / "data.txt"), "--out", str(tmp_path / "s.csv"))
        code, msg = 1, "Unsupported file type"
    elif case == "column":
        res = dagmm_cli("fit", str(files["train"]), "--out", str(tmp_path / "m"), "--columns", "bytes,nope")
        code, msg = 1, "nope"
    elif case == "nan":
        df = files["test_df"].copy()
        df.loc[[3, 250], "duration"] = np.nan
        df.to_csv(tmp_path / "nan.csv", index=False)
        res = dagmm_cli("score", str(model), str(tmp_path / "nan.csv"), "--out", str(tmp_path / "s.csv"),
                        "--chunk-rows", "100")
        code, msg = 1, "Column 'duration' has NaN or infinite values in 1 row(s): 3"
        assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()
    elif case == "newer":
        import shutil

        copy = tmp_path / "model"
        shutil.copytree(model, copy)
        cfg = copy / "detector" / "config.json"
        data = json.loads(cfg.read_text())
        data["format_version"] = 999
        cfg.write_text(json.dumps(data))
        res = dagmm_cli("info", str(copy))
        code, msg = 1, "999"
    elif case == "no_model":
        res = dagmm_cli("score", str(tmp_path), str(files["test"]), "--out", str(tmp_path / "s.csv"))
        code, msg = 1, "has no preprocessing.json"
    else:
        res = dagmm_cli("fit", str(files["train"]), "--out", str(tmp_path / "m"), "--epochs", "many")
        code, msg = 2, "invalid int value"
    assert res.returncode == code, (res.stdout, res.stderr)
    assert msg in res.stderr
    if code == 1:
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_debug_shows_traceback(tmp_path):
    res = dagmm_cli("fit", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m"), "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_npy_input(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(300, 4)).astype(np.float32))
    out = tmp_path / "m"
    assert dagmm_cli("fit", str(tmp_path / "x.npy"), "--out", str(out), "--epochs", "1", "--quiet",
                     "--n-gmm", "2").returncode == 0
    res = dagmm_cli("score", str(out), str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    assert len(pd.read_csv(tmp_path / "s.csv")) == 300

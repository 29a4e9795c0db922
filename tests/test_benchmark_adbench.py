"""benchmarks/adbench.py: the protocol (subsample, split, z-scores), the metrics, the summary and resuming."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.preprocessing import StandardScaler

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adbench.py"


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("_adbench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_trains_on_half_the_inliers_and_tests_on_the_rest(ab):
    y = np.r_[np.zeros(101, int), np.ones(9, int)]
    X = np.arange(len(y), dtype=np.float32)[:, None]  # the row index, to follow rows
    X_tr, X_te, y_te = ab.split(X, y, seed=3)
    train, test = X_tr[:, 0].astype(int), X_te[:, 0].astype(int)
    assert len(train) == 50 and (y[train] == 0).all()
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(y)
    assert y_te.sum() == 9 and (y_te == y[test]).all()
    assert not np.array_equal(ab.split(X, y, seed=4)[0], X_tr)  # the seed draws another half


def test_subsample_keeps_small_tables_and_draws_a_seeded_subset(ab):
    X = np.arange(50, dtype=np.float32)[:, None]
    y = (np.arange(50) % 5 == 0).astype(int)
    assert ab.subsample(X, y, 0, max_rows=50)[0] is X
    Xs, ys = ab.subsample(X, y, 0, max_rows=20)
    idx = Xs[:, 0].astype(int)
    assert len(idx) == 20 == len(set(idx)) and (np.diff(idx) > 0).all() and (ys == y[idx]).all()
    np.testing.assert_array_equal(ab.subsample(X, y, 0, max_rows=20)[0], Xs)


def test_zscore_matches_sklearn_standard_scaler(ab):
    rng = np.random.default_rng(0)
    X_tr = (rng.normal(size=(200, 4)) * [1, 10, 1e3, 0] + [0, 5, -7, 3]).astype(np.float32)
    X_te = rng.normal(size=(30, 4)).astype(np.float32)
    a, b = ab.zscore(X_tr, X_te)
    sc = StandardScaler().fit(X_tr.astype(np.float64))  # also maps a constant column to 0
    # float32 outputs of float64 statistics: agreement to float32 rounding of values up to ~1e3
    np.testing.assert_allclose(a, sc.transform(X_tr), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, sc.transform(X_te), rtol=1e-5, atol=1e-4)


def test_auroc_is_the_mann_whitney_statistic(ab):
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.2).astype(int)
    s = rng.normal(size=300) + y
    auroc, auprc = ab.metrics(y, s)
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auroc == pytest.approx(u / (y.sum() * (1 - y).sum()), abs=1e-12)
    # average precision by its definition: the mean over outliers of the precision at their rank
    order = np.argsort(-s)
    hits = y[order]
    prec = np.cumsum(hits) / np.arange(1, len(y) + 1)
    assert auprc == pytest.approx(prec[hits == 1].mean(), abs=1e-12)


def _row(table, method, seed, auroc, cand="-"):
    return {"suite": "x", "table": table, "seed": seed, "method": method, "candidate": cand, "auroc": auroc,
            "auprc": auroc / 2, "fit_s": 1.0, "error": None, "n_train": 1, "n_test": 2, "n_features": 3}


def test_summary_means_ranks_and_losses(ab):
    rows = []
    for seed in (0, 1):
        rows += [_row("t1", "AE", seed, 0.9, "c"), _row("t1", "IForest", seed, 0.8),
                 _row("t2", "AE", seed, 0.5 + 0.1 * seed, "c"), _row("t2", "IForest", seed, 0.9)]
    rows.append(_row("t3", "IForest", 0, 0.7))  # t3 has no AE row and only one seed: left out
    rows = [{**r, "_label": ab._label(r)} for r in rows]
    s = ab.summarise(rows, ["t1", "t2", "t3"], ["AE[c]", "IForest"], [0, 1])
    assert s["complete"] == ["t1", "t2"] and ("t3", "AE[c]") in s["missing"]
    assert s["tables"]["t2"]["AE[c]"]["auroc"] == pytest.approx(0.55)
    assert s["mean"]["AE[c]"]["auroc"] == pytest.approx((0.9 + 0.55) / 2)
    assert s["mean"]["AE[c]"]["mean_rank"] == 1.5 and s["mean"]["IForest"]["mean_rank"] == 1.5
    assert [(x["table"], x["method"]) for x in s["losses"]] == [("t2", "AE[c]")]  # 0.9 - 0.55 > 0.10


def test_run_resumes_and_reports(ab, tmp_path):
    jsonl, out = tmp_path / "runs.jsonl", tmp_path / "out"
    args = ["--suite", "defaults", "--tables", "wine", "--seeds", "2", "--methods", "AE,IForest", "--epochs", "1",
            "--jsonl", str(jsonl), "--out", str(out)]
    summary = ab.main(args)
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 4 and {json.loads(x)["candidate"] for x in lines} == {"default", "-"}
    ab.main(args)  # everything is there: nothing is run again
    assert jsonl.read_text().splitlines() == lines
    assert summary["complete"] == ["wine"]
    md = (out / "adbench.md").read_text()
    assert "| wine | defaults |" in md and "AE[default]" in md and "Command: `python benchmarks/adbench.py" in md
    data = json.loads((out / "adbench.json").read_text())
    assert len(data["runs"]) == 4 and data["meta"]["seeds"] == [0, 1]

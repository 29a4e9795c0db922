"""Files written by an earlier version still load and score the same.

``tests/data/saved-0.1-aeebcce/`` was written by commit aeebcce (before the
layered layout) with ``make.py`` in that directory.  Scoring now may take
another code path than it did then (C kernels vs torch, another summation
order), so scores are compared to float32 rounding of the network's outputs
carried through the float64 energy: rtol 1e-4 with an absolute floor of 1e-4
(energies are O(1), float32 products agree to ~1e-6 relative per layer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dagmm import DAGMM, load_detector

OLD = Path(__file__).parent / "data" / "saved-0.1-aeebcce"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((OLD / "expected.json").read_text())


@pytest.mark.parametrize("name", ["aegmm", "aegmm_paper", "ae"])
def test_old_detectors_load_and_score_the_same(name, expected):
    X = np.asarray(expected["X_test"], dtype=np.float32)
    od = load_detector(OLD / name)
    scores = od.score(X)
    scores = scores[1] if isinstance(scores, tuple) else scores
    np.testing.assert_allclose(scores, expected["scores"][name], rtol=1e-4, atol=1e-4)
    assert od.predict(X)["data"]["is_outlier"].shape == (len(X),)


def test_old_estimator_restores_and_predicts_the_same(expected):
    X = np.asarray(expected["X_test"], dtype=np.float32)
    model = DAGMM(comp_hiddens=[8, 2], est_hiddens=[6, 2])
    model.restore(str(OLD / "dagmm_tf"))
    np.testing.assert_allclose(model.predict(X), expected["scores"]["dagmm_tf"], rtol=1e-4, atol=1e-4)


def test_old_cli_model_scores_the_same(tmp_path):
    out = tmp_path / "scores.csv"
    proc = subprocess.run([sys.executable, "-m", "dagmm", "score", str(OLD / "cli_model"), str(OLD / "table.csv"),
                           "--out", str(out), "--id-column", "id"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    new, old = pd.read_csv(out), pd.read_csv(OLD / "cli_scores.csv")
    assert (new["id"] == old["id"]).all()
    np.testing.assert_allclose(new["score"], old["score"], rtol=1e-4, atol=1e-4)
    # a row exactly at the threshold could flip; none is within 1e-4 of it here
    assert (new["is_outlier"] == old["is_outlier"]).mean() == 1.0

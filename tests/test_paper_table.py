"""benchmarks/paper_table.py --quick through `dagmm bench paper`, so the benchmark cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("precision", "recall", "f1", "auroc", "auprc")


def test_quick_paper_table(tmp_path, shared_data):
    cmd = [sys.executable, "-m", "dagmm", "bench", "paper", "--quick", "--datasets", "kddcup,thyroid",
           "--data-home", str(shared_data), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "paper_table_quick.json").read_text())
    md = (tmp_path / "paper_table_quick.md").read_text()
    assert set(doc["datasets"]) == {"kddcup", "thyroid"}
    for name, entry in doc["datasets"].items():
        assert entry["runs"][-1]["quick"] is True and entry["wall_time_s"] > 0 and entry["settings"]["epochs"] == 2
        assert set(entry["results"]) == {"A", "C"}
        for protocol, methods in entry["results"].items():
            assert set(methods) == {"dagmm", "untrained", "ae", "ocsvm", "iforest"}
            for cell in methods.values():
                assert cell["n_seeds"] == 1 and len(cell["runs"]) == 1
                for k in METRICS:
                    assert 0.0 <= cell[k]["mean"] <= 1.0, (name, protocol, k)
            c = methods["dagmm"]
            if protocol == "C":  # threshold at the true anomaly count: P = R = F1
                assert c["precision"]["mean"] == pytest.approx(c["recall"]["mean"]) == pytest.approx(c["f1"]["mean"])
        a = entry["results"]["A"]
        assert a["dagmm"]["train_sq_error"] > 0 and a["untrained"]["train_sq_error"] > 0
        assert f"## {name}" in md and "Target " in md
    assert "| A | paper dagmm | 20 | 0.9297 | 0.9442 | 0.9369 |" in md
    # a later run of some cells replaces only those cells
    before = doc["datasets"]["thyroid"]["results"]["C"]
    proc = subprocess.run([*cmd[:7], "thyroid", *cmd[8:], "--methods", "iforest", "--protocols", "C", "--seeds", "2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "paper_table_quick.json").read_text())
    after = doc["datasets"]["thyroid"]["results"]
    assert set(after["C"]) == set(before) and after["C"]["dagmm"] == before["dagmm"]
    assert after["C"]["iforest"]["n_seeds"] == 2 and len(doc["datasets"]["thyroid"]["runs"]) == 2
    assert set(doc["datasets"]) == {"kddcup", "thyroid"}

def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), "--datasets", "mnist",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown dataset 'mnist'; choose from kddcup, thyroid" in proc.stderr

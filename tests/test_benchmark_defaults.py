"""benchmarks/defaults.py in its smoke mode: runs end to end and writes the documented structure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"
METHODS = ["AEGMM auto", "AE auto", "AEGMM paper", "IForest", "LOF", "OCSVM"]


def test_quick_run_writes_markdown_and_json(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "defaults.json").read_text())
    tasks = ["global-5", "dependency-10", "wine"]
    assert list(data["summary"]["tasks"]) == tasks
    assert set(data["summary"]["mean"]) == set(METHODS)
    assert len(data["runs"]) == len(tasks) * len(METHODS)
    for run in data["runs"]:
        assert 0.0 <= run["auroc"] <= 1.0 and 0.0 <= run["auprc"] <= 1.0 + 1e-12
        assert run["error"] is None, run  # every method, default deep detectors included, ran
        assert run["n_test"] > run["n_train"] * 0.9  # half the inliers plus all outliers
    for m in METHODS:
        mean = sum(data["summary"]["tasks"][t][m]["auroc"] for t in tasks) / len(tasks)
        assert abs(data["summary"]["mean"][m]["auroc"] - mean) < 1e-12
    md = (tmp_path / "defaults.md").read_text()
    assert md.startswith("# Default detectors on untuned tabular data")
    assert "Command: `python benchmarks/defaults.py --quick --out" in md
    assert "| **mean** |" in md and "## Summary" in md and md.count("| wine |") == 3

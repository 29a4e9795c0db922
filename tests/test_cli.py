import re
import subprocess
import sys


def test_demo_runs_and_reports_metrics():
    out = subprocess.run([sys.executable, "-m", "dagmm", "demo", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    m = re.search(r"precision ([\d.]+)\s+recall ([\d.]+)\s+F1 ([\d.]+)\s+AUROC ([\d.]+)", out.stdout)
    assert m, out.stdout
    assert 0.9 < float(m.group(4)) <= 1.0  # the default demo must show a working detector


def test_unknown_command_is_usage_error():
    out = subprocess.run([sys.executable, "-m", "dagmm", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr

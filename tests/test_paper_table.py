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


def _bench():
    """benchmarks/paper_table.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "benchmarks" / "paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validation_trains_the_full_runs_step_count():
    bench = _bench()
    # KDDCUP: ceil(198,000 / 1024) = 194 steps per full epoch, ceil(99,000 / 1024) = 97 on validation
    assert bench.validation_epochs(200, 1024, 198_000, 99_000) == 400
    # Thyroid: 1,839 training rows = 2 batches of 1024, the nested 920 rows one batch
    assert bench.validation_epochs(20_000, 1024, 1_839, 920) == 40_000
    assert bench.validation_epochs(10_000, 128, 193, 96) == 20_000  # Arrhythmia, batch 128
    assert bench.validation_epochs(10, 1024, 500, 500) == 10


def test_protocol_a_flags_the_papers_rho_and_runs_resume_on_matching_settings(tmp_path, shared_data, capsys):
    """The anomaly ratio of protocol A is the paper's (Thyroid 2.5%, not the file's 93 / 3772 = 2.47%);
    a resumed run reuses a logged task only when every setting matches."""
    bench = _bench()
    assert bench.PAPER_RHO == {"kddcup": 0.2, "thyroid": 0.025, "arrhythmia": 0.15, "kddcup_rev": 0.2}
    # full Thyroid, the untrained net only (one pass at lr 0): the test half has 1886 rows,
    # 0.025 * 1886 = 47.15 -> 47 flagged; the file's ratio would give 46.5 -> 46
    argv = ["--datasets", "thyroid", "--methods", "untrained", "--seeds", "1", "--data-home", str(shared_data),
            "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    log = [json.loads(line) for line in (tmp_path / "paper_table.runs.jsonl").read_text().splitlines()]
    assert [r["protocol"] for r in log] == ["A", "C"]
    assert log[0]["n_test"] == 1886 and log[0]["n_flagged"] == 47
    assert log[1]["n_flagged"] == 93  # protocol C: every anomaly is in its test set
    assert log[0]["settings"]["lambda2"] == 0.005 and log[0]["settings"]["constant"] == "keep"
    capsys.readouterr()
    assert bench.main([*argv, "--resume"]) == 0
    assert "resuming: 1 task(s) already" in capsys.readouterr().err
    assert bench.main([*argv, "--resume", "--set", "lambda2=1e-4"]) == 0
    assert "resuming: 0 task(s) already" in capsys.readouterr().err
    log = (tmp_path / "paper_table.runs.jsonl").read_text().splitlines()
    assert len(log) == 4 and json.loads(log[-1])["settings"]["lambda2"] == 1e-4
    # --from-log: the same (dataset, protocol, method, seed) in a later log replaces the earlier one
    rerun = [json.loads(line) for line in log[:2]]
    for r in rerun:
        r["f1"] = 0.123
    (tmp_path / "rerun.runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rerun))
    assert bench.main(["--datasets", "thyroid", "--methods", "untrained", "--out", str(tmp_path), "--name", "merged",
                       "--from-log", str(tmp_path / "paper_table.runs.jsonl"), str(tmp_path / "rerun.runs.jsonl")]) == 0
    cells = json.loads((tmp_path / "merged.json").read_text())["datasets"]["thyroid"]["results"]
    assert cells["A"]["untrained"]["n_seeds"] == 1 and cells["A"]["untrained"]["f1"]["mean"] == 0.123
    assert cells["C"]["untrained"]["f1"]["mean"] == 0.123


def test_paper_nets_score_with_dropout_off_and_the_whole_training_mixture():
    """The benchmark's DAGMM (the paper's nets, Dropout(0.5) in the estimation net): after fit, the
    mixture is the one of every training row with dropout off, and the energies equal scipy's
    -log sum_k phi_k N(z; mu_k, Sigma_k) under it."""
    import numpy as np
    import torch
    from scipy.stats import multivariate_normal

    bench = _bench()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    cfg = {**bench.CONFIGS["thyroid"], "epochs": 3, "batch": 64}
    det = bench.paper_dagmm(cfg, X.shape[1], seed=0)
    det.fit(X, epochs=3, batch_size=64, verbose=False, seed=0)
    model = det.aegmm
    xb = torch.from_numpy(X)
    with torch.no_grad():
        model.train()
        gamma_dropout = model(xb)[2]
        model.eval()
        _, z, gamma = model(xb)
    assert not torch.allclose(gamma_dropout, gamma)  # dropout really acts in train mode
    z, gamma = z.double().numpy(), gamma.double().numpy()
    phi = gamma.mean(0)
    mu = gamma.T @ z / gamma.sum(0)[:, None]
    cov = np.stack([(gamma[:, k, None] * (z - mu[k])).T @ (z - mu[k]) / gamma[:, k].sum() for k in range(len(phi))])
    # float32 network outputs summed in another order: relative 1e-5
    np.testing.assert_allclose(det.phi_.numpy(), phi, rtol=1e-5)
    np.testing.assert_allclose(det.mu_.numpy(), mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(det.cov_.numpy(), cov, rtol=1e-4, atol=1e-7)
    dens = sum(phi[k] * multivariate_normal(mu[k], cov[k] + det.cov_eps_ * np.eye(z.shape[1])).pdf(z)
               for k in range(len(phi)))
    np.testing.assert_allclose(det.score(X), -np.log(dens), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(det.score(X), det.score(X))


def test_score_eps_adds_its_jitter_to_the_scoring_mixture_only(capsys):
    """``--set score_eps=E``: the trained (here untrained) model's mixture is estimated again with E on the
    covariance diagonals; the energies are scipy's under Sigma_k + E I."""
    import numpy as np
    import torch
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    bench = _bench()
    rng = np.random.default_rng(1)
    X_train, X_test = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    cfg = {**bench.CONFIGS["thyroid"], "batch": 64, "score_eps": 1e-2}
    scores, _ = bench.run_method("untrained", cfg, X_train, X_test, seed=0)
    model = bench.paper_dagmm(cfg, 8, seed=0).aegmm.eval()  # the same initial weights
    with torch.no_grad():
        _, z, gamma = model(torch.from_numpy(X_train))
        z_test = model(torch.from_numpy(X_test))[1].double().numpy()
    z, gamma = z.double().numpy(), gamma.double().numpy()
    phi = gamma.mean(0)
    mu = gamma.T @ z / gamma.sum(0)[:, None]
    logp = [np.log(phi[k]) + multivariate_normal(mu[k], (gamma[:, k, None] * (z - mu[k])).T @ (z - mu[k])
                                                 / gamma[:, k].sum() + 1e-2 * np.eye(3)).logpdf(z_test)
            for k in range(len(phi))]
    # float32 network outputs, float64 algebra in another order: 1e-5 relative
    np.testing.assert_allclose(scores, -logsumexp(np.stack(logp), axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit):  # an unknown key names the optional ones among the choices
        bench.main(["--set", "nosuch=1", "--datasets", "thyroid"])
    err = capsys.readouterr().err
    assert "unknown key 'nosuch'; choose from comp, est," in err and "constant, score_eps" in err

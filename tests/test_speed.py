"""The fast paths give the same results as the plain formulas, and the speed benchmark runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dagmm.detectors.ae
from dagmm import OutlierAE, OutlierAEGMM
from dagmm._validation import check_array
from dagmm.models.gmm import sample_energy
from dagmm.training.loop import default_adam

from conftest import float64_reordered

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def test_finiteness_screen_keeps_large_finite_rows_and_names_bad_ones():
    X = np.ones((6, 4), dtype=np.float32)
    X[1] = 3e38  # finite, but the row sum overflows float32
    assert check_array(X) is not None
    X[3, 0], X[5, 2] = np.nan, -np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values .* in 2 row\(s\): 3, 5\. Impute or drop"):
        check_array(X)


def test_aegmm_score_equals_energy_of_full_forward_for_any_batch_size(tabular, monkeypatch):
    from dagmm import accel

    X_train, X_test, _ = tabular
    od = OutlierAEGMM(n_gmm=2, architecture="paper").fit(X_train[:400], epochs=2, batch_size=100, verbose=False, seed=0)
    with torch.no_grad():
        _, z, _ = od.aegmm.eval()(torch.from_numpy(X_test))  # forward with the estimation net
    ref = sample_energy(z, od.phi_, od.mu_, od.prec_chol_).numpy()
    with monkeypatch.context() as m:
        m.setattr(accel, "enabled", False)  # the modules' own code, as the forward above ran it
        whole = od.score(X_test, batch_size=10**6)  # one batch: the very same float32 network outputs
    assert whole.dtype == np.float64 and whole.shape == (len(X_test),)
    # the same float32 z; score evaluates the float64 energy from precomputed terms, sample_energy
    # directly: another order of ~D*D + K float64 operations on terms of size ~|energy| + D (D = 3
    # latent dims, K = 2), so 64 ops of EPS64 each, absolute too (an energy near 0 is made of O(1) terms)
    np.testing.assert_allclose(whole, ref, **float64_reordered(ref, 64, scale=np.abs(ref).max() + 3))
    # other batch shapes (and the C kernels, where built) round the float32 matrix products differently
    for bs in (7, 1000, 10**6):
        # (an absolute floor too: energies cross zero, where a relative bound means nothing)
        np.testing.assert_allclose(od.score(X_test, batch_size=bs), ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())


def test_ae_scores_match_plain_numpy_in_blocks(tabular, monkeypatch):
    X_train, X_test, _ = tabular
    od = OutlierAE(standardize=False).fit(X_train[:300], epochs=1, verbose=False, seed=0)
    recon = od.reconstruct(X_test, batch_size=33)
    with torch.no_grad():  # float32 products in batches of 33 (or by the C kernel) against one batch
        np.testing.assert_allclose(recon, od.ae.eval()(torch.from_numpy(X_test)).numpy(), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(dagmm.detectors.ae, "_SCORE_BLOCK_BYTES", 8 * X_test.shape[1] * 5)  # 5 rows per block
    fs, iscore = od.score(X_test, outlier_perc=30, batch_size=64)
    # bit for bit only against the same code: the reconstruction at the same batch size (64), then one
    # correctly rounded float32 subtraction and square per element (batch 33 above may round otherwise)
    np.testing.assert_array_equal(fs, np.square(X_test - od.reconstruct(X_test, batch_size=64)))
    k = int(np.ceil(0.3 * X_test.shape[1]))
    want = np.sort(fs.astype(np.float64), axis=1)[:, -k:].mean(1)
    # the same k float32 values averaged in float64 in another order (partition vs sort): k roundings
    np.testing.assert_allclose(iscore, want, **float64_reordered(want, k))


def test_default_adam_takes_the_same_steps_as_reference_adam():
    torch.manual_seed(0)
    w0 = [torch.randn(5, 3), torch.randn(3)]
    a = [torch.nn.Parameter(w.clone()) for w in w0]
    b = [torch.nn.Parameter(w.clone()) for w in w0]
    opt_a, opt_b = default_adam(a, 1e-2), torch.optim.Adam(b, lr=1e-2, foreach=False)
    for step in range(4):
        grads = [torch.randn_like(w) for w in w0]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
    assert not torch.equal(a[0].detach(), w0[0])


def test_speed_benchmark_quick_run_writes_json_and_table(tmp_path):
    spec = importlib.util.spec_from_file_location("speed_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    assert bench.main(["--synthetic", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["meta"]["quick"] is True and res["meta"]["data"].startswith("synthetic")
    names = [r["name"] for r in res["results"]]
    assert names == ["OutlierAEGMM KDDCUP net", "OutlierAE tabular MLP", "OutlierAE conv 32x32x3"]
    aegmm = res["results"][0]
    layers = aegmm["train"]["limit"]["layers"]
    # encoder 4 + decoder 4 + estimation net 2 Linear layers; no input gradient for the data
    assert [(l["in"][-1], l["out"][-1]) for l in layers][:5] == [(120, 60), (60, 30), (30, 10), (10, 1), (1, 10)]
    assert len(layers) == 10 and set(layers[0]["seconds"]) == {"forward", "grad_weight"}
    assert set(layers[1]["seconds"]) == {"forward", "grad_weight", "grad_input"}
    conv_layers = res["results"][2]["train"]["limit"]["layers"]
    assert {"Conv2d", "ConvTranspose2d", "Linear"} <= {l["layer"] for l in conv_layers}
    for r in res["results"]:
        t = r["train"]
        assert len(t["epoch_s"]) == res["meta"]["epochs"]
        for key in ("s_per_epoch", "rows_per_s", "limit_s_per_epoch", "fraction_of_limit"):
            assert t[key] > 0, (r["name"], key)
        assert t["rows_per_s"] == pytest.approx(t["rows"] / t["s_per_epoch"])
        for s in r["score"]:
            assert s["rows"] > 0 and s["seconds"] > 0 and s["fraction_of_limit"] > 0
            assert s["output_mb"] > 0 and "peak_mem_above_input_mb" in s
    assert [s["rows"] for s in aegmm["score"]][1] == 20_000
    md = out.with_suffix(".md").read_text()
    assert "| device | detector | phase |" in md and "OutlierAE conv 32x32x3" in md

"""dagmm.export_onnx and ``dagmm export``: ONNX Runtime on the written graph against the detectors' ``score``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'dagmm[onnx]'); export is not tested")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dagmm[test]'); "
                                                "the exported graphs cannot be run")

from dagmm import DAGMM, NotFittedError, OutlierAE, OutlierAEGMM, export_onnx  # noqa: E402


def _run(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})


def _close(got, ref):
    # relative 1e-4 of the scores' scale: the graph's float32 network (ONNX Runtime's products) and the
    # detector's (torch or the C kernels) round differently; energies cross zero, so the bound is on
    # the scale of the scores rather than on each one
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.fixture(scope="module")
def raw_tabular():
    """Tabular rows in their own units (not standardised), so the graph's scaling matters."""
    from dagmm.synthetic import make_outlier_data

    X, _ = make_outlier_data(n_samples=1500, n_features=10, n_clusters=1, latent_dim=2, seed=3)
    scale = np.linspace(0.5, 20.0, X.shape[1]).astype(np.float32)
    return (X * scale + 3.0).astype(np.float32)


@pytest.mark.parametrize("architecture", ["auto", "paper"])
def test_aegmm_graph_gives_the_scores(raw_tabular, tmp_path, architecture):
    X = raw_tabular
    od = OutlierAEGMM(architecture=architecture, standardize=True).fit(X[:1000], epochs=3, verbose=False, seed=0)
    od.infer_threshold(X[:1000])
    # the auto graph has the default's joint mixture of the code and the residual
    assert (od.residual_means_ is not None) == (architecture == "auto")
    path = export_onnx(od, tmp_path / "aegmm.onnx")
    (got,) = _run(path, X[1000:])
    assert got.dtype == np.float64 and got.shape == (500,)
    _close(got, od.score(X[1000:]))
    # any batch size: the graph was traced with two rows
    for n in (1, 7):
        _close(_run(path, X[:n])[0], od.score(X[:n]))
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["dagmm.threshold"]) == od.threshold
    assert meta["dagmm.detector"] == "OutlierAEGMM" and json.loads(meta["dagmm.input_shape"]) == ["N", 10]
    ops = {n.op_type for n in model.graph.node}
    assert "ReduceLogSumExp" in ops and not ops & {"PythonOp", "ATen"}


def test_paper_nets_without_standardisation(raw_tabular, tmp_path):
    X = raw_tabular / 10.0
    od = OutlierAEGMM(architecture="paper").fit(X[:1000], epochs=2, verbose=False, seed=1)
    assert od.scaler_mean_ is None
    _close(_run(export_onnx(od, tmp_path / "p.onnx"), X)[0], od.score(X))


@pytest.mark.parametrize("outlier_perc", [100.0, 30.0])
def test_ae_graph_gives_instance_and_feature_scores(raw_tabular, tmp_path, outlier_perc):
    X = raw_tabular
    od = OutlierAE().fit(X[:1000], epochs=3, verbose=False, seed=0)
    path = export_onnx(od, tmp_path / "ae.onnx", outlier_perc=outlier_perc)
    inst, feat = _run(path, X[1000:])
    feat_ref, inst_ref = od.score(X[1000:], outlier_perc=outlier_perc)
    assert feat.dtype == np.float32 and feat.shape == X[1000:].shape and inst.dtype == np.float64
    _close(inst, inst_ref)
    np.testing.assert_allclose(feat, feat_ref, rtol=1e-4, atol=1e-4 * feat_ref.max())


def test_ae_conv_graph_on_images(digits_images, tmp_path):
    X = digits_images[:400]
    od = OutlierAE().fit(X[:300], epochs=1, verbose=False, seed=0)
    inst, feat = _run(export_onnx(od, tmp_path / "img.onnx"), X[300:])
    feat_ref, inst_ref = od.score(X[300:])
    assert feat.shape == (100, 16, 16, 1)
    _close(inst, inst_ref)
    np.testing.assert_allclose(feat, feat_ref, rtol=1e-4, atol=1e-4 * feat_ref.max())


def test_dagmm_estimator_graph_includes_its_normalisation(raw_tabular, tmp_path):
    X = raw_tabular
    est = DAGMM(comp_hiddens=[16, 8, 1], est_hiddens=[10, 2], epoch_size=2, minibatch_size=128,
                random_seed=0).fit(X[:1000])
    _close(_run(export_onnx(est, tmp_path / "est.onnx"), X)[0], est.predict(X))


def test_export_errors(tmp_path, raw_tabular):
    with pytest.raises(NotFittedError, match="not fitted yet: call fit\\(X\\) before export_onnx"):
        export_onnx(OutlierAEGMM(), tmp_path / "x.onnx")
    with pytest.raises(NotFittedError, match="DAGMM is not fitted"):
        export_onnx(DAGMM(), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="expected a fitted OutlierAEGMM, OutlierAE or DAGMM, got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    od = OutlierAE().fit(raw_tabular[:200], epochs=1, verbose=False, seed=0)
    with pytest.raises(ValueError, match="opset must be an int >= 17"):
        export_onnx(od, tmp_path / "x.onnx", opset=13)
    with pytest.raises(ValueError, match="is a directory; give the .onnx file to write"):
        export_onnx(od, tmp_path)
    with pytest.raises(ValueError, match="outlier_perc must be in \\(0, 100\\]"):
        export_onnx(od, tmp_path / "x.onnx", outlier_perc=0)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_of_a_fit_directory_takes_the_encoded_columns(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    from dagmm.cli import main
    from dagmm.tables.preprocess import TabularPreprocessor

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500) * 5 + 2,
                       "c": rng.choice(["x", "y", "z"], 500), "label": rng.integers(0, 2, 500)})
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "model"
    assert main(["fit", str(tmp_path / "t.csv"), "--out", str(model), "--label-column", "label", "--epochs", "2",
                 "--quiet"]) == 0
    assert main(["export", str(model), "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "input x float32 (N, 5)" in out and "the 5 encoded columns of preprocessing.json" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    with open(model / "preprocessing.json", encoding="utf-8") as fh:
        pre = TabularPreprocessor.from_dict(json.load(fh)["preprocessor"])
    assert json.loads(meta["dagmm.input_columns"]) == pre.output_names() == ["a", "b", "c=x", "c=y", "c=z"]
    import dagmm

    od = dagmm.load_detector(str(model / "detector"))
    X = pre.transform(df)
    _close(_run(tmp_path / "m.onnx", X)[0], od.score(X))
    assert main(["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "n.onnx")]) == 1
    assert "dagmm export: error: No model directory at" in capsys.readouterr().err

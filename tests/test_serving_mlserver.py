"""The MLServer runtime (dagmm.serving.mlserver) in-process, and the deployment examples of docs/serving.md."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlserver", reason="MLServer is an optional extra: pip install '.[mlserver]' (or '.[test]')")

from mlserver.errors import MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, RequestInput, RequestOutput

import dagmm
from dagmm.cli import main as cli_main
from dagmm.serving.mlserver import DagmmRuntime

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
RTOL = 1e-5  # scores from another batch split may differ by float32 rounding


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlserver")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    ae = dagmm.OutlierAE()
    ae.fit(X, epochs=2, batch_size=128, verbose=False, seed=0)
    ae.infer_threshold(X, threshold_perc=90)
    dagmm.save_detector(ae, root / "ae")
    df = pd.DataFrame({"x": rng.normal(size=300), "kind": rng.choice(["a", "b"], size=300)})
    df.to_csv(root / "t.csv", index=False)
    assert cli_main(["fit", str(root / "t.csv"), "--out", str(root / "tab"), "--epochs", "2", "--quiet"]) == 0
    return {"root": root, "X": X, "df": df}


def _runtime(settings: dict) -> DagmmRuntime:
    runtime = DagmmRuntime(ModelSettings(**settings))
    assert asyncio.run(runtime.load()) is True
    return runtime


def _predict(runtime, inputs, parameters=None, outputs=None):
    req = InferenceRequest(inputs=inputs, parameters=parameters,
                           outputs=None if outputs is None else [RequestOutput(name=n) for n in outputs])
    resp = asyncio.run(runtime.predict(req))
    return resp, {o.name: np.asarray(o.data.root).reshape(o.shape) for o in resp.outputs}


def test_runtime_equals_predict_and_takes_default_parameters(dirs):
    runtime = _runtime({"name": "ae", "implementation": DagmmRuntime,
                        "parameters": {"uri": str(dirs["root"] / "ae"),
                                       "extra": {"predict_parameters": {"return_feature_score": True}}}})
    X = dirs["X"][:60]
    ref = dagmm.load_detector(dirs["root"] / "ae").predict(X, return_feature_score=True)["data"]
    resp, out = _predict(runtime, [RequestInput(name="input", shape=list(X.shape), datatype="FP32",
                                                data=X.ravel().tolist())])
    np.testing.assert_allclose(out["instance_score"], ref["instance_score"], rtol=RTOL)
    np.testing.assert_allclose(out["feature_score"], ref["feature_score"], rtol=RTOL)
    assert resp.parameters.name == "OutlierAE" and resp.model_name == "ae"
    # a request's own parameters win over the settings' defaults
    _, out = _predict(runtime, [RequestInput(name="input", shape=list(X.shape), datatype="FP32",
                                             data=X.ravel().tolist())], parameters={"return_feature_score": False})
    assert set(out) == {"is_outlier", "instance_score"}
    meta = asyncio.run(runtime.metadata())
    assert [i.name for i in meta.inputs] == ["input"] and meta.inputs[0].shape == [-1, 5]


def test_runtime_table_model_equals_dagmm_score(dirs, tmp_path):
    df = dirs["df"].iloc[:40]
    df.to_csv(tmp_path / "p.csv", index=False)
    out_csv = tmp_path / "s.csv"
    assert cli_main(["score", str(dirs["root"] / "tab"), str(tmp_path / "p.csv"), "--out", str(out_csv)]) == 0
    scored = pd.read_csv(tmp_path / "s.csv")
    runtime = _runtime({"name": "tab", "implementation": DagmmRuntime,
                        "parameters": {"uri": str(dirs["root"] / "tab")}})
    _, out = _predict(runtime, [RequestInput(name="x", shape=[40], datatype="FP64", data=df["x"].tolist()),
                                RequestInput(name="kind", shape=[40], datatype="BYTES", data=df["kind"].tolist())])
    np.testing.assert_allclose(out["instance_score"], scored["score"].to_numpy(), rtol=RTOL)


def test_runtime_bad_requests_are_400_with_the_message(dirs):
    runtime = _runtime({"name": "ae", "implementation": DagmmRuntime,
                        "parameters": {"uri": str(dirs["root"] / "ae"), "extra": {"max_rows": 10}}})
    cases = [
        ([RequestInput(name="input", shape=[2, 4], datatype="FP32", data=[0.0] * 8)], None, 400,
         "does not match the model's [N, 5]"),
        ([RequestInput(name="input", shape=[11, 5], datatype="FP32", data=[0.0] * 55)], None, 413,
         "limit of 10"),
        ([RequestInput(name="input", shape=[1, 5], datatype="FP32", data=[0.0] * 5)], {"treshold": 1}, 400,
         "Unknown request parameter(s) 'treshold'"),
    ]
    for inputs, params, status, message in cases:
        with pytest.raises(MLServerError) as info:
            _predict(runtime, inputs, parameters=params)
        assert info.value.status_code == status and message in str(info.value)


def test_runtime_refuses_bad_settings(dirs):
    runtime = DagmmRuntime(ModelSettings(name="ae", implementation=DagmmRuntime, parameters={
        "uri": str(dirs["root"] / "ae"), "extra": {"predict_parameters": {"return_scores": True}}}))
    with pytest.raises(MLServerError, match="predict_parameters must be an object with keys among"):
        asyncio.run(runtime.load())


def _blocks(kind: str) -> list:
    return re.findall(rf"^```{kind}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_docs_model_settings_load_and_predict(dirs, tmp_path):
    (block,) = _blocks("json")
    settings = json.loads(block)
    assert settings["implementation"] == "dagmm.serving.mlserver.DagmmRuntime"
    # the documented file, beside the model it names (relative uris resolve from the settings' folder)
    (tmp_path / "model-settings.json").write_text(block)
    shutil.copytree(dirs["root"] / "ae", tmp_path / settings["parameters"]["uri"])
    loaded = ModelSettings.parse_file(str(tmp_path / "model-settings.json"))
    # MLServer imports the class named in the file itself
    assert f"{loaded.implementation.__module__}.{loaded.implementation.__name__}" == settings["implementation"]
    runtime = loaded.implementation(loaded)
    asyncio.run(runtime.load())
    X = dirs["X"][:8]
    _, out = _predict(runtime, [RequestInput(name="input", shape=list(X.shape), datatype="FP32",
                                             data=X.ravel().tolist())])
    ref = dagmm.load_detector(dirs["root"] / "ae").predict(X)["data"]
    np.testing.assert_allclose(out["instance_score"], ref["instance_score"], rtol=RTOL)


def test_docs_manifests_parse_and_name_the_command():
    yaml = pytest.importorskip("yaml", reason="PyYAML parses the manifests")
    docs = [yaml.safe_load(b) for b in _blocks("yaml")]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Model", "InferenceService"}
    container = kinds["InferenceService"]["spec"]["predictor"]["containers"][0]
    assert container["command"][:2] == ["dagmm", "serve"]
    from dagmm.cli.main import _parser

    args = _parser().parse_args(container["command"][1:])  # the documented command line parses
    assert args.port == 8080 and args.workers == 2 and args.models == ["/mnt/models/kdd"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"

"""`dagmm serve` for real: uvicorn in a subprocess on 127.0.0.1, driven by tritonclient and httpx.

Every loop here is bounded in count and in time; nothing listens beyond loopback.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

for _module, _why in (("fastapi", "the serve extra"), ("uvicorn", "the serve extra"),
                      ("prometheus_client", "the serve extra"), ("httpx", "a test dependency"),
                      ("tritonclient.http", "a test dependency")):
    pytest.importorskip(_module, reason=f"{_module} ({_why}) is not installed: pip install '.[test]'")

import httpx
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families

import dagmm
from dagmm.cli import main as cli_main
from dagmm.serving import ServerProcess

N_FEATURES = 6
# The server runs the same detector code as this process, with the same thread count, but float32
# products may still round differently (another thread split of a batch): scores agree to float32
# rounding, 1e-5 relative, and flags are compared away from the threshold by that margin.
RTOL = 1e-5


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, N_FEATURES)).astype(np.float32)
    aegmm = dagmm.OutlierAEGMM(n_gmm=2)
    aegmm.fit(X, epochs=2, batch_size=128, verbose=False, seed=0)
    aegmm.infer_threshold(X, 90)
    ae = dagmm.OutlierAE()
    ae.fit(X, epochs=2, batch_size=128, verbose=False, seed=0)
    ae.infer_threshold(X, threshold_perc=90)
    est = dagmm.DAGMM(comp_hiddens=(8, 2), est_hiddens=(4, 2), epoch_size=2, minibatch_size=128).fit(X)
    for name, det in (("aegmm", aegmm), ("ae", ae), ("est", est)):
        dagmm.save_detector(det, root / name)
    table = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400) * 3 + 1,
                          "proto": rng.choice(["tcp", "udp", "icmp"], size=400), "label": rng.integers(0, 2, 400)})
    table.to_csv(root / "train.csv", index=False)
    assert cli_main(["fit", str(root / "train.csv"), "--out", str(root / "table"), "--epochs", "2",
                     "--label-column", "label", "--quiet"]) == 0
    return {"root": root, "X": X, "table": table, "dirs": [str(root / n) for n in ("aegmm", "ae", "est", "table")]}


@pytest.fixture(scope="module")
def server(models):
    with ServerProcess(models["dirs"], args=["--max-rows", "2000", "--max-body-mb", "1"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def triton(server):
    client = th.InferenceServerClient(server.host_port, network_timeout=30)
    yield client
    client.close()


def _close(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


def _same_flags(flags, scores, threshold):
    """Flags agree wherever the score is not within float32 rounding of the threshold."""
    clear = np.abs(scores - threshold) > RTOL * abs(threshold)
    np.testing.assert_array_equal(np.asarray(flags)[clear], (scores > threshold).astype(np.int64)[clear])
    assert clear.mean() > 0.9


def _infer_triton(client, model, X, binary, outputs=None, parameters=None, headers=None):
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    outs = None if outputs is None else [th.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    headers = None if headers is None else dict(headers)  # a copy: tritonclient adds its own headers to it
    return client.infer(model, [inp], outputs=outs, parameters=parameters, headers=headers)


def _json_input(X, name="input", datatype="FP32"):
    return {"inputs": [{"name": name, "shape": list(X.shape), "datatype": datatype, "data": X.ravel().tolist()}]}


def _binary_body(X, datatype="FP32", name="input", outputs=None):
    raw = np.ascontiguousarray(X).tobytes()
    head = {"inputs": [{"name": name, "shape": list(X.shape), "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}}]}
    if outputs:
        head["outputs"] = [{"name": n} for n in outputs]
    header = json.dumps(head).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


# ------------------------------------------------------------- the protocol
def test_health_and_metadata(http, models):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "dagmm" and meta["version"] == dagmm.__version__
    assert "binary_tensor_data" in meta["extensions"]
    ae = http.get("/v2/models/ae").json()
    assert ae["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES]}]
    assert {o["name"] for o in ae["outputs"]} == {"instance_score", "is_outlier", "feature_score"}
    assert ae["parameters"]["threshold"] == pytest.approx(dagmm.load_detector(models["dirs"][1]).threshold)
    assert http.get("/v2/models/ae/versions/1").json() == ae
    assert http.get("/v2/models/ae/versions/1/ready").json() == {"name": "ae", "ready": True}
    table = http.get("/v2/models/table").json()
    assert table["inputs"] == [{"name": "a", "datatype": "FP64", "shape": [-1]},
                               {"name": "b", "datatype": "FP64", "shape": [-1]},
                               {"name": "proto", "datatype": "BYTES", "shape": [-1]}]
    r = http.get("/v2/models/ae/versions/7")
    assert r.status_code == 404 and "has no version '7'" in r.json()["error"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_equals_in_process_predict(triton, models, binary):
    X = models["X"][:300]
    ae = dagmm.load_detector(models["dirs"][1])
    ref = ae.predict(X, return_feature_score=True)["data"]
    r = _infer_triton(triton, "ae", X, binary, outputs=["instance_score", "is_outlier", "feature_score"])
    _close(r.as_numpy("instance_score"), ref["instance_score"])
    _close(r.as_numpy("feature_score"), ref["feature_score"])
    _same_flags(r.as_numpy("is_outlier"), ref["instance_score"], ae.threshold)
    assert r.get_response()["parameters"] == {k: v for k, v in ae.meta.items() if v is not None}
    assert all(("data" in o) != binary for o in r.get_response()["outputs"])

    aegmm = dagmm.load_detector(models["dirs"][0])
    ref = aegmm.predict(X)["data"]
    r = _infer_triton(triton, "aegmm", X, binary)  # no outputs named: the defaults, binary by tritonclient's rule
    names = [o["name"] for o in r.get_response()["outputs"]]
    assert names == ["is_outlier", "instance_score"]
    _close(r.as_numpy("instance_score"), ref["instance_score"])
    _same_flags(r.as_numpy("is_outlier"), ref["instance_score"], aegmm.threshold)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton, models, algorithm):
    X = models["X"][:40]
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    r = triton.infer("aegmm", [inp], request_compression_algorithm=algorithm,
                     response_compression_algorithm=algorithm)  # asked for; an uncompressed answer is allowed
    _close(r.as_numpy("instance_score"), dagmm.load_detector(models["dirs"][0]).predict(X)["data"]["instance_score"])


def test_concurrent_clients_each_get_their_own_scores(server, models):
    # sixteen clients at once: the server batches what waits; every client must get its own rows' scores
    from concurrent.futures import ThreadPoolExecutor

    X = models["X"]
    aegmm = dagmm.load_detector(models["dirs"][0])
    chunks = [X[i * 30:(i + 1) * 30 + i] for i in range(16)]  # different sizes, 30 to 45 rows

    def call(x):
        client = th.InferenceServerClient(server.host_port, network_timeout=60)
        try:
            return [_infer_triton(client, "aegmm", x, True).as_numpy("instance_score") for _ in range(3)]
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, chunks))
    for x, got in zip(chunks, results):
        for scores in got:
            _close(scores, aegmm.predict(x)["data"]["instance_score"])


def test_table_model_equals_dagmm_score(http, triton, models, tmp_path):
    df = models["table"].iloc[:120]
    df.to_csv(tmp_path / "part.csv", index=False)
    assert cli_main(["score", models["dirs"][3], str(tmp_path / "part.csv"), "--out", str(tmp_path / "s.csv")]) == 0
    scored = pd.read_csv(tmp_path / "s.csv")
    body = {"inputs": [{"name": "a", "shape": [120], "datatype": "FP64", "data": df["a"].tolist()},
                       {"name": "proto", "shape": [120], "datatype": "BYTES", "data": df["proto"].tolist()},
                       {"name": "b", "shape": [120], "datatype": "FP64", "data": df["b"].tolist()}]}
    out = {o["name"]: o for o in http.post("/v2/models/table/infer", json=body).json()["outputs"]}
    _close(out["instance_score"]["data"], scored["score"].to_numpy())
    assert out["is_outlier"]["data"] == scored["is_outlier"].tolist()

    inputs = []
    for col, dt in (("a", "FP64"), ("b", "FP64"), ("proto", "BYTES")):
        values = df[col].to_numpy() if dt == "FP64" else df[col].to_numpy(dtype=object)
        inputs.append(th.InferInput(col, [120], dt))
        inputs[-1].set_data_from_numpy(values, binary_data=True)
    r = triton.infer("table", inputs)
    _close(r.as_numpy("instance_score"), scored["score"].to_numpy())


def test_dagmm_estimator_scores_and_needs_a_threshold_for_flags(http, models):
    X = models["X"][:50]
    est = dagmm.load_detector(models["dirs"][2])
    ref = est.predict(X)
    r = http.post("/v2/models/est/infer", json=_json_input(X)).json()
    assert [o["name"] for o in r["outputs"]] == ["instance_score"]
    _close(r["outputs"][0]["data"], ref)
    thr = float(np.median(ref))
    r = http.post("/v2/models/est/infer", json={**_json_input(X), "parameters": {"threshold": thr}}).json()
    flags = {o["name"]: o["data"] for o in r["outputs"]}["is_outlier"]
    _same_flags(flags, ref, thr)
    r = http.post("/v2/models/est/infer", json={**_json_input(X), "outputs": [{"name": "is_outlier"}]})
    assert r.status_code == 400 and "has no threshold" in r.json()["error"]


def test_request_parameters(http, models):
    X = models["X"][:200]
    ae = dagmm.load_detector(models["dirs"][1])
    fscore, iscore = ae.score(X)

    def infer(parameters, outputs=None):
        body = {**_json_input(X), "parameters": parameters}
        if outputs:
            body["outputs"] = [{"name": n} for n in outputs]
        r = http.post("/v2/models/ae/infer", json=body)
        assert r.status_code == 200, r.text
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}

    thr = float(np.quantile(iscore, 0.5))
    out = infer({"threshold": thr})
    assert set(out) == {"is_outlier", "instance_score"}
    _same_flags(out["is_outlier"], iscore, thr)
    assert 0.4 < out["is_outlier"].mean() < 0.6

    fthr = float(np.quantile(fscore, 0.9))
    out = infer({"outlier_type": "feature", "threshold": fthr, "return_feature_score": True})
    assert out["is_outlier"].shape == X.shape
    _close(out["feature_score"], fscore)
    _same_flags(out["is_outlier"].ravel(), fscore.ravel().astype(np.float64), fthr)

    _, iscore_top = ae.score(X, outlier_perc=50)
    _close(infer({"outlier_perc": 50})["instance_score"], iscore_top)
    assert set(infer({"return_instance_score": False})) == {"is_outlier"}
    assert set(infer({}, outputs=["feature_score"])) == {"feature_score"}


# -------------------------------------------------------------- bad requests
def _gzip_bomb() -> bytes:
    return gzip.compress(b'{"inputs": [' + b" " * (8 * 2**20) + b"]}")


NAN = np.full((3, N_FEATURES), 0.5, np.float32)
NAN[1, 2] = np.nan
INF = np.full((3, N_FEATURES), 0.5, np.float32)
INF[2, 0] = np.inf
GOOD_ROW = [0.1] * N_FEATURES
BAD_REQUESTS = [
    # (name, method, path, httpx kwargs, status, part of the error message)
    ("malformed JSON", "POST", "ae", {"content": b'{"inputs": [}'}, 400, "not valid JSON"),
    ("not an object", "POST", "ae", {"json": [1, 2]}, 400, "must be a JSON object"),
    ("no inputs", "POST", "ae", {"json": {"id": "x"}}, 400, "no 'inputs'"),
    ("BYTES for an array model", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "BYTES", "data": ["a"] * 6}]}}, 400,
     "datatype BYTES is not accepted"),
    ("unknown datatype", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FLOAT", "data": GOOD_ROW}]}}, 400,
     "unknown datatype 'FLOAT'"),
    ("shape and data disagree", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": GOOD_ROW}]}}, 400,
     "holds 12 elements but 'data' has 6"),
    ("negative shape", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [-1, 6], "datatype": "FP32", "data": GOOD_ROW}]}}, 400,
     "negative dimension"),
    ("absurd shape", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [10**18, 6], "datatype": "FP32", "data": GOOD_ROW}]}}, 413,
     "limit of 2000 (--max-rows)"),
    ("too many rows", "POST", "ae", dict(zip(("content", "headers"), _binary_body(np.zeros((2001, 6), np.float32)))),
     413, "2001 rows in one request"),
    ("wrong feature count", "POST", "ae",
     {"json": {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": GOOD_ROW[:5]}]}}, 400,
     "does not match the model's [N, 6]"),
    ("NaN", "POST", "ae", dict(zip(("content", "headers"), _binary_body(NAN))), 400, "NaN or infinite values"),
    ("inf", "POST", "aegmm", dict(zip(("content", "headers"), _binary_body(INF))), 400, "NaN or infinite values"),
    ("too large for FP32", "POST", "aegmm",
     {"json": {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [1e39] + GOOD_ROW[1:]}]}},
     400, "too large for float32"),
    ("unknown model", "POST", "nope", {"json": _json_input(np.zeros((1, 6)))}, 404, "No model named 'nope'"),
    ("body over the limit", "POST", "ae", {"content": b" " * (2 * 2**20)}, 413, "larger than this server's limit"),
    ("gzip bomb", "POST", "ae", {"content": _gzip_bomb(), "headers": {"Content-Encoding": "gzip"}}, 413,
     "decompressed body is larger"),
    ("broken gzip", "POST", "ae", {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400,
     "cannot be decompressed"),
    ("unknown encoding", "POST", "ae", {"content": b"{}", "headers": {"Content-Encoding": "br"}}, 415,
     "'br' is not supported"),
    ("header length past the body", "POST", "ae",
     {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400, "the body has 2 bytes"),
    ("unknown parameter", "POST", "ae", {"json": {**_json_input(np.zeros((1, 6))), "parameters": {"treshold": 1}}},
     400, "Unknown request parameter(s) 'treshold'"),
    ("threshold not a number", "POST", "ae",
     {"json": {**_json_input(np.zeros((1, 6))), "parameters": {"threshold": "high"}}}, 400,
     "threshold must be a finite number"),
    ("feature options on AEGMM", "POST", "aegmm",
     {"json": {**_json_input(np.zeros((1, 6))), "parameters": {"outlier_type": "feature"}}}, 400,
     "applies to OutlierAE only"),
    ("unknown output", "POST", "aegmm",
     {"json": {**_json_input(np.zeros((1, 6))), "outputs": [{"name": "feature_score"}]}}, 400,
     "Unknown output(s) 'feature_score'"),
    ("table: missing column", "POST", "table",
     {"json": {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [0.0]}]}}, 400,
     "missing input(s) 'b', 'proto'"),
    ("table: numbers sent as strings", "POST", "table",
     {"json": {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["1"]},
                          {"name": "b", "shape": [1], "datatype": "FP64", "data": [0.0]},
                          {"name": "proto", "shape": [1], "datatype": "BYTES", "data": ["tcp"]}]}}, 400,
     "datatype BYTES, but the column is numeric"),
    ("table: rows differ", "POST", "table",
     {"json": {"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [0.0, 1.0]},
                          {"name": "b", "shape": [1], "datatype": "FP64", "data": [0.0]},
                          {"name": "proto", "shape": [1], "datatype": "BYTES", "data": ["tcp"]}]}}, 400,
     "different row counts"),
    ("wrong method", "GET", "ae", {}, 405, "Method Not Allowed"),
]


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_carries_on(http, models):
    good = _json_input(models["X"][:3])
    for name, method, model, kwargs, status, message in BAD_REQUESTS:
        r = http.request(method, f"/v2/models/{model}/infer", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert message in r.json()["error"], (name, r.json())
        ok = http.post("/v2/models/ae/infer", json=good)  # the next good request is served
        assert ok.status_code == 200, (name, ok.text[:300])


def test_unknown_routes_answer_json(http):
    r = http.get("/v3/anything")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_tritonclient_sees_the_error_message(triton):
    with pytest.raises(th.InferenceServerException, match=r"does not match the model's \[N, 6\]") as info:
        _infer_triton(triton, "ae", np.zeros((2, 3), np.float32), True)
    assert info.value.status() == "400"


# ------------------------------------------------------------------- metrics
def _metrics(http, headers=None) -> dict:
    text = http.get("/metrics", headers=headers).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_errors_latency_and_rows(http, models):
    def value(m, name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    before = _metrics(http)
    X = models["X"][:17]
    for _ in range(3):
        assert http.post("/v2/models/aegmm/infer", json=_json_input(X)).status_code == 200
    for _ in range(2):
        assert http.post("/v2/models/aegmm/infer", content=b"{").status_code == 400
    assert http.post("/v2/models/nope/infer", content=b"{").status_code == 404
    after = _metrics(http)
    assert value(after, "dagmm_infer_requests_total", model="aegmm") - \
        value(before, "dagmm_infer_requests_total", model="aegmm") == 5
    assert value(after, "dagmm_infer_errors_total", model="aegmm", code="400") - \
        value(before, "dagmm_infer_errors_total", model="aegmm", code="400") == 2
    assert value(after, "dagmm_rows_scored_total", model="aegmm") - \
        value(before, "dagmm_rows_scored_total", model="aegmm") == 3 * 17
    assert value(after, "dagmm_infer_latency_seconds_count", model="aegmm") - \
        value(before, "dagmm_infer_latency_seconds_count", model="aegmm") == 5
    # a name that is not served counts under one label, so clients cannot grow the label set
    assert value(after, "dagmm_infer_errors_total", model="_unknown", code="404") >= 1
    assert not any(dict(k[1]).get("model") == "nope" for k in after)


# --------------------------------------------------------------- the command
def test_serve_refuses_bad_arguments(models, tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "missing")]) == 1
    assert "No model directory at" in capsys.readouterr().err
    assert cli_main(["serve", str(tmp_path)]) == 1
    assert "is not a detector directory" in capsys.readouterr().err
    twin = tmp_path / "x" / "ae"
    twin.mkdir(parents=True)
    (twin / "config.json").write_text("{}")
    assert cli_main(["serve", models["dirs"][1], str(twin)]) == 1
    assert "both named 'ae'" in capsys.readouterr().err
    empty = tmp_path / "key"
    empty.write_text("\n")
    assert cli_main(["serve", models["dirs"][1], "--api-key-file", str(empty)]) == 1
    assert "must hold one token" in capsys.readouterr().err
    assert cli_main(["serve", models["dirs"][1], "--workers", "0"]) == 1
    assert "--workers must be a positive integer" in capsys.readouterr().err


def test_binding_beyond_loopback_without_a_key_warns(models, capsys):
    # 192.0.2.1 (TEST-NET-1) is not on this machine: the warning comes, then the bind fails; nothing listens
    assert cli_main(["serve", models["dirs"][1], "--host", "192.0.2.1", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "warning: listening on 192.0.2.1 without --api-key-file" in err
    assert "cannot listen on 192.0.2.1:0" in err


# ------------------------------------------- auth, workers, SIGTERM (own servers)
@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "api-key"
    path.write_text("s3cret-token-for-tests\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


@pytest.fixture(scope="module")
def workers_server(models, key_file):
    with ServerProcess(models["dirs"][:2], args=["--workers", "2", "--api-key-file", str(key_file)]) as srv:
        yield srv


AUTH = {"Authorization": "Bearer s3cret-token-for-tests"}


def test_api_key(workers_server, models):
    X = models["X"][:5]
    with httpx.Client(base_url=workers_server.url, timeout=30) as c:
        assert c.get("/v2/health/live").status_code == 200  # probes need no key
        assert c.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token-for-tests"},
                        {"Authorization": "Bearer s3cret-token-for-test"}):
            for method, path in (("POST", "/v2/models/ae/infer"), ("GET", "/v2/models/ae"), ("GET", "/metrics"),
                                 ("GET", "/v2")):
                r = c.request(method, path, headers=headers, json=_json_input(X) if method == "POST" else None)
                assert r.status_code == 401, (headers, path)
                assert "API key" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v2/models/ae/infer", headers=AUTH, json=_json_input(X)).status_code == 200
    client = th.InferenceServerClient(workers_server.host_port)
    try:
        r = _infer_triton(client, "ae", X, True, headers=AUTH)
        ref = dagmm.load_detector(models["dirs"][1]).predict(X)["data"]["instance_score"]
        _close(r.as_numpy("instance_score"), ref)
        with pytest.raises(th.InferenceServerException, match="API key"):
            _infer_triton(client, "ae", X, True)
    finally:
        client.close()


def _children(pid: int) -> set:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs Linux /proc to find the worker processes")
    return {int(p) for p in path.read_text().split()}


def _workers(pid: int) -> set:
    # the spawned workers, not multiprocessing's resource tracker
    return {c for c in _children(pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()}


def test_metrics_add_up_over_workers_and_a_dead_worker_is_replaced(workers_server, models):
    pid = workers_server.proc.pid
    workers = _workers(pid)
    assert len(workers) == 2
    body = _json_input(models["X"][:4])

    def total():
        with httpx.Client(base_url=workers_server.url, timeout=30) as c:
            return _metrics(c, AUTH).get(("dagmm_infer_requests_total", (("model", "ae"),)), 0.0)

    start = total()
    for _ in range(8):  # a fresh connection each: the kernel spreads them over both workers
        with httpx.Client(base_url=workers_server.url, timeout=30) as c:
            assert c.post("/v2/models/ae/infer", headers=AUTH, json=body).status_code == 200
    assert total() - start == 8  # whichever worker answers /metrics counts all of them

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = _workers(pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no replacement worker within 90 s; log: {workers_server.log[-10:]}")
    assert any("died" in line for line in workers_server.log)
    served = 0
    deadline = time.monotonic() + 60
    while served < 6 and time.monotonic() < deadline:  # until the replacement has loaded, its peer serves
        try:
            with httpx.Client(base_url=workers_server.url, timeout=30) as c:
                served += c.post("/v2/models/ae/infer", headers=AUTH, json=body).status_code == 200
        except httpx.TransportError:
            time.sleep(0.2)
    assert served == 6
    assert total() - start >= 14  # the dead worker's counts are kept


def _read_response(sock) -> bytes:
    data = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length")]
        if length and len(rest) >= length[0]:
            break
    return data


def _raw_request_in_flight(port: int, body: bytes, path: str = "/v2/models/ae/infer", headers: str = ""):
    """A connection proven served once, then a request whose body is only half sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    probe = ("GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n").encode()
    sock.sendall(probe)
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    head = (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    half = len(body) // 2
    sock.sendall(head + body[:half])
    return sock, body[half:]


def _sigterm_drains(srv, models, headers=""):
    X = models["X"][:50]
    body = json.dumps(_json_input(X)).encode()
    sock, rest = _raw_request_in_flight(srv.port, body, headers=headers)
    time.sleep(1.0)  # the server has the headers and waits for the body
    srv.send(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(OSError):  # no new connections once draining
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    sock.sendall(rest)
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    out = json.loads(response.partition(b"\r\n\r\n")[2])
    scores = {o["name"]: o["data"] for o in out["outputs"]}["instance_score"]
    _close(scores, dagmm.load_detector(models["dirs"][1]).predict(X)["data"]["instance_score"])
    assert srv.wait(60) == 0
    assert srv.log[-1].endswith("stopped")


# The last two tests stop their (module-wide) servers, so they come last in this file.
def test_sigterm_drains_workers_and_the_supervisor_exits_0(workers_server, models):
    _sigterm_drains(workers_server, models, headers=f"Authorization: {AUTH['Authorization']}\r\n")


def test_sigterm_drains_in_flight_requests_and_exits_0(server, models):
    _sigterm_drains(server, models)

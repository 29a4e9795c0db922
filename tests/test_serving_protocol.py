"""The OIP / binary-tensor codec (dagmm.serving.protocol) against tritonclient's own encoder and decoder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dagmm.serving.protocol import ProtocolError, encode_response, parse_request

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency (pip install '.[test]')")
from tritonclient.http._utils import _get_inference_request

CASES = [("FP32", np.float32), ("FP64", np.float64), ("INT64", np.int64), ("INT32", np.int32),
         ("UINT8", np.uint8), ("FP16", np.float16), ("BOOL", np.bool_), ("BYTES", np.object_)]


def _triton_body(arrays: dict, binary: bool, outputs=None, parameters=None):
    inputs = []
    for name, (datatype, arr) in arrays.items():
        inp = th.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, parameters)


def _sample(datatype, dtype, rng, shape=(3, 4)):
    if datatype == "BYTES":
        words = np.array(["tcp", "udp", "", "ünïcode", "icmp", "x" * 300], dtype=object)
        return words[rng.integers(0, len(words), size=shape)]
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    return (rng.normal(size=shape) * 50).astype(dtype)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype,dtype", CASES, ids=[c[0] for c in CASES])
def test_request_from_tritonclient_decodes_exactly(datatype, dtype, binary, rng):
    arr = _sample(datatype, dtype, rng)
    body, header_length = _triton_body({"x": (datatype, arr)}, binary)
    assert (header_length is not None) == binary
    req = parse_request(body, None if header_length is None else str(header_length))
    (t,) = req.inputs
    assert (t.name, t.datatype, t.shape) == ("x", datatype, arr.shape)
    # both forms carry every value exactly (JSON floats are written with round-trip precision)
    np.testing.assert_array_equal(t.data, arr)
    assert req.binary_output is True  # tritonclient asks for binary outputs when it names none


def test_nested_json_data_equals_flat():
    flat = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]}
    nested = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6]]}]}
    a = parse_request(json.dumps(flat).encode()).inputs[0].data
    b = parse_request(json.dumps(nested).encode()).inputs[0].data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.arange(1, 7, dtype=np.float64).reshape(2, 3))


def test_several_binary_inputs_and_outputs_requested(rng):
    a, b = rng.normal(size=(5, 2)), np.array(["p", "q", "r", "s", "t"], dtype=object)
    outs = [th.InferRequestedOutput("s", binary_data=True), th.InferRequestedOutput("f", binary_data=False)]
    body, n = _triton_body({"a": ("FP64", a), "b": ("BYTES", b)}, True, outs, {"threshold": 2.5})
    req = parse_request(body, str(n))
    np.testing.assert_array_equal(req.inputs[0].data, a)
    np.testing.assert_array_equal(req.inputs[1].data, b)
    assert req.outputs == {"s": True, "f": False} and req.parameters == {"threshold": 2.5}


@pytest.mark.parametrize("binary_names", [set(), {"score"}, {"score", "flag", "word"}], ids=["json", "one", "all"])
def test_response_decodes_with_tritonclient(binary_names, rng):
    outputs = [("score", "FP64", rng.normal(size=7)), ("flag", "INT64", rng.integers(0, 2, 7)),
               ("fs", "FP32", rng.normal(size=(7, 3)).astype(np.float32)),
               ("word", "BYTES", np.array(list("abcdefg"), dtype=object))]
    body, n = encode_response("m", "1", "req-1", {"name": "OutlierAE"}, outputs, binary_names)
    assert (n is None) == (not binary_names)
    result = th.InferResult.from_response_body(body, header_length=n)
    for name, _, arr in outputs:
        got = result.as_numpy(name)
        if arr.dtype == object:
            got = got.astype(str)  # tritonclient returns BYTES as bytes (binary) or str (JSON)
            got = np.array([g.decode() if isinstance(g, bytes) else g for g in got.ravel()]).reshape(arr.shape)
            np.testing.assert_array_equal(got, arr.astype(str))
        else:
            np.testing.assert_array_equal(got, arr)
    resp = result.get_response()
    assert resp["model_name"] == "m" and resp["id"] == "req-1" and resp["parameters"] == {"name": "OutlierAE"}


def _body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


X_OK = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (_body([]), None, "no 'inputs'"),
    (b'{"inputs": [{"name": "x"}]}', None, "unknown datatype None"),
    (_body([{**X_OK, "datatype": "FLOAT"}]), None, "unknown datatype 'FLOAT'"),
    (_body([{**X_OK, "shape": [2, -2]}]), None, "negative dimension"),
    (_body([{**X_OK, "shape": [2, 2.5]}]), None, "list of integers"),
    (_body([{**X_OK, "shape": []}]), None, "scalar"),
    (_body([{**X_OK, "shape": [3, 2]}]), None, "holds 6 elements but 'data' has 4"),
    (_body([{**X_OK, "data": [1, "2", 3, 4]}]), None, "only numbers"),
    (_body([{**X_OK, "data": [1, None, 3, 4]}]), None, "only numbers"),
    (_body([{**X_OK, "data": [[1, 2], [3]]}]), None, "nested 'data' does not have shape [2, 2]"),
    (_body([{**X_OK, "data": [[1, 2, 3], [4]]}]), None, "nested 'data' does not have shape [2, 2]"),
    (_body([{**X_OK, "data": [[1, 2], 3, 4]}]), None, "nested 'data' does not have shape [2, 2]"),
    (_body([{**X_OK, "data": [[[1], [2]], [[3], [4]]]}]), None, "nested 'data' does not have shape [2, 2]"),
    (_body([{**X_OK, "data": [True, False, True, True]}]), None, "true/false"),
    (_body([{**X_OK, "datatype": "INT32", "data": [1, 2.5, 3, 4]}]), None, "needs integers"),
    (_body([{**X_OK, "datatype": "INT8", "data": [1, 2, 3, 400]}]), None, "outside the range of INT8"),
    (_body([{**X_OK, "datatype": "BYTES"}]), None, "must be strings"),
    (_body([X_OK, X_OK]), None, "given twice"),
    (_body([{k: v for k, v in X_OK.items() if k != "data"}]), None, "no 'data'"),
    (_body([{**X_OK, "parameters": {"binary_data_size": 16}}]), None, "not both"),
    (_body([{**X_OK, "parameters": []}]), None, "'parameters' must be a JSON object"),
    (_body([X_OK], id=3), None, "'id' must be a string"),
    (_body([X_OK], outputs=[{"nom": "s"}]), None, "string 'name'"),
    (_body([X_OK], parameters={"binary_data_output": "yes"}), None, "binary_data_output must be true or false"),
    (_body([X_OK]), "x", "must be an integer"),
    (_body([X_OK]), "100000", "but the body has"),
]


@pytest.mark.parametrize("body,header,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_name_the_problem(body, header, message):
    with pytest.raises(ProtocolError, match=re.escape(message)) as info:
        parse_request(body, header, max_rows=1000)
    assert info.value.status == 400


def test_binary_size_checks():
    head = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    header = json.dumps(head).encode()
    ok = parse_request(header + np.arange(4, dtype="<f4").tobytes(), str(len(header)))
    np.testing.assert_array_equal(ok.inputs[0].data, np.arange(4, dtype=np.float32).reshape(2, 2))
    assert ok.inputs[0].data.flags.writeable is False  # bytes in: read-only view, no copy
    with pytest.raises(ProtocolError, match="reaches past the end"):
        parse_request(header + b"\0" * 8, str(len(header)))
    with pytest.raises(ProtocolError, match="binary bytes that no input"):
        parse_request(header + b"\0" * 20, str(len(header)))
    head["inputs"][0]["parameters"]["binary_data_size"] = 12
    header = json.dumps(head).encode()
    with pytest.raises(ProtocolError, match="needs 16 bytes but binary_data_size is 12"):
        parse_request(header + b"\0" * 12, str(len(header)))
    head["inputs"][0].update(datatype="BYTES", shape=[1])
    head["inputs"][0]["parameters"]["binary_data_size"] = 6
    header = json.dumps(head).encode()
    with pytest.raises(ProtocolError, match="says 9 bytes but fewer remain"):
        parse_request(header + (9).to_bytes(4, "little") + b"ab", str(len(header)))
    with pytest.raises(ProtocolError, match="not UTF-8"):
        parse_request(header + (2).to_bytes(4, "little") + b"\xff\xfe", str(len(header)))


def test_row_limit_is_checked_before_any_array_is_built():
    # 10**15 rows of data that are not there: refused from the shape alone, with 413
    body = _body([{"name": "x", "shape": [10**15, 8], "datatype": "FP32", "data": [0.0]}])
    with pytest.raises(ProtocolError, match="more than this server's limit of 1000") as info:
        parse_request(body, max_rows=1000)
    assert info.value.status == 413
    # within the row limit, an absurd feature dimension is refused by the element count
    body = _body([{"name": "x", "shape": [2, 10**15], "datatype": "FP32", "data": [0.0]}])
    with pytest.raises(ProtocolError, match="holds 2000000000000000 elements but 'data' has 1"):
        parse_request(body, max_rows=1000)


def test_deep_nesting_is_a_clear_error():
    body = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": ' + b"[" * 100_000 + b"1" \
        + b"]" * 100_000 + b"}]}"
    with pytest.raises(ProtocolError, match="nested 'data' does not have shape|not valid JSON"):
        parse_request(body)

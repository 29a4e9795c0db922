"""Open Inference Protocol V2 (REST) messages, with Triton's binary tensor data extension.

Pure NumPy and JSON: no web framework here, so the HTTP app and the MLServer
runtime decode and check requests with the same code.

A request is a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?}``.
With the binary extension the JSON header is followed by raw tensor bytes and
its length is in the ``Inference-Header-Content-Length`` HTTP header; an input
whose data travels that way has ``parameters.binary_data_size`` instead of
``data``, and the blobs follow in the order of the inputs.  Numbers are
little-endian and row-major; a ``BYTES`` element is a 4-byte little-endian
length followed by that many bytes.

Every check raises :class:`ProtocolError` with an HTTP status and a message
that names the input and the fix.  Shapes are checked against the row limit
and against the size of the data that came with them *before* any array is
made, so an absurd shape costs nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = ["ProtocolError", "Tensor", "InferRequest", "DTYPES", "parse_request", "decode_request",
           "encode_response", "dumps", "loads"]

#: OIP datatype -> NumPy dtype of its binary (and decoded) form; BYTES is handled apart.
DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_KNOWN = (*DTYPES, "BYTES")

try:  # an order of magnitude faster on large number lists; present with the serve extra
    import orjson as _orjson
except ImportError:  # pragma: no cover - the plain json module is the fallback
    _orjson = None


class ProtocolError(ValueError):
    """A request the protocol cannot accept; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    """One decoded input: ``data`` has ``shape``; BYTES come as an object array of ``str``."""

    name: str
    datatype: str
    shape: tuple
    data: np.ndarray


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: list
    parameters: dict = field(default_factory=dict)
    id: Optional[str] = None
    #: output names asked for (``None``: the model's defaults), each with its binary flag
    outputs: Optional[dict] = None
    #: whether outputs not named in ``outputs`` come as binary data
    binary_output: bool = False


def loads(data: bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    """Compact JSON; NumPy arrays are written as (nested) lists."""
    if _orjson is not None:
        return _orjson.dumps(obj, default=_default, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=False).encode()


# ----------------------------------------------------------------- request
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object.")
    return value


def _check_shape(shape: Any, where: str, max_rows: Optional[int]) -> tuple:
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers, got {shape!r:.80}.")
    if any(s < 0 for s in shape):
        raise ProtocolError(f"{where}: shape {shape} has a negative dimension; every dimension must be >= 0.")
    if not shape:
        raise ProtocolError(f"{where}: shape [] is a scalar; send rows as shape [N, ...].")
    if max_rows is not None and shape[0] > max_rows:
        raise ProtocolError(f"{where}: {shape[0]} rows in one request is more than this server's limit of "
                            f"{max_rows} (--max-rows); split the data into smaller requests.", 413)
    return tuple(shape)


def _flatten(data: Any, shape: tuple, where: str) -> list:
    """Row-major elements of flat or nested ``data`` (the protocol allows both); nested lists must match ``shape``."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be a list, got {type(data).__name__}.")
    if not data or not isinstance(data[0], list):
        return data
    mismatch = ProtocolError(f"{where}: nested 'data' does not have shape {list(shape)}; send lists of exactly "
                             "those lengths, or one flat list.")
    if len(data) != shape[0]:
        raise mismatch
    flat: list = []
    stack = [(iter(data), 0)]
    while stack:  # iterative: a deeply nested body cannot exhaust the Python stack
        items, depth = stack[-1]
        for item in items:
            if isinstance(item, list):
                if depth + 1 >= len(shape) or len(item) != shape[depth + 1]:
                    raise mismatch
                stack.append((iter(item), depth + 1))
                break
            if depth != len(shape) - 1:
                raise mismatch
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_numbers(data: list, datatype: str, shape: tuple, n: int, where: str) -> np.ndarray:
    flat = _flatten(data, shape, where)
    if len(flat) != n:
        raise ProtocolError(f"{where}: shape {list(shape)} holds {n} elements but 'data' has {len(flat)}.")
    dtype = DTYPES[datatype]
    try:
        arr = np.asarray(flat)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.dtype.kind not in "biuf" or (n and arr.ndim != 1):
        raise ProtocolError(f"{where}: 'data' must hold only numbers for datatype {datatype}"
                            + (" (true/false)" if datatype == "BOOL" else "") + ".")
    if datatype == "BOOL":
        if arr.dtype.kind != "b" and n:
            raise ProtocolError(f"{where}: BOOL data must be true/false, got {arr.dtype.name} values.")
    elif arr.dtype.kind == "b" and n:
        raise ProtocolError(f"{where}: 'data' holds true/false but the datatype is {datatype}; send numbers.")
    elif dtype.kind in "iu" and arr.dtype.kind == "f":
        raise ProtocolError(f"{where}: datatype {datatype} needs integers, got fractional numbers; "
                            "use FP32 or FP64 for real values.")
    if dtype.kind in "iu" and arr.dtype.kind in "iu" and n:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ProtocolError(f"{where}: values outside the range of {datatype}.")
    with np.errstate(over="ignore"):  # too large for FP32 becomes inf, which the detector then names
        return arr.astype(dtype, copy=False).reshape(shape)


def _json_strings(data: list, shape: tuple, n: int, where: str) -> np.ndarray:
    flat = _flatten(data, shape, where)
    if len(flat) != n:
        raise ProtocolError(f"{where}: shape {list(shape)} holds {n} elements but 'data' has {len(flat)}.")
    if not all(isinstance(v, str) for v in flat):
        raise ProtocolError(f"{where}: BYTES data in JSON must be strings.")
    out = np.empty(n, dtype=object)
    out[:] = flat
    return out.reshape(shape)


def _binary_strings(buf: memoryview, shape: tuple, n: int, where: str) -> np.ndarray:
    out = np.empty(n, dtype=object)
    pos = 0
    for i in range(n):
        if pos + 4 > len(buf):
            raise ProtocolError(f"{where}: binary BYTES data ends inside element {i} of {n}.")
        size = int.from_bytes(buf[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(buf):
            raise ProtocolError(f"{where}: binary BYTES element {i} says {size} bytes but fewer remain.")
        try:
            out[i] = bytes(buf[pos:pos + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{where}: BYTES element {i} is not UTF-8 text.") from None
        pos += size
    if pos != len(buf):
        raise ProtocolError(f"{where}: binary_data_size is {len(buf)} bytes but its {n} elements take {pos}.")
    return out.reshape(shape)


def _decode_input(spec: Any, index: int, binary: memoryview, offset: int,
                  max_rows: Optional[int]) -> tuple[Tensor, int]:
    where = f"input {index}"
    if not isinstance(spec, dict):
        raise ProtocolError(f"{where}: each input must be a JSON object with name, shape, datatype and data.")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}: 'name' must be a non-empty string.")
    where = f"input {name!r}"
    datatype = spec.get("datatype")
    if datatype not in _KNOWN:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r:.40}; use one of {', '.join(_KNOWN)}.")
    shape = _check_shape(spec.get("shape"), where, max_rows)
    n = math.prod(shape)
    params = _object(spec.get("parameters"), f"{where}: 'parameters'")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise ProtocolError(f"{where}: no 'data' and no parameters.binary_data_size.")
        if datatype == "BYTES":
            return Tensor(name, datatype, shape, _json_strings(spec["data"], shape, n, where)), offset
        return Tensor(name, datatype, shape, _json_numbers(spec["data"], datatype, shape, n, where)), offset
    if "data" in spec:
        raise ProtocolError(f"{where}: give either 'data' or parameters.binary_data_size, not both.")
    if not _is_int(size) or size < 0:
        raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r:.40}.")
    if offset + size > len(binary):
        raise ProtocolError(f"{where}: binary_data_size {size} reaches past the end of the body "
                            f"({len(binary) - offset} binary bytes left).")
    chunk = binary[offset:offset + size]
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, _binary_strings(chunk, shape, n, where)), offset + size
    dtype = DTYPES[datatype]
    if size != n * dtype.itemsize:
        raise ProtocolError(f"{where}: shape {list(shape)} of {datatype} needs {n * dtype.itemsize} bytes but "
                            f"binary_data_size is {size}.")
    arr = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    return Tensor(name, datatype, shape, arr), offset + size


def _decode_outputs(outputs: Any) -> Optional[dict]:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects.")
    asked: dict = {}
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ProtocolError(f"output {i}: each requested output must be an object with a string 'name'.")
        params = _object(out.get("parameters"), f"output {out['name']!r}: 'parameters'")
        binary = params.get("binary_data", None)
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output {out['name']!r}: parameters.binary_data must be true or false.")
        asked[out["name"]] = binary
    return asked


def decode_request(obj: Any, binary: Optional[memoryview] = None, max_rows: Optional[int] = None) -> InferRequest:
    """Check and decode a parsed request (``obj``) whose binary tensors are in ``binary``."""
    binary = memoryview(b"") if binary is None else binary
    if not isinstance(obj, dict):
        raise ProtocolError("The request body must be a JSON object with an 'inputs' list.")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("The request has no 'inputs': send a non-empty list of input tensors.")
    parameters = _object(obj.get("parameters"), "'parameters'")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string.")
    tensors, offset, seen = [], 0, set()
    for i, spec in enumerate(inputs):
        tensor, offset = _decode_input(spec, i, binary, offset, max_rows)
        if tensor.name in seen:
            raise ProtocolError(f"input {tensor.name!r} is given twice.")
        seen.add(tensor.name)
        tensors.append(tensor)
    if offset != len(binary):
        raise ProtocolError(f"The body has {len(binary) - offset} binary bytes that no input's "
                            "binary_data_size accounts for.")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false.")
    return InferRequest(inputs=tensors, parameters=parameters, id=request_id,
                        outputs=_decode_outputs(obj.get("outputs")), binary_output=binary_output)


def parse_request(body: Any, header_length: Optional[str] = None, max_rows: Optional[int] = None) -> InferRequest:
    """Decode a whole HTTP body; ``header_length`` is the ``Inference-Header-Content-Length`` value."""
    view = memoryview(body)
    if header_length is None:
        head, binary = view, memoryview(b"")
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r:.40}.") \
                from None
        if not 0 <= size <= len(view):
            raise ProtocolError(f"Inference-Header-Content-Length is {size} but the body has {len(view)} bytes.")
        head, binary = view[:size], view[size:]
    try:
        obj = loads(head)
    except (ValueError, TypeError, RecursionError) as err:  # orjson's and json's errors are ValueErrors
        raise ProtocolError(f"The request is not valid JSON: {err}") from None
    return decode_request(obj, binary, max_rows)


# ---------------------------------------------------------------- response
def _binary_bytes(datatype: str, arr: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in arr.ravel():
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()


def encode_response(model_name: str, model_version: Optional[str], request_id: Optional[str], parameters: dict,
                    outputs: Sequence[tuple], binary: Iterable[str] = ()) -> tuple[bytes, Optional[int]]:
    """The response body and, when any output is binary, the JSON header's length.

    ``outputs`` holds ``(name, datatype, array)``; outputs named in ``binary``
    are sent as raw bytes after the JSON header.
    """
    binary = set(binary)
    head: dict = {"model_name": model_name}
    if model_version is not None:
        head["model_version"] = model_version
    if request_id is not None:
        head["id"] = request_id
    if parameters:
        head["parameters"] = parameters
    blobs, described = [], []
    for name, datatype, arr in outputs:
        entry: dict = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in binary:
            blob = _binary_bytes(datatype, arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel()
        described.append(entry)
    head["outputs"] = described
    header = dumps(head)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)

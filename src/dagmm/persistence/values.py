"""Attribute values as JSON, with tensors and arrays stored apart under a key.

JSON values (None, bool, int, float, str, lists, dicts with str keys) are
written as they are.  Everything else is an object with one marker key:

- ``{"__tuple__": [...]}`` a tuple;
- ``{"__float__": "nan" | "inf" | "-inf"}`` a non-finite float (plain JSON has none);
- ``{"__tensor__": key, "dtype": "float64", "shape": [...], "device": "detector" | "cpu"}`` a
  ``torch.Tensor`` stored in ``weights.safetensors`` under ``key`` (``"detector"``: it lives on
  the detector's device);
- ``{"__ndarray__": key, "dtype": "float32", "shape": [...]}`` a NumPy array stored the same way;
- ``{"__detector__": {...}}`` a nested detector (see :mod:`dagmm.persistence.io`);
- ``{"__dict__": {...}}`` a dict that has a marker among its keys.

NumPy scalars are written as Python numbers.
"""

from __future__ import annotations

import math
from typing import Any, Callable, MutableMapping

import numpy as np
import torch

__all__ = ["encode", "decode", "MARKERS"]

MARKERS = ("__tuple__", "__float__", "__tensor__", "__ndarray__", "__detector__", "__dict__")


class UnsavableValue(TypeError):
    """A value of a type the format does not hold."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_device(a: torch.device, detector: torch.device) -> bool:
    """``cuda:0`` is on a detector whose device is ``cuda`` (the current device)."""
    return a.type == detector.type and (detector.index is None or a.index == detector.index)


def encode(value: Any, key: str, tensors: MutableMapping[str, torch.Tensor], detector_device: torch.device,
           nested: Callable[[Any, str], dict | None]) -> Any:
    """JSON form of ``value``; tensors go into ``tensors`` under ``key`` (sub-keys for nested values).

    ``nested(value, prefix)`` returns the config of a nested detector, or None when
    ``value`` is not one.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.ndarray):
        if not isinstance(value, (np.bool_, np.integer, np.floating)):
            raise UnsavableValue(f"NumPy scalar of dtype {value.dtype}")
        value = value.item()
        if isinstance(value, bool):
            return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key, "dtype": _dtype_name(value.dtype), "shape": list(value.shape),
                "device": "detector" if _same_device(value.device, detector_device) else "cpu"}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise UnsavableValue(f"NumPy array of dtype {value.dtype}")
        arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
        try:
            tensors[key] = torch.from_numpy(arr.copy())
        except TypeError as err:
            raise UnsavableValue(f"NumPy array of dtype {value.dtype} ({err})") from None
        return {"__ndarray__": key, "dtype": arr.dtype.name, "shape": list(arr.shape)}
    if isinstance(value, list):
        return [encode(v, f"{key}.{i}", tensors, detector_device, nested) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{key}.{i}", tensors, detector_device, nested) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise UnsavableValue(f"dict with non-string key {bad[0]!r}")
        out = {k: encode(v, f"{key}.{k}", tensors, detector_device, nested) for k, v in value.items()}
        return {"__dict__": out} if any(k in MARKERS for k in out) else out
    sub = nested(value, key + ".")
    if sub is not None:
        return {"__detector__": sub}
    raise UnsavableValue(f"{type(value).__module__}.{type(value).__qualname__}")


def decode(value: Any, tensors: MutableMapping[str, torch.Tensor], used: set, device: torch.device,
           nested: Callable[[dict], Any]) -> Any:
    """Inverse of :func:`encode`; ``used`` collects the tensor keys read."""
    if isinstance(value, list):
        return [decode(v, tensors, used, device, nested) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 or "__tensor__" in value or "__ndarray__" in value:
        if "__tuple__" in value:
            return tuple(decode(v, tensors, used, device, nested) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__dict__" in value:
            return {k: decode(v, tensors, used, device, nested) for k, v in value["__dict__"].items()}
        if "__detector__" in value:
            return nested(value["__detector__"])
        if "__tensor__" in value or "__ndarray__" in value:
            return _tensor(value, tensors, used, device)
    return {k: decode(v, tensors, used, device, nested) for k, v in value.items()}


def _tensor(entry: dict, tensors: MutableMapping[str, torch.Tensor], used: set, device: torch.device) -> Any:
    is_np = "__ndarray__" in entry
    key = entry["__ndarray__" if is_np else "__tensor__"]
    if key not in tensors:
        raise ValueError(f"config.json refers to tensor {key!r}, which weights.safetensors does not hold; "
                         "the files do not belong together. Save the detector again.")
    t = tensors[key]
    used.add(key)
    if list(t.shape) != list(entry.get("shape", t.shape)):
        raise ValueError(f"Tensor {key!r} in weights.safetensors has shape {list(t.shape)} but config.json "
                         f"records {entry['shape']}; the files do not belong together.")
    if is_np:
        arr = t.numpy()
        dtype = np.dtype(entry.get("dtype", arr.dtype.name))
        if arr.dtype != dtype:
            raise ValueError(f"Tensor {key!r} has dtype {arr.dtype} but config.json records {dtype}.")
        return arr
    if _dtype_name(t.dtype) != entry.get("dtype", _dtype_name(t.dtype)):
        raise ValueError(f"Tensor {key!r} has dtype {_dtype_name(t.dtype)} but config.json records {entry['dtype']}.")
    return t.to(device) if entry.get("device") == "detector" else t

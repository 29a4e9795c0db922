"""``save_detector`` / ``load_detector``: a directory of JSON and safetensors, no pickle.

The format is documented in ``docs/saved-format.md``.  A detector is written as

- its class name (only :data:`DETECTOR_CLASSES` load);
- ``constructor``: the ``__init__`` arguments it was built with (``get_params()`` for the
  ``DAGMM`` estimator), read with ``getattr``;
- ``modules``: every ``nn.Module`` attribute as an architecture description, weights and
  buffers in ``weights.safetensors`` under ``<attribute>.<state_dict key>``;
- ``fitted``: every attribute ending in ``_`` (tensors and arrays under ``fitted.<name>``);
- ``attributes``: every other instance attribute (``threshold``, ``_fitted``, ...).

Any attribute the format cannot hold makes ``save_detector`` fail and name it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .._version import __version__
from ._fs import CONFIG, WEIGHTS, fsync_path, recover, staged_dir
from .architecture import build_callable, build_module, describe_module, function_entry
from .values import UnsavableValue, decode, encode

__all__ = ["FORMAT_VERSION", "DETECTOR_CLASSES", "save_detector", "load_detector", "read_config"]

#: Version of the directory layout; readers refuse newer files.
FORMAT_VERSION = 1

#: Class name -> module holding it; nothing else is ever instantiated from a config.
DETECTOR_CLASSES = {"OutlierAEGMM": "dagmm.detectors.aegmm", "OutlierAE": "dagmm.detectors.ae",
                    "DAGMM": "dagmm.detectors.estimator"}


def _detector_class(name: Any) -> type:
    if not isinstance(name, str) or name not in DETECTOR_CLASSES:
        raise ValueError(f"config.json names detector class {name!r}, which dagmm cannot load; "
                         f"known classes: {', '.join(DETECTOR_CLASSES)}. Upgrade dagmm if a newer version wrote it.")
    return getattr(importlib.import_module(DETECTOR_CLASSES[name]), name)


def _is_detector(value: Any) -> bool:
    cls = type(value)
    return DETECTOR_CLASSES.get(cls.__name__) == cls.__module__


# --------------------------------------------------------------------------- save
def _encode_attr(det: Any, name: str, value: Any, key: str, tensors: dict, device: torch.device) -> Any:
    """JSON form of one attribute or constructor argument."""
    if isinstance(value, nn.Module):
        if vars(det).get(name) is not value:
            raise TypeError(f"Cannot save {type(det).__name__}: module argument {name!r} is not the instance "
                            f"attribute {name!r}.")
        return {"__module__": name}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if callable(value) and not isinstance(value, (type, torch.Tensor)) and not _is_detector(value):
        return {"__function__": function_entry(value, name)}
    try:
        return encode(value, key, tensors, device, lambda v, prefix: _describe(v, prefix, tensors)
                      if _is_detector(v) else None)
    except UnsavableValue as err:
        raise TypeError(
            f"Cannot save attribute {name!r} of {type(det).__name__}: {err} values are not saved. Only tensors, "
            "NumPy arrays, nn.Modules and JSON values (None, bool, int, float, str, lists, tuples and dicts "
            "with str keys of those) are."
        ) from None


def _constructor_values(det: Any) -> dict:
    if type(det).__name__ == "DAGMM" and hasattr(det, "get_params"):
        return dict(det.get_params(deep=False))  # activations come back as canonical names
    params = inspect.signature(type(det).__init__).parameters
    return {p: getattr(det, p) for p, spec in params.items()
            if p != "self" and spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD) and hasattr(det, p)}


def _describe(det: Any, prefix: str, tensors: dict) -> dict:
    """Config of one detector; its tensors are added to ``tensors`` under ``prefix``."""
    if not _is_detector(det):
        raise TypeError(f"save_detector saves {', '.join(DETECTOR_CLASSES)} detectors, got "
                        f"{type(det).__module__}.{type(det).__qualname__}.")
    raw_device = getattr(det, "device", None)
    device = raw_device if isinstance(raw_device, torch.device) else torch.device("cpu")
    modules, attributes, fitted = {}, {}, {}
    init_values = _constructor_values(det)
    for name, value in vars(det).items():
        # An attribute that is a constructor argument is saved in the constructor's (canonical) form.
        value = init_values.get(name, value) if not isinstance(value, nn.Module) else value
        if isinstance(value, nn.Module):
            modules[name] = {"architecture": describe_module(value, name), "training": value.training,
                             "state_prefix": f"{prefix}{name}."}
            for k, t in value.state_dict().items():
                tensors[f"{prefix}{name}.{k}"] = t.detach().to("cpu", copy=True).contiguous()
        elif name.endswith("_") and not name.startswith("_"):
            fitted[name] = _encode_attr(det, name, value, f"{prefix}fitted.{name}", tensors, device)
        else:
            attributes[name] = _encode_attr(det, name, value, f"{prefix}attributes.{name}", tensors, device)
    constructor = {p: _encode_attr(det, p, v, f"{prefix}constructor.{p}", tensors, device)
                   for p, v in init_values.items()}
    meta = getattr(det, "meta", None)
    threshold = getattr(det, "threshold", None)
    return {
        "class": type(det).__name__,
        "prefix": prefix,
        "device": str(raw_device) if isinstance(raw_device, torch.device) else None,
        "threshold": threshold if isinstance(threshold, (int, float)) else None,
        "meta": meta if isinstance(meta, dict) else None,
        "constructor": constructor,
        "attributes": attributes,
        "modules": modules,
        "fitted": fitted,
    }


def _write_weights(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", "dagmm_format_version": str(FORMAT_VERSION)})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_detector(detector: Any, filepath: Union[str, os.PathLike]) -> None:
    """Save a detector to the directory ``filepath`` as ``config.json`` + ``weights.safetensors``.

    Parameters
    ----------
    detector : OutlierAEGMM, OutlierAE or DAGMM
        Fitted or not, with or without a threshold.
    filepath : path
        Directory to create.  An existing saved detector there is replaced once
        the new one is complete; any other existing non-empty path is refused.

    Raises
    ------
    TypeError
        The detector is of another class, or holds an attribute the format cannot
        store (the message names it).
    FileExistsError
        ``filepath`` exists and is not a saved detector.
    """
    tensors: dict[str, torch.Tensor] = {}
    config = {"format": "dagmm-detector", "format_version": FORMAT_VERSION, "dagmm_version": __version__,
              "torch_version": str(torch.__version__)}
    config.update(_describe(detector, "", tensors))
    with staged_dir(filepath) as tmp:
        _write_weights(tensors, tmp / WEIGHTS)
        data = (tmp / WEIGHTS).read_bytes()
        config["weights"] = {"file": WEIGHTS, "sha256": _sha256(data), "size": len(data)}
        with open(tmp / CONFIG, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2, allow_nan=False)
            fh.flush()
        fsync_path(tmp / CONFIG)


# --------------------------------------------------------------------------- load
def read_config(filepath: Union[str, os.PathLike]) -> dict:
    """Parse and check ``config.json`` of a saved detector (no weights are read)."""
    path = _recovered(filepath)
    if not path.exists():
        raise FileNotFoundError(f"No saved detector at {filepath}: the directory does not exist.")
    if not path.is_dir():
        raise NotADirectoryError(f"{filepath} is a file; a saved detector is a directory holding {CONFIG} "
                                 f"and {WEIGHTS}.")
    try:
        text = (path / CONFIG).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{filepath} has no {CONFIG}: it is not a detector saved by "
                                "dagmm.save_detector.") from None
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path / CONFIG} is not valid JSON ({err}); the file is damaged. "
                         "Save the detector again.") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path / CONFIG} has no integer format_version: it is not a dagmm detector config.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{filepath} was saved in format_version {version} by dagmm {config.get('dagmm_version')}; this dagmm "
            f"({__version__}) reads format_version {FORMAT_VERSION} and older. Upgrade dagmm to load it."
        )
    if version < 1:
        raise ValueError(f"{path / CONFIG} has an invalid format_version {version}.")
    return config


def _recovered(filepath: Union[str, os.PathLike]) -> Path:
    """``filepath``, put back first if a save killed between two renames left it missing."""
    path = Path(filepath)
    if os.path.lexists(path):
        return path
    found = recover(path)
    return path if os.path.lexists(path) or found == Path(os.path.abspath(path)) else found


def _read_weights(path: Path, config: dict) -> dict:
    from safetensors.torch import load

    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS}: the save was incomplete or the file was deleted. "
                                "Save the detector again.")
    info = config.get("weights") or {}
    data = wpath.read_bytes()
    if "size" in info and len(data) != info["size"]:
        raise ValueError(f"{wpath} is truncated or corrupted: it has {len(data)} bytes but {CONFIG} records "
                         f"{info['size']}. Save the detector again or fetch a fresh copy.")
    if "sha256" in info and _sha256(data) != info["sha256"]:
        raise ValueError(f"{wpath} is corrupted: its SHA-256 does not match the one in {CONFIG}. "
                         "Save the detector again or fetch a fresh copy.")
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{wpath} is not a valid safetensors file ({err}). Save the detector again.") from None


def _resolve_device(saved: Optional[str], override: Union[None, str, torch.device]) -> torch.device:
    from ..detectors.base import resolve_device

    if override is not None:
        return resolve_device(override)
    if saved is None:
        return torch.device("cpu")
    dev = torch.device(saved)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"The detector was saved on {saved}, which is not available here; loading it on the CPU. "
                      "Pass device=... to load_detector to choose.", RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return resolve_device(dev)


class _Supplied(dict):
    """The user's modules and functions; remembers which names were asked for."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def _load_module(name: str, entry: Mapping, tensors: dict, used: set, supplied: _Supplied,
                 device: torch.device) -> nn.Module:
    module = supplied.get(name)
    if module is None:
        module = build_module(entry.get("architecture"), supplied, name)
    elif not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}.")
    prefix = entry.get("state_prefix", f"{name}.")
    state = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"The tensors in {WEIGHTS} do not match the architecture of {name} in {CONFIG}: "
                         f"{err}") from None
    used.update(prefix + k for k in state)
    return module.to(device).train(bool(entry.get("training", False)))


_SECTIONS = ("constructor", "attributes", "modules", "fitted")


def _check_sections(config: Any) -> None:
    if not isinstance(config, Mapping):
        raise ValueError(f"{CONFIG} describes a detector as {type(config).__name__}, not a JSON object; "
                         "the file was not written by dagmm.")
    for section in _SECTIONS:
        value = config.get(section)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{CONFIG}: '{section}' must be a JSON object (name -> value), got "
                             f"{type(value).__name__}; the file was not written by dagmm.")
    for name, entry in (config.get("modules") or {}).items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{CONFIG}: module {name!r} must be a JSON object, got {type(entry).__name__}.")


def _check_attribute_name(cls: type, name: Any, section: str) -> None:
    if not (isinstance(name, str) and name.isidentifier() and not name.startswith("__")):
        raise ValueError(f"{CONFIG} names attribute {name!r} in '{section}', which is not a plain "
                         "attribute name; the file was not written by dagmm.")
    member = inspect.getattr_static(cls, name, None)
    if member is not None and (callable(member) or isinstance(member, (property, staticmethod, classmethod))
                               or hasattr(member, "__get__")):
        raise ValueError(f"{CONFIG} sets {name!r} in '{section}', which is a method or property of "
                         f"{cls.__name__}, not data; the file was not written by dagmm.")


def _build(config: Mapping, tensors: dict, used: set, supplied: _Supplied, override: Any) -> Any:
    _check_sections(config)
    cls = _detector_class(config.get("class"))
    device = _resolve_device(config.get("device"), override)
    modules = {name: _load_module(name, entry, tensors, used, supplied, device)
               for name, entry in (config.get("modules") or {}).items()}

    def dec(value: Any, name: str) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            if "__module__" in value:
                return modules[value["__module__"]]
            if "__device__" in value:
                return device
            if "__function__" in value:
                return build_callable(value["__function__"], supplied)
        return decode(value, tensors, used, device, lambda sub: _build(sub, tensors, used, supplied, override))

    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name, value in (config.get("constructor") or {}).items():
        if name not in params:
            raise ValueError(f"{CONFIG} passes argument {name!r}, which {cls.__name__} does not take. "
                             "Upgrade dagmm if a newer version wrote it.")
        kwargs[name] = dec(value, name)
    try:
        det = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cls.__name__} rejected the arguments saved in {CONFIG}: {err}") from None
    for section in ("attributes", "fitted"):
        for name, value in (config.get(section) or {}).items():
            _check_attribute_name(cls, name, section)
            try:
                setattr(det, name, dec(value, name))
            except TypeError as err:  # e.g. a threshold that is not a number
                raise ValueError(f"{CONFIG}: attribute {name!r} in '{section}' is invalid: {err}") from None
    for name, module in modules.items():
        _check_attribute_name(cls, name, "modules")
        setattr(det, name, module)
    return det


def load_detector(filepath: Union[str, os.PathLike], device: Union[None, str, torch.device] = None,
                  **modules: Any) -> Any:
    """Load a detector written by :func:`save_detector`; no code is read from the files.

    Parameters
    ----------
    filepath : path
        The saved directory.
    device : str or torch.device, optional
        Where to put the detector; default the device it was saved from, or
        the CPU (with a warning) when that was CUDA and CUDA is not available.
    **modules : nn.Module or callable
        Fresh instances for parts saved as custom (the error when one is
        missing names the argument, e.g. ``encoder_net=MyEncoder()``); their
        weights are loaded from the file.  A describable part may be replaced too.

    Returns
    -------
    OutlierAEGMM, OutlierAE or DAGMM
        Scores equal the saved detector's bit for bit on the same device.

    Raises
    ------
    FileNotFoundError
        No directory, no ``config.json`` or no ``weights.safetensors``.
    ValueError
        Invalid JSON, a newer format version, an unknown class or layer,
        truncated or corrupted weights, or tensors that do not fit the architecture.
    """
    path = _recovered(filepath)
    config = read_config(path)
    tensors = _read_weights(path, config)
    used: set[str] = set()
    supplied = _Supplied(modules)
    with torch.random.fork_rng(devices=[]):  # building layers must not move the caller's random state
        det = _build(config, tensors, used, supplied, device)
    unexpected = sorted(set(modules) - supplied.asked)
    if unexpected:
        raise TypeError(f"load_detector got argument(s) {unexpected} that the saved {type(det).__name__} does "
                        f"not use; it accepts: {sorted(supplied.asked) or 'none'}.")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{WEIGHTS} holds tensors that {CONFIG} does not use ({unused[:5]}); "
                         "the files do not belong together.")
    return det

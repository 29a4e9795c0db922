"""Describe networks as JSON and rebuild them without importing anything named in a file.

A description is a dict with a ``"type"``:

- ``"Sequential"`` with ``"layers"``: a list of ``{"name": child name, ...description}``;
- a standard ``torch.nn`` layer from :data:`LAYERS` (``"Linear"``, ``"Conv2d"``, ``"Tanh"``, ...)
  with ``"args"``, its constructor keyword arguments read back from the layer's attributes;
- one of dagmm's own modules: ``"dagmm.AEGMMNet"`` / ``"dagmm.AENet"`` with their parts
  (``"encoder"``, ``"decoder"``, ``"gmm_density"``, ``"recon_features"``), or
  ``"dagmm.ConvEncoder"`` / ``"dagmm.ConvDecoder"`` with ``"args"`` (their ``config()``);
- ``{"custom": "<qualified class name>", "argument": "<load_detector argument>"}`` for a
  module that cannot be described: the user passes a fresh instance when loading.

Only classes from the tables in this module are ever instantiated.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..models.features import default_recon_features, log_mse_cosine
from ..models.nets import AEGMMNet, AENet, ConvDecoder, ConvEncoder

__all__ = ["CALLABLES", "LAYERS", "describe_module", "build_module", "callable_name", "function_entry"]

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
         "padding_mode")
_CONV_T = _CONV + ("output_padding",)
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL1 = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")

#: Standard layers dagmm can rebuild: class name -> (class, constructor arguments read from attributes).
#: ``bias`` and ``elementwise_affine``-style flags are read from whether the parameter exists.
LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "Bilinear": (nn.Bilinear, ("in1_features", "in2_features", "out_features", "bias")),
    "Conv1d": (nn.Conv1d, _CONV), "Conv2d": (nn.Conv2d, _CONV), "Conv3d": (nn.Conv3d, _CONV),
    "ConvTranspose1d": (nn.ConvTranspose1d, _CONV_T), "ConvTranspose2d": (nn.ConvTranspose2d, _CONV_T),
    "ConvTranspose3d": (nn.ConvTranspose3d, _CONV_T),
    "Identity": (nn.Identity, ()), "Tanh": (nn.Tanh, ()), "Sigmoid": (nn.Sigmoid, ()),
    "ReLU": (nn.ReLU, ("inplace",)), "ReLU6": (nn.ReLU6, ("inplace",)),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope", "inplace")), "ELU": (nn.ELU, ("alpha", "inplace")),
    "CELU": (nn.CELU, ("alpha", "inplace")), "SELU": (nn.SELU, ("inplace",)), "GELU": (nn.GELU, ("approximate",)),
    "SiLU": (nn.SiLU, ("inplace",)), "Mish": (nn.Mish, ("inplace",)), "Softsign": (nn.Softsign, ()),
    "Softplus": (nn.Softplus, ("beta", "threshold")), "Tanhshrink": (nn.Tanhshrink, ()),
    "Hardtanh": (nn.Hardtanh, ("min_val", "max_val", "inplace")), "Hardsigmoid": (nn.Hardsigmoid, ("inplace",)),
    "Hardswish": (nn.Hardswish, ("inplace",)), "LogSigmoid": (nn.LogSigmoid, ()),
    "PReLU": (nn.PReLU, ("num_parameters",)),
    "Softmax": (nn.Softmax, ("dim",)), "LogSoftmax": (nn.LogSoftmax, ("dim",)),
    "Dropout": (nn.Dropout, ("p", "inplace")), "Dropout1d": (nn.Dropout1d, ("p", "inplace")),
    "Dropout2d": (nn.Dropout2d, ("p", "inplace")), "AlphaDropout": (nn.AlphaDropout, ("p", "inplace")),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")), "Unflatten": (nn.Unflatten, ("dim", "unflattened_size")),
    "BatchNorm1d": (nn.BatchNorm1d, _BN), "BatchNorm2d": (nn.BatchNorm2d, _BN), "BatchNorm3d": (nn.BatchNorm3d, _BN),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "MaxPool1d": (nn.MaxPool1d, _MAXPOOL), "MaxPool2d": (nn.MaxPool2d, _MAXPOOL),
    "AvgPool1d": (nn.AvgPool1d, _AVGPOOL1), "AvgPool2d": (nn.AvgPool2d, _AVGPOOL1 + ("divisor_override",)),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool1d": (nn.AdaptiveMaxPool1d, ("output_size", "return_indices")),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
    "Upsample": (nn.Upsample, ("size", "scale_factor", "mode", "align_corners")),
}

#: dagmm functions saved by name (the library defaults); any other callable is passed at load time.
CALLABLES: dict[str, Callable] = {"dagmm.features.default_recon_features": default_recon_features,
                                 "dagmm.features.log_mse_cosine": log_mse_cosine}

#: Parts of dagmm's containers and the ``load_detector`` argument that replaces each.
_PARTS = {
    "dagmm.AEGMMNet": (AEGMMNet, {"encoder": "encoder_net", "decoder": "decoder_net",
                                  "gmm_density": "gmm_density_net"}),
    "dagmm.AENet": (AENet, {"encoder": "encoder_net", "decoder": "decoder_net"}),
}
_CONFIGURED = {"dagmm.ConvEncoder": ConvEncoder, "dagmm.ConvDecoder": ConvDecoder}


class Undescribable(Exception):
    """Internal: a module (or a layer inside it) is not in the tables."""


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def callable_name(fn: Callable) -> Optional[str]:
    """Registry name of a library-default callable, or None."""
    for name, known in CALLABLES.items():
        if fn is known:
            return name
    return None


def function_entry(fn: Callable, argument: str) -> dict:
    """``{"callable": registry name}`` for a library default, else ``{"custom", "argument"}``."""
    name = callable_name(fn)
    if name is not None:
        return {"callable": name}
    qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
    return {"custom": f"{getattr(fn, '__module__', None) or '?'}.{qualname}", "argument": argument}


def _jsonable_arg(value: Any) -> Any:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable_arg(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise Undescribable(f"argument value {value!r}")


def _layer_args(module: nn.Module, names: tuple[str, ...]) -> dict:
    args = {}
    for name in names:
        if name == "bias":
            args[name] = getattr(module, "bias", None) is not None
        elif name == "affine" and isinstance(module, nn.GroupNorm):
            args[name] = module.weight is not None
        elif name == "num_parameters":
            args[name] = int(module.weight.numel())
        else:
            args[name] = _jsonable_arg(getattr(module, name))
    if isinstance(module, nn.LayerNorm) and not module.elementwise_affine:
        args.pop("bias")
    return args


def _describe(module: nn.Module) -> dict:
    cls = type(module)
    if cls is nn.Sequential:
        return {"type": "Sequential",
                "layers": [{"name": name, **_describe(child)} for name, child in module.named_children()]}
    if cls.__module__.startswith("torch.nn") and cls.__name__ in LAYERS and LAYERS[cls.__name__][0] is cls:
        return {"type": cls.__name__, "args": _layer_args(module, LAYERS[cls.__name__][1])}
    for key, klass in _CONFIGURED.items():
        if cls is klass:
            return {"type": key, "args": module.config()}
    raise Undescribable(_qualname(module))


def describe_module(module: nn.Module, argument: str) -> dict:
    """Describe ``module``; an undescribable one becomes ``{"custom", "argument"}``.

    ``argument`` is the ``load_detector`` keyword that would replace it.  The
    parts of an :class:`~dagmm.models.nets.AEGMMNet` / :class:`~dagmm.models.nets.AENet`
    are described one by one, so only the undescribable part must be passed.
    """
    for key, (klass, parts) in _PARTS.items():
        if type(module) is klass:
            desc: dict[str, Any] = {"type": key}
            for attr, arg in parts.items():
                desc[attr] = describe_module(getattr(module, attr), arg)
            if klass is AEGMMNet:
                desc["recon_features"] = function_entry(module.recon_features, "recon_features")
            return desc
    try:
        return _describe(module)
    except Undescribable as err:
        return {"custom": _qualname(module), "argument": argument, "reason": f"{err} is not a layer dagmm rebuilds"}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _checked_args(desc: Mapping, allowed: tuple[str, ...] | None, where: str) -> dict:
    args = desc.get("args", {})
    if not isinstance(args, Mapping):
        raise ValueError(f"config.json: {where} has 'args' that is not an object.")
    extra = sorted(set(args) - set(allowed)) if allowed is not None else []
    if extra:
        raise ValueError(f"config.json: {where} has unknown arguments {extra}; this dagmm accepts {list(allowed)}.")
    return {k: _tuples(v) for k, v in args.items()}


def build_module(desc: Any, supplied: Mapping[str, Any], where: str = "network") -> nn.Module:
    """Rebuild a module from its description; custom parts come from ``supplied``.

    Raises
    ------
    ValueError
        Unknown layer type, bad arguments, or a custom part the user did not pass.
    """
    if not isinstance(desc, Mapping):
        raise ValueError(f"config.json: {where} must be an object, got {type(desc).__name__}.")
    if "custom" in desc:
        return _supplied(desc, supplied, f"custom module {desc['custom']} ({where}) that dagmm cannot rebuild; "
                                         "pass a fresh instance")
    kind = desc.get("type")
    if kind in _PARTS:
        klass, parts = _PARTS[kind]
        built = {arg: _part(desc, attr, arg, supplied, where) for attr, arg in parts.items()}
        if klass is AEGMMNet:
            return AEGMMNet(**built, recon_features=build_callable(desc.get("recon_features"), supplied))
        return klass(**built)
    if kind == "Sequential":
        layers = desc.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"config.json: {where} is a Sequential without a 'layers' list.")
        children = OrderedDict()
        for i, layer in enumerate(layers):
            name = layer.get("name", str(i)) if isinstance(layer, Mapping) else str(i)
            children[str(name)] = build_module(layer, supplied, f"{where} layer {name}")
        return nn.Sequential(children)
    if kind in _CONFIGURED:
        klass = _CONFIGURED[kind]
        args = _checked_args(desc, ("image_shape", "channels_last", "latent_dim", "widths"), where)
    elif kind in LAYERS:
        klass, names = LAYERS[kind]
        args = _checked_args(desc, names, where)
    else:
        raise ValueError(
            f"config.json: {where} has unknown layer type {kind!r}; dagmm rebuilds only "
            f"Sequential, {', '.join(sorted(LAYERS))}, "
            f"{', '.join(sorted(_PARTS))} and {', '.join(sorted(_CONFIGURED))}. "
            "Upgrade dagmm if the file was written by a newer version."
        )
    try:
        return klass(**args)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"config.json: cannot build {kind} ({where}) with arguments {args}: {err}") from None


def _supplied(desc: Mapping, supplied: Mapping, what: str) -> Any:
    """The user's object for a ``custom`` entry, or an error saying which load_detector argument to pass."""
    arg = desc.get("argument")
    if supplied.get(arg) is None:
        raise ValueError(f"The saved detector uses a {what}: load_detector(path, {arg}=...).")
    return supplied[arg]


def _part(desc: Mapping, attr: str, arg: str, supplied: Mapping, where: str) -> nn.Module:
    if supplied.get(arg) is not None:
        return supplied[arg]  # the user's instance wins over the description
    if attr not in desc:
        raise ValueError(f"config.json: {where} ({desc['type']}) has no '{attr}' entry.")
    return build_module(desc[attr], supplied, f"{where}.{attr}")


def build_callable(desc: Any, supplied: Mapping[str, Any]) -> Callable:
    """A registry callable, or the user's one for a custom entry."""
    if not isinstance(desc, Mapping):
        raise ValueError(f"config.json: a callable entry must be an object, got {desc!r}.")
    if "custom" in desc:
        return _supplied(desc, supplied, f"custom function {desc['custom']} for {desc.get('argument')} that is "
                                         "not saved in files; pass it again")
    name = desc.get("callable")
    if name not in CALLABLES:
        raise ValueError(f"config.json names unknown function {name!r}; known: {sorted(CALLABLES)}.")
    return CALLABLES[name]

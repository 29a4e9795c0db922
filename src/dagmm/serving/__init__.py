"""Serving detectors over the Open Inference Protocol V2 (KServe v2, Triton's REST form).

``dagmm serve DIR [DIR ...]`` (:func:`serve`) puts each detector directory
behind ``/v2/models/<directory name>``; :mod:`dagmm.serving.mlserver` is the
same model for MLServer, Seldon Core 2 and KServe.  See ``docs/serving.md``.

Needs the ``serve`` extra: ``pip install 'dagmm[serve]'``.  Nothing here is
imported by ``import dagmm``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve", "create_app", "ServeSettings", "ServedModel", "ServerProcess"]

_WHERE = {"serve": "server", "create_app": "app", "ServeSettings": "app", "ServedModel": "model",
          "ServerProcess": "launch"}


def __getattr__(name: str) -> Any:  # lazy: the web stack loads only when asked for
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

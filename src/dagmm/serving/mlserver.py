"""An MLServer runtime for dagmm detector directories (MLServer, Seldon Core 2, KServe).

``model-settings.json``::

    {"name": "kdd", "implementation": "dagmm.serving.mlserver.DagmmRuntime",
     "parameters": {"uri": "./kdd-model", "extra": {"predict_parameters": {"return_instance_score": true}}}}

The runtime loads the directory named by ``parameters.uri`` (from
:func:`dagmm.save_detector` or ``dagmm fit``) and answers exactly as ``dagmm
serve`` does: the same inputs, outputs, request parameters, checks and error
messages (:class:`dagmm.serving.model.ServedModel`).  ``extra.predict_parameters``
are defaults for every request; a request's own ``parameters`` win.  Bad
requests answer 400 (MLServer's ``{"error": ...}``).  ``extra.max_rows`` caps
rows per request (default 100000).

Needs the ``mlserver`` extra: ``pip install 'dagmm[mlserver]'``.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from mlserver import MLModel
    from mlserver.errors import MLServerError
    from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters, ResponseOutput
    from mlserver.utils import get_model_uri
except ImportError as err:  # pragma: no cover - exercised where mlserver is absent
    raise ImportError("dagmm.serving.mlserver needs MLServer, which is not installed: "
                      "pip install 'dagmm[mlserver]'") from err

from .model import PARAMETERS, ServedModel
from .protocol import ProtocolError, decode_request

__all__ = ["DagmmRuntime"]

_DEFAULT_MAX_ROWS = 100_000


class DagmmRuntime(MLModel):
    """Serves one dagmm detector directory; see the module docstring for the settings."""

    def _extra(self) -> dict:
        params = self.settings.parameters
        extra = (params.extra if params is not None else None) or {}
        if not isinstance(extra, dict):
            raise MLServerError("parameters.extra must be an object.")
        return extra

    async def load(self) -> bool:
        extra = self._extra()
        defaults = extra.get("predict_parameters") or {}
        if not isinstance(defaults, dict) or any(k not in PARAMETERS for k in defaults):
            raise MLServerError(f"parameters.extra.predict_parameters must be an object with keys among "
                                f"{', '.join(PARAMETERS)}; got {defaults!r:.200}.")
        max_rows = extra.get("max_rows", _DEFAULT_MAX_ROWS)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise MLServerError(f"parameters.extra.max_rows must be a positive integer, got {max_rows!r:.40}.")
        self._defaults, self._max_rows = dict(defaults), max_rows
        uri = await get_model_uri(self.settings)
        self._served = await asyncio.to_thread(ServedModel, uri, self.name)
        if not self.inputs:
            self.inputs = [MetadataTensor(**spec) for spec in self._served.input_specs()]
        if not self.outputs:
            self.outputs = [MetadataTensor(**spec) for spec in self._served.output_specs()]
        return True

    def _run(self, payload: InferenceRequest) -> InferenceResponse:
        obj: dict[str, Any] = payload.model_dump(mode="json", exclude_none=True)
        obj["parameters"] = {**self._defaults, **(obj.get("parameters") or {})}
        try:
            request = decode_request(obj, max_rows=self._max_rows)
            outputs, meta, _ = self._served.infer(request)
        except ProtocolError as err:
            raise MLServerError(str(err), status_code=err.status) from None
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, parameters=Parameters(**meta),
            outputs=[ResponseOutput(name=n, shape=list(a.shape), datatype=t, data=a.ravel().tolist())
                     for n, t, a in outputs])

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # scoring holds the CPU: a thread keeps MLServer's event loop answering
        return await asyncio.to_thread(self._run, payload)

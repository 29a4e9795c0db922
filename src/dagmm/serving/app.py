"""The HTTP app: Open Inference Protocol V2 REST routes on FastAPI.

Routes (each ``/v2/models/{name}`` route also as ``/v2/models/{name}/versions/{version}``):

``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata),
``GET /v2/models/{name}`` (model metadata), ``GET /v2/models/{name}/ready``,
``POST /v2/models/{name}/infer``, and ``GET /metrics`` (Prometheus text).

Every error is a JSON ``{"error": "..."}`` with a 4xx status for anything a
client can cause.  The body limit is enforced while the body streams in, and
the row limit before any tensor is built (:mod:`dagmm.serving.protocol`).
With an API key every route but the two health probes needs
``Authorization: Bearer <key>``, compared in constant time.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures, whose `Request`
# is imported inside create_app (the web stack is an optional extra)
import hmac
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .._version import __version__
from .protocol import ProtocolError, dumps, encode_response, parse_request

__all__ = ["ServeSettings", "create_app", "require_extra"]

log = logging.getLogger("dagmm.serving")
HEADER_LENGTH = "inference-header-content-length"
#: Requests up to this size are decoded and encoded on the event loop; larger ones in a worker thread.
INLINE_BODY_BYTES = 256 * 2**10


def require_extra(module: str, extra: str = "serve"):
    """Import an optional dependency, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"`dagmm serve` needs {module.split('.')[0]}, which is not installed: "
                          f"pip install 'dagmm[{extra}]'") from err


@dataclass
class ServeSettings:
    """What a server (each worker) serves and its limits; picklable, for worker processes.

    Parameters
    ----------
    model_dirs : sequence of str
        Detector directories; each model is named after its directory.
    max_rows : int
        Most rows one request may score.
    max_body_bytes : int
        Largest request body accepted (after decompression).
    api_key : str, optional
        Bearer token required on every route but the health probes.
    """

    model_dirs: Sequence[str]
    max_rows: int = 100_000
    max_body_bytes: int = 64 * 2**20
    api_key: Optional[str] = field(default=None, repr=False)


class _Failure(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def _load_models(dirs: Sequence[str]) -> dict:
    from .model import ServedModel

    models: dict = {}
    for d in dirs:
        model = ServedModel(d)
        if model.name in models:
            raise ValueError(f"Two model directories are both named {model.name!r} ({models[model.name].path} "
                             f"and {d}); the name is the directory's base name, so rename one.")
        models[model.name] = model
    return models


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate body to at most ``limit`` bytes (a small bomb cannot grow past it)."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise _Failure(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none.")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise _Failure(400, f"The {encoding} body cannot be decompressed: {err}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _Failure(413, f"The decompressed body is larger than this server's limit of {limit} bytes "
                            "(--max-body-mb).")
    return out


def create_app(settings: "ServeSettings", models: Optional[dict] = None):
    """The FastAPI app serving ``settings.model_dirs`` (or the already loaded ``models``)."""
    fastapi = require_extra("fastapi")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from .batching import Batcher
    from .metrics import UNKNOWN_MODEL, Metrics

    models = _load_models(settings.model_dirs) if models is None else models
    metrics = Metrics()
    app = fastapi.FastAPI(title="dagmm", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    key = settings.api_key.encode() if settings.api_key else None

    def json_response(obj, status: int = 200, headers: Optional[dict] = None) -> Response:
        return Response(dumps(obj), status_code=status, media_type="application/json", headers=headers)

    def error(status: int, message: str, headers: Optional[dict] = None) -> Response:
        return json_response({"error": message}, status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # unknown routes, wrong methods
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(400, str(exc))

    @app.exception_handler(_Failure)
    async def failure(request, exc):
        return error(exc.status, str(exc), exc.headers)

    def authorize(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # compare_digest takes the same time wherever the first difference is
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise _Failure(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                           {"WWW-Authenticate": "Bearer"})

    def model_for(name: str, version: Optional[str]):
        model = models.get(name)
        if model is None:
            raise _Failure(404, f"No model named {name!r}; this server has {', '.join(sorted(models))}.")
        if version is not None and version != model.version:
            raise _Failure(404, f"Model {name!r} has no version {version!r}; it has version {model.version!r}.")
        return model

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        too_big = _Failure(413, f"The request body is larger than this server's limit of {limit} bytes "
                                "(--max-body-mb); send fewer rows per request or use the binary tensor format.",
                           {"Connection": "close"})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()  # a bytearray, so the binary tensors decode into writable arrays without a copy
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise too_big
            body += chunk
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            body = bytearray(_inflate(bytes(body), encoding, limit))
        return body

    # --------------------------------------------------------------- health
    @app.get("/v2/health/live")
    async def live():
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        return json_response({"ready": True})

    @app.get("/v2")
    async def server_metadata(request: Request):
        authorize(request)
        return json_response({"name": "dagmm", "version": __version__, "extensions": ["binary_tensor_data"]})

    @app.get("/metrics")
    async def prometheus(request: Request):
        authorize(request)
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    # --------------------------------------------------------------- models
    async def model_metadata(request: Request, name: str, version: Optional[str] = None):
        authorize(request)
        return json_response(model_for(name, version).metadata())

    async def model_ready(request: Request, name: str, version: Optional[str] = None):
        authorize(request)
        return json_response({"name": name, "ready": model_for(name, version) is not None})

    batchers = {name: Batcher(model) for name, model in models.items()}

    def decode(model, body: bytearray, header_length: Optional[str]):
        request = parse_request(body, header_length, settings.max_rows)
        X, opts = model.prepare(request)
        return request, X, opts

    def encode(model, request, data: dict, opts: dict):
        outputs = model.outputs(data, opts)
        asked = request.outputs or {}
        binary = [n for n, _, _ in outputs if (asked.get(n) if asked.get(n) is not None else request.binary_output)]
        return encode_response(model.name, model.version, request.id, model.response_parameters, outputs, binary)

    async def off_loop_if_large(small: bool, fn, *args):
        # a small request takes a few ms on the loop; a large one holds the CPU longer, so it goes
        # to a thread and health probes stay quick
        return fn(*args) if small else await run_in_threadpool(fn, *args)

    async def infer(request: Request, name: str, version: Optional[str] = None):
        start = time.perf_counter()
        label, status, rows = UNKNOWN_MODEL, 500, 0
        try:
            authorize(request)
            model = model_for(name, version)
            label = model.name
            body = await read_body(request)
            small = len(body) <= INLINE_BODY_BYTES
            req, X, opts = await off_loop_if_large(small, decode, model, body, request.headers.get(HEADER_LENGTH))
            data = await batchers[model.name].score(X, opts)  # scoring itself always runs in a thread
            payload, json_size = await off_loop_if_large(small, encode, model, req, data, opts)
            rows, status = int(X.shape[0]), 200
        except _Failure as exc:
            status = exc.status
            raise
        except ProtocolError as exc:
            status = exc.status
            return error(exc.status, str(exc))
        except Exception:  # a bug, not the client's doing: say so, log the traceback, keep serving
            log.exception("inference failed for model %s", name)
            return error(500, "Internal error while scoring; the server log has the traceback.")
        finally:
            metrics.observe(label, time.perf_counter() - start, status, rows)
        if json_size is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_size)})

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])
    app.state.models = models
    return app

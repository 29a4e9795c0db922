"""Prometheus metrics of the inference endpoint, per model.

With several workers the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before
any worker starts, so every worker writes its counts to files there and
``/metrics`` on any worker adds up all of them.  Requests naming a model that
is not served count under ``model="_unknown"``: a client cannot grow the
label set.
"""

from __future__ import annotations

import os

__all__ = ["Metrics", "UNKNOWN_MODEL"]

UNKNOWN_MODEL = "_unknown"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests, errors, latency and rows scored, labelled by model."""

    def __init__(self) -> None:
        import prometheus_client as prom

        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("dagmm_infer_requests", "Inference requests received", ["model"],
                                     registry=self.registry)
        self.errors = prom.Counter("dagmm_infer_errors", "Inference requests answered with an error",
                                   ["model", "code"], registry=self.registry)
        self.latency = prom.Histogram("dagmm_infer_latency_seconds", "Time from request to response body",
                                      ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rows = prom.Counter("dagmm_rows_scored", "Rows scored", ["model"], registry=self.registry)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def observe(self, model: str, seconds: float, code: int, rows: int) -> None:
        self.requests.labels(model).inc()
        self.latency.labels(model).observe(seconds)
        if code >= 400:
            self.errors.labels(model, str(code)).inc()
        elif rows:
            self.rows.labels(model).inc(rows)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        prom = self._prom
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

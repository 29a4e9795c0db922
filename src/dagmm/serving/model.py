"""One served detector: what it takes, what it returns, and one inference call.

Uses the public API only: :func:`dagmm.load_detector` and the detector's
``predict`` (``score`` for the ``DAGMM`` estimator, which has no threshold);
a directory written by ``dagmm fit`` is loaded and preprocessed by the very
code that ``dagmm score`` uses, so a served score equals the scored file's.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .protocol import DTYPES, InferRequest, ProtocolError, Tensor

__all__ = ["ServedModel", "PARAMETERS", "PROTOCOL_PARAMETERS"]

#: Request parameters that change the result, with their meaning (for errors and docs).
PARAMETERS = {
    "return_instance_score": "true/false: return instance_score (default true)",
    "return_feature_score": "true/false: return feature_score (OutlierAE only; default false)",
    "outlier_type": "'instance' or 'feature' (OutlierAE only; default 'instance')",
    "outlier_perc": "percentage of the largest feature scores averaged per instance (OutlierAE only)",
    "threshold": "a number that replaces the detector's threshold for this request",
}
#: Parameters that protocol clients send on their own (Triton, MLServer); accepted and ignored.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start",
                                 "sequence_end", "content_type", "headers", "binary_data_size"})
_NUMERIC = frozenset(k for k, v in DTYPES.items() if v.kind in "iuf")
VERSION = "1"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table_loader():
    # The loader and preprocessing of `dagmm score`; one implementation for both.
    from ..tables.model import PREPROCESSING, load_table_model

    return PREPROCESSING, load_table_model


class ServedModel:
    """A detector directory behind the protocol.

    Parameters
    ----------
    path : str or os.PathLike
        A directory from :func:`dagmm.save_detector` or from ``dagmm fit``.
    name : str, optional
        The model's name in URLs (default: the directory's base name).
    """

    def __init__(self, path: "str | os.PathLike", name: Optional[str] = None) -> None:
        import dagmm

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"No model directory at {path}")
        self.name = name or self.path.resolve().name
        self.version = VERSION
        self.preprocessor = None
        preprocessing, load_fit_dir = _table_loader()
        if (self.path / preprocessing).is_file():
            self.detector, self.preprocessor, _ = load_fit_dir(str(self.path))
        elif (self.path / "config.json").is_file():
            self.detector = dagmm.load_detector(str(self.path))
        else:
            raise FileNotFoundError(f"{path} is not a detector directory: it has neither config.json "
                                    f"(save_detector) nor {preprocessing} (dagmm fit).")
        self.kind = type(self.detector).__name__
        if self.kind == "DAGMM":
            self.feature_shape = (int(self.detector.n_features_in_),)
        else:
            self.feature_shape = tuple(int(s) for s in self.detector.feature_shape_)
        # one predict at a time per model: the detectors' batch threads already use the cores
        self._lock = threading.Lock()

    # ------------------------------------------------------------ metadata
    @property
    def meta(self) -> dict:
        """The detector's ``meta`` (for ``DAGMM``, the same keys describing the estimator)."""
        meta = getattr(self.detector, "meta", None)
        if meta is None:
            import dagmm

            meta = {"name": "DAGMM", "detector_type": "outlier", "data_type": "tabular", "online": False,
                    "version": dagmm.__version__}
        return dict(meta)

    @property
    def threshold(self) -> Optional[float]:
        return getattr(self.detector, "threshold", None)

    def input_specs(self) -> list[dict]:
        if self.preprocessor is None:
            return [{"name": "input", "datatype": "FP32", "shape": [-1, *self.feature_shape]}]
        pre = self.preprocessor
        return [{"name": c, "datatype": "FP64" if c in pre.numeric_ else "BYTES", "shape": [-1]}
                for c in pre.feature_columns_]

    def output_specs(self) -> list[dict]:
        row = [-1]
        outs = [{"name": "instance_score", "datatype": "FP64", "shape": row},
                {"name": "is_outlier", "datatype": "INT64", "shape": row}]
        if self.kind == "OutlierAE":
            outs.append({"name": "feature_score", "datatype": "FP32", "shape": [-1, *self.feature_shape]})
        return outs

    def metadata(self) -> dict:
        """The OIP model metadata response."""
        params = {"detector": self.kind, "threshold": self.threshold}
        return {"name": self.name, "versions": [self.version], "platform": "dagmm",
                "inputs": self.input_specs(), "outputs": self.output_specs(),
                "parameters": {k: v for k, v in params.items() if v is not None}}

    # ------------------------------------------------------------- inputs
    def _array_input(self, inputs: list) -> np.ndarray:
        if len(inputs) != 1:
            raise ProtocolError(f"Model {self.name!r} takes one input tensor of shape [N, "
                                f"{', '.join(map(str, self.feature_shape))}], got {len(inputs)} inputs.")
        t: Tensor = inputs[0]
        if t.datatype not in _NUMERIC:
            raise ProtocolError(f"input {t.name!r}: datatype {t.datatype} is not accepted; send FP32 or FP64.")
        if t.shape[1:] != self.feature_shape:
            raise ProtocolError(f"input {t.name!r}: shape {list(t.shape)} does not match the model's "
                                f"[N, {', '.join(map(str, self.feature_shape))}] (the features it was fitted on).")
        return t.data

    def _table_input(self, inputs: list) -> Any:
        import pandas as pd

        pre = self.preprocessor
        columns = pre.feature_columns_
        given = {t.name: t for t in inputs}
        missing = [c for c in columns if c not in given]
        extra = [n for n in given if n not in set(columns)]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing[:10]))}")
            if extra:
                parts.append(f"unknown input(s) {', '.join(map(repr, extra[:10]))}")
            raise ProtocolError(f"Model {self.name!r} takes one input per column ({len(columns)}: "
                                f"{', '.join(map(repr, columns[:10]))}{', ...' if len(columns) > 10 else ''}); "
                                + "; ".join(parts) + ".")
        rows = {t.shape[0] for t in inputs}
        if len(rows) > 1:
            raise ProtocolError(f"The inputs have different row counts {sorted(rows)}; every column needs N rows.")
        frame = {}
        for c in columns:
            t = given[c]
            if len(t.shape) != 1 and not (len(t.shape) == 2 and t.shape[1] == 1):
                raise ProtocolError(f"input {c!r}: shape {list(t.shape)}; a column is shape [N].")
            if c in pre.numeric_ and t.datatype not in _NUMERIC:
                raise ProtocolError(f"input {c!r}: datatype {t.datatype}, but the column is numeric; send FP64 "
                                    "(or another number type).")
            if c not in pre.numeric_ and t.datatype not in ("BYTES", "BOOL"):
                raise ProtocolError(f"input {c!r}: datatype {t.datatype}, but the column is categorical; send "
                                    "its values as BYTES (strings).")
            frame[c] = t.data.reshape(-1)
        return pre.transform(pd.DataFrame(frame))

    # ---------------------------------------------------------- parameters
    def _options(self, params: dict, asked: Optional[dict]) -> dict:
        unknown = [k for k in params if k not in PARAMETERS and k not in PROTOCOL_PARAMETERS]
        if unknown:
            raise ProtocolError(f"Unknown request parameter(s) {', '.join(map(repr, unknown))}; this model "
                                f"accepts {', '.join(PARAMETERS)}.")
        opts = {"return_instance_score": True, "return_feature_score": False, "outlier_type": "instance",
                "outlier_perc": 100.0, "threshold": None}
        for key in ("return_instance_score", "return_feature_score"):
            if key in params:
                if not isinstance(params[key], bool):
                    raise ProtocolError(f"parameters.{key} must be true or false, got {params[key]!r:.40}.")
                opts[key] = params[key]
        if "outlier_type" in params:
            if params["outlier_type"] not in ("instance", "feature"):
                raise ProtocolError(f"parameters.outlier_type must be 'instance' or 'feature', "
                                    f"got {params['outlier_type']!r:.40}.")
            opts["outlier_type"] = params["outlier_type"]
        if "outlier_perc" in params:
            value = params["outlier_perc"]
            if not _is_number(value) or not 0 < value <= 100:
                raise ProtocolError(f"parameters.outlier_perc must be a number in (0, 100], got {value!r:.40}.")
            opts["outlier_perc"] = float(value)
        if params.get("threshold") is not None:
            value = params["threshold"]
            if not _is_number(value) or not math.isfinite(value):
                raise ProtocolError(f"parameters.threshold must be a finite number, got {value!r:.40}.")
            opts["threshold"] = float(value)
        is_ae = self.kind == "OutlierAE"
        if not is_ae:
            ae_only = (("outlier_type", "instance"), ("outlier_perc", 100.0), ("return_feature_score", False))
            for key, default in ae_only:
                if opts[key] != default:
                    raise ProtocolError(f"parameters.{key} applies to OutlierAE only; this model is {self.kind}.")
        names = {o["name"] for o in self.output_specs()}
        if asked is not None:
            bad = [n for n in asked if n not in names]
            if bad:
                raise ProtocolError(f"Unknown output(s) {', '.join(map(repr, bad))}; the model's outputs are "
                                    f"{', '.join(sorted(names))}.")
            opts["outputs"] = list(asked)
        else:
            can_flag = opts["threshold"] is not None or self.threshold is not None
            opts["outputs"] = [n for n in ("is_outlier", "instance_score", "feature_score")
                               if n in names and (can_flag if n == "is_outlier" else opts[f"return_{n}"])]
            if not opts["outputs"]:
                raise ProtocolError("Nothing to return: return_instance_score is false and the model has no "
                                    "threshold for is_outlier.")
        if "is_outlier" in opts["outputs"] and opts["threshold"] is None and self.threshold is None:
            raise ProtocolError(f"Model {self.name!r} ({self.kind}) has no threshold, so it cannot say "
                                "is_outlier: pass parameters.threshold or ask only for instance_score.")
        return opts

    # ------------------------------------------------------------- predict
    def prepare(self, request: InferRequest) -> tuple[np.ndarray, dict]:
        """The detector's input rows and the options of one request; bad input raises :class:`ProtocolError`."""
        opts = self._options(request.parameters, request.outputs)
        try:
            X = self._array_input(request.inputs) if self.preprocessor is None else self._table_input(request.inputs)
        except ProtocolError:
            raise
        except (ValueError, TypeError) as err:  # the preprocessing's own checks (NaN in a column, ...)
            raise ProtocolError(str(err)) from None
        return X, opts

    def run(self, X: np.ndarray, opts: dict) -> dict:
        """Score rows: the ``data`` dict of ``predict`` (arrays of len(X) rows, or None).

        The detector's ValueError and TypeError (NaN, values too large, ...) become a :class:`ProtocolError`.
        """
        try:
            with self._lock:
                return self._predict(X, opts)
        except (ValueError, TypeError) as err:
            raise ProtocolError(str(err)) from None

    def outputs(self, data: dict, opts: dict) -> list:
        """``[(name, datatype, array)]`` of the outputs the request asked for."""
        types = {o["name"]: o["datatype"] for o in self.output_specs()}
        return [(n, types[n], data[n]) for n in opts["outputs"]]

    @property
    def response_parameters(self) -> dict:
        """The detector's meta, as the response's ``parameters`` (None values left out)."""
        return {k: v for k, v in self.meta.items() if v is not None}

    def infer(self, request: InferRequest) -> tuple[list, dict, int]:
        """Run one request: ``([(name, datatype, array)], response parameters, rows scored)``.

        Bad input raises :class:`ProtocolError`.
        """
        X, opts = self.prepare(request)
        return self.outputs(self.run(X, opts), opts), self.response_parameters, int(X.shape[0])

    def _predict(self, X: np.ndarray, opts: dict) -> dict:
        want, threshold = set(opts["outputs"]), opts["threshold"]
        if self.kind == "DAGMM":  # the estimator's predict gives the energies; it has no threshold
            scores = self.detector.predict(X)
            return {"instance_score": scores,
                    "is_outlier": (scores > threshold).astype(np.int64) if "is_outlier" in want else None}
        if threshold is None:
            kwargs: dict = {"return_instance_score": True}
            if self.kind == "OutlierAE":
                kwargs.update(outlier_type=opts["outlier_type"], outlier_perc=opts["outlier_perc"],
                              return_feature_score="feature_score" in want)
            return dict(self.detector.predict(X, **kwargs)["data"])
        # a threshold of this request: the scores predict compares, flagged by predict's rule (strictly above)
        if self.kind == "OutlierAE":
            fscore, iscore = self.detector.score(X, opts["outlier_perc"])
            flagged = fscore if opts["outlier_type"] == "feature" else iscore
        else:
            fscore, iscore = None, self.detector.score(X)
            flagged = iscore
        return {"instance_score": iscore, "feature_score": fscore,
                "is_outlier": (flagged > threshold).astype(np.int64)}

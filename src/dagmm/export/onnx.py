"""A fitted detector as one ONNX graph: its scaling, its network and its scoring, input raw rows, output scores.

The graph is the detector's plain torch modules (:mod:`dagmm.models`) traced by
``torch.onnx.export``, with the mixture of ``OutlierAEGMM`` written as
constants: ONNX has no Cholesky factorisation or triangular solve, so each
component's inverse Cholesky factor ``P_k``, ``P_k^T mu_k`` and ``log phi_k +
log det P_k - D log(2 pi) / 2`` (:func:`dagmm.models.gmm.energy_terms`, the
same terms the detector's own scoring uses) are precomputed, and the energy is
one product, a sum of squares and ``ReduceLogSumExp``, in float64 as in
``score``.  The C kernels play no part: ONNX Runtime runs the same function,
so its scores agree with ``score`` to float32 rounding of the network
(``tests/test_export.py`` checks relative 1e-4).

Serving the file: ``docs/export.md``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..detectors.ae import OutlierAE, n_top_features
from ..detectors.aegmm import OutlierAEGMM
from ..detectors.base import NotFittedError
from ..detectors.estimator import DAGMM
from ..models.covariance import residual_nll, stacked_log_prob, stacked_whitening
from ..models.gmm import energy_terms, log_prob_from_terms
from ..models.nets import AEGMMNet

__all__ = ["export_onnx", "OPSET"]

#: The ONNX opset written by default (ReduceLogSumExp, TopK and the rest are there since well before 17).
OPSET = 17
_INPUT = "x"


def _onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError("export_onnx needs the onnx package: pip install 'dagmm[onnx]' (or pip install onnx)."
                          ) from err
    return onnx


class _Scaling(nn.Module):
    """``(x - mean) / scale`` in float32, as the detector standardises (nothing when it does not)."""

    def __init__(self, mean: Optional[np.ndarray], scale: Optional[np.ndarray]) -> None:
        super().__init__()
        self.on = mean is not None
        if self.on:
            self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32)))
            self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale if self.on else x


class _EnergyGraph(nn.Module):
    """Sample energy ``-logsumexp_k (c_k - |P_k^T (z - mu_k)|^2 / 2)`` of the model's ``z``, float64 (N,),
    with the detector's residual model (``residual``, as ``OutlierAEGMM._residual_model`` gives it): the joint
    mixture of :func:`dagmm.models.covariance.component_residual_log_prob`, or the energy plus
    :func:`dagmm.models.covariance.residual_nll`."""

    def __init__(self, model: nn.Module, scaling: _Scaling, phi: torch.Tensor, mu: torch.Tensor,
                 prec_chol: torch.Tensor, residual: Optional[dict] = None) -> None:
        super().__init__()
        self.model, self.scaling = model, scaling
        self.plain = type(model) is AEGMMNet  # encode skips the estimation network, as score does
        terms = energy_terms(phi.double().cpu(), mu.double().cpu(), prec_chol.double().cpu())
        for name, t in zip(("prec_t", "offset", "const"), terms):  # (K, D, D), (K, D), (K,)
            self.register_buffer(name, t.contiguous())
        residual = dict(residual or {})
        if "means" in residual:  # the joint mixture's terms as constants: P_k side by side, m_k P_k, log det P_k
            terms = stacked_whitening(residual.pop("means").cpu(), residual.pop("prec_chols").cpu())
            residual = dict(zip(("p_all", "offset", "log_det"), terms))
        self.residual = sorted(residual)
        for name in self.residual:  # the joint terms, mean (F,) and prec_chol (F, F), or error_scale (F,)
            t = residual[name].detach().cpu()
            self.register_buffer(f"residual_{name}", (t if name == "p_all" else t.double()).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scaling(x)
        x_recon, z = self.model.encode(x) if self.plain else self.model(x)[:2]
        terms = {n: getattr(self, f"residual_{n}") for n in self.residual}
        if "p_all" in terms:  # one mixture of the code and the residual, as OutlierAEGMM.score; unchunked
            lp = log_prob_from_terms(z.double().T, self.prec_t, self.offset, self.const)  # (K, N)
            lr = stacked_log_prob(x - x_recon, **terms, max_elements=None)  # (N, K)
            return -torch.logsumexp(lp + lr.T, dim=0)
        # the formula of dagmm.models.gmm.sample_energy, its terms constants of the graph
        e = -torch.logsumexp(log_prob_from_terms(z.double().T, self.prec_t, self.offset, self.const), dim=0)
        if terms:  # the residual's Gaussian term of OutlierAEGMM.score, float64 as there
            e = e + residual_nll(x.double() - x_recon.double(), **terms)
        return e


class _ReconGraph(nn.Module):
    """Instance score (mean of the ``k`` largest feature scores, float64) and feature scores (float32)."""

    def __init__(self, ae: nn.Module, scaling: _Scaling, k: int, n_features: int,
                 error_scale: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.ae, self.scaling, self.k, self.n_features = ae, scaling, k, n_features
        self.error_scale = None if error_scale is None else torch.from_numpy(np.asarray(error_scale, np.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.scaling(x)
        fscore = (x - self.ae(x)).square()  # the shape of x
        if self.error_scale is not None:  # the detector's per-feature training error (OutlierAE.error_scale_)
            fscore = fscore / self.error_scale
        flat = fscore.reshape(-1, self.n_features).double()  # (N, F)
        if self.k < self.n_features:
            flat = torch.topk(flat, self.k, dim=1).values  # (N, k)
        return flat.mean(1), fscore


def _graph(detector: Any, outlier_perc: float) -> tuple[nn.Module, tuple, list[str], dict]:
    """The module to trace, a sample input, the output names and what the metadata records."""
    if isinstance(detector, DAGMM):
        if not hasattr(detector, "detector_"):
            raise NotFittedError("This DAGMM is not fitted yet: call fit(x) before export_onnx.")
        inner = detector.detector_
        # the estimator's normalisation, then the inner detector's own (off unless asked for)
        scalings = [_Scaling(getattr(detector, "x_mean_", None), getattr(detector, "x_std_", None)),
                    _Scaling(getattr(inner, "scaler_mean_", None), getattr(inner, "scaler_scale_", None))]
        graph, example, outputs, meta = _graph(inner, outlier_perc)
        graph.scaling = nn.Sequential(*scalings)
        return graph, example, outputs, {**meta, "detector": "DAGMM"}
    if not isinstance(detector, (OutlierAEGMM, OutlierAE)):
        raise TypeError(f"export_onnx: expected a fitted OutlierAEGMM, OutlierAE or DAGMM, got "
                        f"{type(detector).__name__}.")
    if not getattr(detector, "_fitted", False):
        raise NotFittedError(f"This {type(detector).__name__} is not fitted yet: call fit(X) before export_onnx.")
    scaling = _Scaling(getattr(detector, "scaler_mean_", None), getattr(detector, "scaler_scale_", None))
    row_shape = tuple(int(s) for s in detector.feature_shape_)
    example = (torch.zeros((2, *row_shape), dtype=torch.float32),)
    meta = {"detector": type(detector).__name__, "input_shape": ["N", *row_shape],
            "threshold": detector.threshold, "standardized_inside": scaling.on}
    if isinstance(detector, OutlierAEGMM):
        net = copy.deepcopy(detector.aegmm).cpu().eval()
        graph = _EnergyGraph(net, scaling, detector.phi_, detector.mu_, detector.prec_chol_,
                             detector._residual_model())
        return graph, example, ["instance_score"], meta
    n_features = math.prod(row_shape)
    k = n_top_features(outlier_perc, n_features)
    graph = _ReconGraph(copy.deepcopy(detector.ae).cpu().eval(), scaling, k, n_features,
                        getattr(detector, "error_scale_", None))
    return graph, example, ["instance_score", "feature_score"], {**meta, "outlier_perc": outlier_perc}


def export_onnx(detector: Any, path: Union[str, os.PathLike], *, outlier_perc: float = 100.0,
                opset: int = OPSET, metadata: Optional[dict] = None) -> Path:
    """Write a fitted detector as one ONNX graph, from raw feature rows to its scores.

    Parameters
    ----------
    detector : OutlierAEGMM, OutlierAE or DAGMM
        Fitted.  Its standardisation (``scaler_mean_`` / ``scaler_scale_``,
        the estimator's ``x_mean_`` / ``x_std_``) is part of the graph, so the
        graph takes the same raw rows as ``score``.
    path : str or path-like
        The ``.onnx`` file to write (its folder must exist).
    outlier_perc : float in (0, 100], default 100
        ``OutlierAE`` only: the instance score averages the ``ceil(outlier_perc%
        * F)`` largest feature scores, as ``score(X, outlier_perc)``; fixed in
        the graph.
    opset : int, default 17
        ONNX opset; at least 17.
    metadata : dict, optional
        Extra string entries for the model's ``metadata_props`` (JSON-encoded
        unless already strings), e.g. the input column names.

    Returns
    -------
    pathlib.Path
        The file written.  Input ``"x"``: float32 of shape ``(N, *feature_shape_)``
        (any N).  Outputs: ``"instance_score"`` float64 (N,), for ``OutlierAE``
        also ``"feature_score"`` float32 of the input's shape.  The model's
        ``metadata_props`` record the detector, its threshold and the input
        shape (``dagmm.*`` keys).

    Raises
    ------
    NotFittedError
        The detector is not fitted.
    TypeError, ValueError
        Another kind of object; a bad ``outlier_perc`` or ``opset``.
    ImportError
        The ``onnx`` package is missing (``pip install 'dagmm[onnx]'``).
    """
    from ..detectors.ae import _check_outlier_perc

    outlier_perc = _check_outlier_perc(outlier_perc)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset must be an int >= {OPSET} (ReduceLogSumExp over an axis input), got {opset!r}.")
    onnx = _onnx()
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a directory; give the .onnx file to write, e.g. {str(path / 'model.onnx')!r}.")
    graph, example, outputs, meta = _graph(detector, outlier_perc)
    graph.eval()
    dynamic = {_INPUT: {0: "N"}, **{name: {0: "N"} for name in outputs}}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter: no onnxscript needed; torch warns that it is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), input_names=[_INPUT], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=int(opset), dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    entries = {f"dagmm.{k}": v for k, v in meta.items()}
    entries["dagmm.version"] = __version__
    entries.update(metadata or {})
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = str(key), value if isinstance(value, str) else json.dumps(value)
    model.producer_name, model.producer_version = "dagmm", __version__
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path

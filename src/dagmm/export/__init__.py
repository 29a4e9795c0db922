"""Detectors in formats other programs serve: ONNX (:func:`dagmm.export_onnx`)."""

from .onnx import export_onnx

__all__ = ["export_onnx"]

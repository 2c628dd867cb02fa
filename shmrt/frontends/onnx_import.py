"""ONNX -> shmrt.Sequential: the entry points under their established names.

The importer lives in the ``shmrt.frontends.onnx`` package; this module re-exports what callers
(shmrt.load, the tests, bench/onnx_conformance.py) import from here."""
from shmrt.frontends.onnx.errors import ONNXImporterBug, UnsupportedONNX, raised_on_purpose, refusals_only
from shmrt.frontends.onnx.importer import _Converter, from_onnx, load_onnx_file

__all__ = ["from_onnx", "load_onnx_file", "UnsupportedONNX", "ONNXImporterBug", "raised_on_purpose",
           "refusals_only", "_Converter"]

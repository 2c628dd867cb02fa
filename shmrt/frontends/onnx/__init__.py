"""The ONNX importer, split by concern: importer.py (the walk), layout.py (the stream's views),
folding.py (constants), handlers_*.py (ops on the stream), patterns.py (multi-node rewrites),
external.py (external data and its confinement), reading.py (tensors, attributes, schemas),
errors.py (refusals versus importer bugs).  Its layers go through ``shmrt.frontends.chain``."""
from shmrt.frontends.onnx.errors import ONNXImporterBug, UnsupportedONNX
from shmrt.frontends.onnx.importer import from_onnx, load_onnx_file

__all__ = ["from_onnx", "load_onnx_file", "UnsupportedONNX", "ONNXImporterBug"]

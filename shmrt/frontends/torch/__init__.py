"""The torch importer: converter.py (from_torch and the walk over the fx graph), modules.py (the
torch modules), calls.py (torch functions and Tensor methods), transformer.py (embeddings,
attention, encoder layers and their masks), graph.py (tracing and the tables of what is
supported).  Its layers go through ``shmrt.frontends.chain``."""
from shmrt.frontends.torch.converter import from_torch

__all__ = ["from_torch"]

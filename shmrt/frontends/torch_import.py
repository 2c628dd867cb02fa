"""Loader: a live PyTorch ``nn.Module`` -> ``shmrt.Sequential``, under its established name.

The importer lives in the ``shmrt.frontends.torch`` package; this module re-exports what callers
import from here."""
from shmrt.frontends.torch.converter import from_torch
from shmrt.frontends.torch.graph import SUPPORTED_FUNCTIONS, SUPPORTED_MODULES

__all__ = ["from_torch", "SUPPORTED_MODULES", "SUPPORTED_FUNCTIONS"]

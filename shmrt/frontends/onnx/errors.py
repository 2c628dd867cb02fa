"""The ONNX importer's two kinds of failure, and the rule that tells them apart.

UnsupportedONNX refuses a model (a construct shmrt cannot express, or a malformed model); it is
raised only by deliberate checks.  Any other exception inside the importer is a bug in shmrt and is
reported as ONNXImporterBug, never passed off as a refusal."""
from __future__ import annotations

import contextlib
import linecache
import os
import sys


class UnsupportedONNX(NotImplementedError, ValueError):
    """An ONNX construct shmrt cannot express, or a malformed model (a ValueError)."""


class ONNXImporterBug(RuntimeError):
    """shmrt's ONNX importer failed in an unexpected way: a bug in shmrt, not a refusal of the model."""


def _source_files(module, reexported) -> set:
    """The files whose ``raise`` statements count as ``module``'s own: its file and, with
    ``reexported``, the files of the modules of its own package that define the classes it
    re-exports (shmrt.ir.layers as a facade over several modules of shmrt.ir)."""
    files = {os.path.abspath(module.__file__)}
    if reexported:
        package = module.__name__.rsplit(".", 1)[0] + "."
        for v in vars(module).values():
            src = sys.modules.get(v.__module__) if isinstance(v, type) else None
            if src is not None and src.__name__.startswith(package) and getattr(src, "__file__", None):
                files.add(os.path.abspath(src.__file__))
    return files


def raised_on_purpose(e, module, reexported=False) -> bool:
    """Did ``module``'s own code (with ``reexported``, that of the classes it re-exports) raise ``e``
    with a ``raise`` statement (an argument check of a shmrt layer, say), rather than numpy or Python
    inside it?"""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename
    if os.path.abspath(path) not in _source_files(module, reexported):
        return False
    return linecache.getline(path, tb.tb_lineno).lstrip().startswith("raise")


@contextlib.contextmanager
def refusals_only(where, checks):
    """Refusals pass: UnsupportedONNX, and a ValueError that the module ``checks`` (shmrt.ir.layers) raises on
    purpose (a layer's argument check: a constructor, output_shape, Sequential), re-raised as UnsupportedONNX
    named by ``where``.  Any other exception (AttributeError, KeyError, numpy's errors, ...) is a bug in the
    importer: ONNXImporterBug, chained to it."""
    try:
        yield
    except UnsupportedONNX:
        raise
    except Exception as e:
        if isinstance(e, ValueError) and raised_on_purpose(e, checks, reexported=True):
            raise UnsupportedONNX(f"{where}: {e}") from None
        raise ONNXImporterBug(f"{where}: {type(e).__name__}: {e} -- this is a bug in shmrt's ONNX importer, not a "
                              f"problem of the model; please report it (with the model, or this message)") from e

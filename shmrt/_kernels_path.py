"""``shmrt.kernels`` is the repository's top-level ``kernels/`` folder: an
installed shmrt has it at ``shmrt/kernels/`` (pyproject.toml's package-dir
mapping), so nothing named ``kernels`` lands in site-packages (PyPI has an
unrelated ``kernels``).  Run from a source checkout, where ``shmrt/kernels``
does not exist, this points the subpackage's search path at ``../kernels``
before anything imports it."""
import os


_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_here, "kernels")):
    _src = os.path.join(os.path.dirname(_here), "kernels")
    if os.path.isfile(os.path.join(_src, "__init__.py")):
        import importlib.util
        import sys
        spec = importlib.util.spec_from_file_location("shmrt.kernels", os.path.join(_src, "__init__.py"),
                                                      submodule_search_locations=[_src])
        module = importlib.util.module_from_spec(spec)
        sys.modules["shmrt.kernels"] = module
        spec.loader.exec_module(module)

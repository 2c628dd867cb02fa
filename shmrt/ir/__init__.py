"""The model as the user wrote it: layers with PyTorch's names, shapes and
conventions (layers.py re-exports them from base, dense, norm, conv,
recurrent and model), the native file format (native.py), and an
independent numpy forward pass (reference.py: the tests' float64 yardstick
and the benchmark's numpy peer).  Everything upstream (frontends) produces
this; everything downstream (compile) reads it."""

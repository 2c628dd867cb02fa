"""The model as the user wrote it: layers with PyTorch's names, shapes and
conventions (layers.py) and the native file format (native.py).  Everything
upstream (frontends) produces this; everything downstream (compile) reads it."""

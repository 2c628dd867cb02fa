"""What shmrt runs on this machine: ``python -c "import shmrt; print(shmrt.machine())"``."""
from __future__ import annotations

import os


def machine() -> dict:
    """The CPU, the instruction set the GEMM tile was compiled for (chosen at import from the host's
    features: AVX-512, AVX2 + FMA, or portable vectors, e.g. ARM64 NEON), its register tile, and which
    kernel each kind of step runs."""
    import numba
    import numpy as np

    from shmrt.compile.cost import cpu_model, l2_bytes
    from shmrt.kernels import MR, NR
    from shmrt.kernels.gemm import KC
    from shmrt.kernels.linear import PACKED_MIN_OUT
    from shmrt.kernels.tile import ISA, V
    tile = f"shmrt packed tile, {ISA}: {MR} x {NR} in {MR * NR // V} vectors of {V} float32, K blocks of {KC}"
    blas = "OpenBLAS through SciPy/Numba (sgemm, sgemv)"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "l2_bytes": l2_bytes(),
        "isa": ISA,
        "tile": f"{MR} x {NR}",
        "kernels": {
            f"Linear, >= {PACKED_MIN_OUT} outputs": tile,
            f"Linear, < {PACKED_MIN_OUT} outputs": blas,
            "RNN / LSTM / GRU (input projection and each step)": tile,
            "Conv2d, stride 1 (im2col columns in place)": tile,
            "Conv2d, other strides (im2row)": blas,
        },
        "numba": numba.__version__,
        "numpy": np.__version__,
    }

"""The instruction sets the GEMM tiles are compiled for: chosen once per process from the host CPU's
features, or forced with SHMRT_TILE_ISA (avx512, avx2 or portable -- to run the narrower paths'
numerics on a wider machine; forcing one the CPU lacks fails when the tile first runs)."""
import os

# name -> (floats per vector V, rows of the register tile MR): MR x 2 vector accumulators
ISAS = {"avx512": (16, 12), "avx2": (8, 6), "portable": (4, 6)}


def host_isa() -> str:
    forced = os.environ.get("SHMRT_TILE_ISA", "").strip().lower()
    if forced:
        if forced not in ISAS:
            raise ValueError(f"SHMRT_TILE_ISA must be one of {', '.join(ISAS)}, got {forced!r}")
        return forced
    import llvmlite.binding as llb
    feats = llb.get_host_cpu_features()
    if feats.get("avx512f"):
        return "avx512"
    if feats.get("avx2") and feats.get("fma"):
        return "avx2"
    return "portable"


ISA = host_isa()


# The integer tile's path (qtile.py), forced with SHMRT_QUANT_ISA: name -> bytes one vector instruction takes
QISAS = {"vnni512": 64, "avx2": 32, "portable": 32}


def host_qisa() -> str:
    forced = os.environ.get("SHMRT_QUANT_ISA", "").strip().lower()
    if forced:
        if forced not in QISAS:
            raise ValueError(f"SHMRT_QUANT_ISA must be one of {', '.join(QISAS)}, got {forced!r}")
        return forced
    import llvmlite.binding as llb
    f = llb.get_host_cpu_features()
    if f.get("avx512vnni") and f.get("avx512bw") and ISAS[ISA][0] * 2 % 16 == 0:
        return "vnni512"
    return "avx2" if f.get("avx2") else "portable"


QISA = host_qisa()

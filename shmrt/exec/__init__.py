"""What runs a plan: the interpreter every worker (and the in-process
executor) runs over the programs and the kernels it calls (executor.py),
per-step timing (profile.py) and the ahead-of-time compile of it all into
Numba's disk cache (warmup.py)."""

"""Processes and shared memory, knowing no models: segments (store.py),
atomics, futex waits and barriers (sync.py), the control block's layout and
commands (control.py), the pool of pinned workers (pool.py), how they are
started (launch.py) and each worker's main loop (worker.py), which serves
whatever programs and segments it is handed."""

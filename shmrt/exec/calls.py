"""The convenience tier's call, ``cm(x)``: results allocated, rows moved once.

With single copy (compile/io.py), every participant reads its rows of x
straight from the caller's array and writes its rows of the result straight
into the array the call returns, in parallel; nothing passes through the
calling thread.  Where the OS refuses (Pool.copy_note says why), or for a
runtime without workers, the calling thread copies x into the arena's input
rows and the output out, max_batch rows at a time, as before.
"""
from __future__ import annotations

import numpy as np

from shmrt.compile.io import IO_ROWS
from shmrt.parallel import buffers
from shmrt.parallel import control as C
from shmrt.parallel.pool import CopyRefused


def row_bytes(o) -> int:
    """Bytes of output per row (TopK, MaxPool with Indices: float32 values and int64 indices)."""
    return o.width * 12 if o.paired else int(np.prod(o.shape)) * (8 if o.kind == "argmax" else 4)


def check_room(n, nbytes) -> None:
    """Refuse a batch whose output cannot fit in memory, before allocating it."""
    need = n * nbytes
    if need > 1 << 30:
        import psutil
        free = psutil.virtual_memory().available
        if need > free:
            raise ValueError(f"a batch of {n:,} rows needs {need / 2**30:,.1f} GiB for its output, and "
                             f"{free / 2**30:,.1f} GiB of memory is available; expected a batch that fits "
                             f"(call in parts)")


def stack(programs):
    """Programs of different lengths as one [strategies, P, steps, ROW] array, END-padded
    between each program's steps and its INPUT and OUTPUT rows, which stay last."""
    steps = max(p.shape[1] for p in programs)
    out = np.zeros((len(programs), programs[0].shape[0], steps, programs[0].shape[2]), np.int64)
    for i, p in enumerate(programs):
        out[i, :, :p.shape[1] - IO_ROWS] = p[:, :-IO_ROWS]
        out[i, :, steps - IO_ROWS:] = p[:, -IO_ROWS:]
    return out


def results(o, n) -> list:
    """The arrays a call of n rows returns: [output], or [values, indices] for TopK (and MaxPool with Indices)."""
    if o.paired:
        return [np.empty((n, *o.shape), np.float32), np.empty((n, *o.shape), np.int64)]
    return [np.empty((n, *o.shape), np.int64 if o.kind == "argmax" else np.float32)]


# Below this many bytes of input a call copies through the arena in the calling thread: the
# workers' cross-memory calls cost a system call each (about 1-2 us), a copy that small less.
SINGLE_COPY_MIN_BYTES = 1 << 18


def call(cm, x, outs) -> None:
    """Run cm on the rows of x (a 2-D [n, features] array) into outs (results()); the caller
    holds the runtime's lock."""
    pool = cm.runtime.pool
    if pool is not None and pool.single_copy and x.shape[0] * x.shape[1] * 4 >= SINGLE_COPY_MIN_BYTES:
        try:
            return _single_copy(cm, pool, np.ascontiguousarray(x, np.float32), outs)
        except CopyRefused:  # the pool copies through the arena from now on: run the call that way
            pass
    o = cm.plan.output
    for s in range(0, x.shape[0], cm.max_batch):
        e = min(x.shape[0], s + cm.max_batch)
        cm.input_buffer(e - s).reshape(e - s, -1)[...] = x[s:e]
        out = cm.run_in_place(e - s)
        if o.paired:
            outs[0][s:e], outs[1][s:e] = out
            if o.idx_step and s:  # the indices of a call count from its first row: from row s here
                outs[1][s:e] += s * o.idx_step
        else:
            outs[0][s:e] = out


def _single_copy(cm, pool, x, outs) -> None:
    n, plan = x.shape[0], cm.plan
    o = plan.output
    src = x.ctypes.data
    if src == cm.arena[plan.input_off:].ctypes.data:  # x is the arena's input rows: nothing to move in
        src = 0
    x_rb = x.shape[1] * 4
    found = buffers.find(x) if src else None  # rows in a shared buffer: the workers read them there
    xbuf = pool.use_buffer(found) if found is not None else 0
    dst = [a.ctypes.data for a in outs] + [0]
    rbs = [a.strides[0] for a in outs] + [0]
    for s in range(0, n, cm.max_batch):
        e = min(n, s + cm.max_batch)
        name = plan.strategy_for(cm.strategy, e - s)
        index = plan.program_index(name)
        cm._reset_counters(name)
        loc = local(cm, x[s:e] if src else None, index)
        split = 0
        if loc[5].shape[0] and e - s >= 2 * plan.workers:  # the caller reads its rows in place: share by speed
            split = min(e - s - 1, max(1, int((e - s) * (1.0 - cm._share))))
        pool.command(C.OP_RUN, cm.id, e - s, index, local=loc, stamps=cm._stamps if split else None,
                     io=(src and src + s * x_rb, dst[0] + s * rbs[0], dst[1] + s * rbs[1], split, xbuf))
        if split:
            cm._share = balance(cm._share, cm._stamps)
        if o.idx_step and s:  # the indices of a call count from its first row: from row s here
            outs[1][s:e] += s * o.idx_step


def balance(share, stamps) -> float:
    """The calling thread's next share of a call's rows, from the last call's stamps (published,
    all done, the caller's share done): it reads its rows in place while the workers copy theirs,
    so its rows are cheaper; move rows towards whoever finished first, halfway to the balance
    the two speeds imply, within 5..95 %."""
    t_all, t_mine = stamps[1] - stamps[0], stamps[2] - stamps[0]
    if t_all <= 0 or t_mine <= 0:
        return share
    if t_all > t_mine * 1.02:  # the workers finished last: the caller was faster per row
        mine, theirs = share / t_mine, (1.0 - share) / t_all
    else:  # the caller finished last (the workers' finish time is not seen): give up a little
        return max(0.05, share * 0.97)
    return min(0.95, max(0.05, 0.5 * share + 0.5 * mine / (mine + theirs)))


def local(cm, rows, index, record=None):
    """The calling thread's arguments of a single-copy RUN of program index (Pool.command's
    local): it reads its own rows of ``rows`` (the call's input) where they are, when the
    program allows it (its INPUT row's direct field, compile/io.py); record: a profiled call's."""
    got = cm._local if record is None else cm._local[:3] + (record,) + cm._local[4:]
    pool = cm.runtime.pool
    # (a read-only array would need a compile of its own)
    if rows is not None and pool.caller and cm._direct[index] and rows.flags.writeable:
        return got[:5] + (rows.reshape(-1),)
    return got


def pack(plan, args, refused_kinds):
    """cm(x1, x2, ...) or cm({"name": x, ...}) for a graph of several inputs: one float32 array
    [n, row] with each sample's inputs side by side (compile/several.py), and whether the inputs
    were single samples (no batch axis)."""
    specs = plan.inputs
    names = [name for name, _, _, _ in specs]
    want = ", ".join(f"{name} (N, {', '.join(map(str, shape))})" for name, shape, _, _ in specs)
    if len(args) == 1 and isinstance(args[0], dict):
        got = args[0]
        if set(got) != set(names):
            raise TypeError(f"expected the inputs {names} by name, got {sorted(got)}")
        args = [got[n] for n in names]
    if len(args) != len(specs):
        raise TypeError(f"this model takes {len(specs)} inputs, {want}: cm(x1, x2, ...) or cm({{name: x}}); "
                        f"got {len(args)}")
    arrs, single = [], None
    lengths = dict(plan.lengths)
    batched = [np.ndim(x) > len(shape) for (n, shape, _, _), x in zip(specs, args) if n not in lengths]
    for (name, shape, _, _), x in zip(specs, args):
        x = np.asarray(x)
        if x.dtype.kind in refused_kinds:
            raise TypeError(f"input {name!r}: expected a real numeric array of shape (N, "
                            f"{', '.join(map(str, shape))}), got dtype {x.dtype} ({refused_kinds[x.dtype.kind]})")
        if name in lengths:  # a recurrent layer's lengths: [N] (ONNX's sequence_lens, PyTorch's) or [N, 1]
            x = check_lengths(name, x, lengths[name], batched[0] if batched else x.ndim > 0)
        one = x.ndim == len(shape)
        x = x[None] if one else x
        if tuple(x.shape[1:]) != tuple(shape) or (single is not None and one != single):
            raise ValueError(f"input {name!r}: expected shape (N, {', '.join(map(str, shape))}) or "
                             f"{tuple(shape)}, like the others, got {np.shape(args[len(arrs)])}")
        single = one
        arrs.append(x.reshape(x.shape[0], -1))
    if len({a.shape[0] for a in arrs}) != 1:
        raise ValueError(f"the inputs must have one batch size, got {[a.shape[0] for a in arrs]} for {names}")
    return np.concatenate(arrs, axis=1).astype(np.float32, copy=False), single


def check_lengths(name, x, T, batched):
    """Lengths as [N, 1] (one sample's: [1]); each an integer 1..T, else refused naming the sample."""
    flat = x.reshape(-1)
    bad = np.flatnonzero(~((flat >= 1) & (flat <= T) & (flat == np.round(flat))))
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"input {name!r} (sequence lengths): sample {k} has length {flat[k].item()!r}; expected an "
                         f"integer 1..{T} (the steps of that sequence to run; a length 0 is not supported)")
    return x.reshape(-1, 1) if batched else x.reshape(1)


def split(plan, y):
    """The output row of a graph of several outputs as its arrays: a tuple in the graph's order, or a
    dict by name (outputs given as a dict); y is [n, row] or one row [row]."""
    lead = y.shape[:-1]
    outs = [y[..., c:c + w].reshape(lead + tuple(shape)) for _, shape, c, w in plan.outputs]
    if plan.named_outputs:
        return {name: o for (name, _, _, _), o in zip(plan.outputs, outs)}
    return tuple(outs)

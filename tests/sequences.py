"""Helpers of the transformer tests: torch modules with float32-exact random weights, padded
batches, and the comparison at real positions (where the reference must write 0 at padding)."""
import numpy as np

from reference import rel_err


def f32_double(m, seed=0):
    """m (a torch module) in float64 eval mode, its parameters random (LayerNorm weights near 1) and
    rounded to float32 values: shmrt stores float32, so both sides then compute from the same numbers."""
    import torch
    g = torch.Generator().manual_seed(seed)
    m = m.double().eval()
    norms = {id(k.weight) for k in m.modules() if isinstance(k, torch.nn.LayerNorm) and k.weight is not None}
    with torch.no_grad():
        for p in m.parameters():
            r = torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.5
            p.copy_((1.0 + 0.4 * r if id(p) in norms else 0.6 * r).float().double())
    return m


def seqs(N, T, D, seed=1):
    """[N, T, D] float64 sequences of float32 values."""
    return np.random.default_rng(seed).standard_normal((N, T, D)).astype(np.float32).astype(np.float64)


def padding(lengths, T, left=False):
    """bool [N, T], True at padding: each sequence's real tokens first (or last, left=True)."""
    pos = np.arange(T)[None, :]
    n = np.asarray(lengths)[:, None]
    return pos < T - n if left else pos >= n


def compare(y, ref, pad=None):
    """The worst rel_err of one sequence over its real positions (a short sequence is measured on
    its own, not against the longest one's values); the reference must be 0 at every padding position."""
    if pad is None:
        return rel_err(y, ref)
    assert np.all(ref[pad] == 0), "the reference must write 0 at padding positions"
    return max(rel_err(y[i][~pad[i]], ref[i][~pad[i]]) for i in range(len(pad)) if (~pad[i]).any())

"""The float64 yardstick of every test: shmrt.ir.reference, an independent numpy forward pass (it
shares nothing with the planner or the kernels), and rel_err, the measure the tests bound."""
import numpy as np

from shmrt.ir.reference import act, conv2d, forward, pool2d, recurrent

__all__ = ["forward", "rel_err", "act", "recurrent", "conv2d", "pool2d"]


def rel_err(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))

"""The benchmark's peers compute the same function as shmrt (or skip cleanly)."""
import numpy as np
import pytest

from reference import forward, rel_err
from shmrt.peers import PEERS, Skip
from shmrt.workloads import WORKLOADS


@pytest.mark.parametrize("workload", ["mlp", "cnn", "lstm", "logreg"])
@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_matches_float64(workload, peer):
    wl = WORKLOADS[workload]()
    x = np.random.default_rng(0).standard_normal((3, *wl.input_shape)).astype(np.float32)
    try:
        impl = PEERS[peer](wl.model, 1, wl.input_shape)
    except Skip as e:
        pytest.skip(str(e))
    try:
        with impl.scope():
            assert rel_err(impl.run(x), forward(wl.model, x)) <= 1e-5
    finally:
        impl.close()

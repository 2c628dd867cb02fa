"""Models and inputs shared by the tests and by the child scripts they run."""
import numpy as np

import shmrt

STRATEGIES = ("auto", "data", "model", "hybrid", "pipeline")


def rnd(*shape, seed=0):
    """Seeded standard-normal float32 inputs."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def small_mlp():
    shmrt.manual_seed(0)
    return shmrt.Sequential([shmrt.Linear(64, 128), shmrt.ReLU(), shmrt.Linear(128, 10), shmrt.Softmax()])


def big_mlp():
    """~100 MB of float32 weights; a call at batch 256 takes tens of ms."""
    shmrt.manual_seed(0)
    return shmrt.Sequential([shmrt.Linear(1024, 4096), shmrt.ReLU(), shmrt.Linear(4096, 4096), shmrt.ReLU(),
                             shmrt.Linear(4096, 1024)])

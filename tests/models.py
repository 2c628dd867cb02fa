"""Models shared by the tests and by the child scripts they run."""
import shmrt


def small_mlp():
    shmrt.manual_seed(0)
    return shmrt.Sequential([shmrt.Linear(64, 128), shmrt.ReLU(), shmrt.Linear(128, 10), shmrt.Softmax()])


def big_mlp():
    """~100 MB of float32 weights; a call at batch 256 takes tens of ms."""
    shmrt.manual_seed(0)
    return shmrt.Sequential([shmrt.Linear(1024, 4096), shmrt.ReLU(), shmrt.Linear(4096, 4096), shmrt.ReLU(),
                             shmrt.Linear(4096, 1024)])

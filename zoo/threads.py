"""Thread budgets for processes that run torch and TensorFlow side by side.

Torch-free and TensorFlow-free: the batch parent (zoo/batch.py) and the test workers set these
variables in a child's environment, or their own before importing either library, because both
read them once, at start-up.
"""
import os

# torch's OpenMP pool, MKL, and TensorFlow's two pools (TF reads the TF_NUM_* variables when its
# runtime starts; tf.config cannot change them after the first op).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def share_per_process(processes: int) -> int:
    """Threads per process when `processes` run at once on this process's cores (at least 1):
    more would oversubscribe them, and spinning OpenMP threads then slow every process down."""
    return max(1, available_cores() // max(1, processes))


def thread_env(threads: int, environ=None) -> dict:
    """`environ` (default os.environ) with each thread variable set to `threads`, except those
    the user set: an explicit choice wins."""
    env = dict(os.environ if environ is None else environ)
    for var in THREAD_VARS:
        env.setdefault(var, str(threads))
    return env

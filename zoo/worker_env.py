"""The environment of processes that run torch and TensorFlow side by side: thread budgets and
the memory allocator.

Torch-free and TensorFlow-free: the batch parent (zoo/batch.py), the benchmark and the test
workers set these variables in a child's environment, or their own before importing either
library, because both libraries and glibc read them once, at start-up.
"""
import os
import resource

# glibc raises its mmap threshold after each free of a large block (up to 32 MB), so the big
# tensors of one stage (torch's float64 copy, activations) end up on the heap and stay in the
# worker's RSS when freed. A fixed threshold (which also turns the raising off) gives every block
# of 1 MiB or more back to the system when freed: a conversion's peak RSS above the interpreter
# fell 6-11 % (resnet50 606 -> 570 MB, convnext_tiny 584 -> 543, vit_small 439 -> 391; same
# conversion time), under issue 11's 3x both models' parameter bytes.
# numpy asks the kernel for huge pages on arrays of 4 MB or more (madvise); with this kernel's
# THP "defrag=madvise" a fault on such an array may compact memory first, synchronously. Measured
# on VGG-11's mapping (0.5 GB of fresh kernels), same machine, 3 runs each: 0.29-1.34 s with it,
# 0.46-0.52 s without.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "NUMPY_MADVISE_HUGEPAGE": "0"}
# ...but it makes every large allocation a fresh mmap whose pages fault in on first touch, and
# PyTorch's CPU allocator mallocs each op's output anew: timed under it, PyTorch models ran up to
# ~1.6x slower while TensorFlow (which pools its buffers) did not move. What glibc's dynamic
# threshold settles at on a long-running process: mmap only above 32 MiB, trim above 64 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # mallopt parameters (glibc malloc.h)
_STEADY_MMAP_THRESHOLD = 32 << 20

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


def worker_env(threads: int, environ=None) -> dict:
    """A conversion worker's environment: thread_env plus ALLOCATOR_ENV (a user's own setting
    of either wins)."""
    env = thread_env(threads, environ)
    for var, value in ALLOCATOR_ENV.items():
        env.setdefault(var, value)
    return env


def restore_steady_allocator() -> bool:
    """Undo ALLOCATOR_ENV in a running process (glibc only; False elsewhere): before timing
    anything, so that both frameworks allocate as in a user's long-running process."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):   # no C library found, or not glibc's
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, 2 * _STEADY_MMAP_THRESHOLD))


def peak_rss_mb() -> float:
    """This process' peak resident set so far in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# issue 11: a conversion worker's peak RSS above its import baseline stays under this many times
# the bytes of both models' parameters (convert_all's summary and the benchmark report hold it)
RSS_LIMIT_FACTOR = 3


def rss_limit_mb(parameter_bytes: float) -> float:
    """RSS_LIMIT_FACTOR x `parameter_bytes` in MiB, the unit of peak_rss_mb."""
    return RSS_LIMIT_FACTOR * parameter_bytes / 2**20

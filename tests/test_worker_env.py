"""zoo/worker_env.py's allocator settings, observed in a real child process: convert_all's fixed
1 MiB mmap threshold hands a freed 8 MiB block back to the system at once (its peak-RSS purpose),
and restore_steady_allocator (what the benchmark does before timing: PyTorch ran up to 2.5x
slower under the fixed threshold) keeps such a block on the heap again, as glibc's own dynamic
threshold does in a long-running process."""
import os
import subprocess
import sys

import pytest

from zoo.worker_env import ALLOCATOR_ENV

CHILD = """
import os
import numpy as np
from zoo.worker_env import restore_steady_allocator

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def returned_on_free():
    block = np.ones(8 << 20, np.uint8)
    before = rss()
    del block
    return before - rss()

print(returned_on_free(), restore_steady_allocator(), returned_on_free())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_fixed_threshold_frees_large_blocks_and_restore_keeps_them():
    env = {**os.environ, **ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    fixed, restored, steady = int(out[0]), out[1], int(out[2])
    assert fixed >= 7 << 20, out          # the whole block left RSS when freed
    assert restored == "True"
    assert steady < 1 << 20, out          # kept on the heap for the next allocation

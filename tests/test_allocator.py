import os
import platform
import subprocess
import sys

import pytest

from isnet.allocator import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize(
    "environ",
    [
        {"ISNET_KEEP_FREED_MEMORY": "0"},
        {"ISNET_KEEP_FREED_MEMORY": "off"},
        {"MALLOC_TRIM_THRESHOLD_": "1000"},
        {"MALLOC_MMAP_THRESHOLD_": "1000"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ],
)
def test_leaves_the_allocator_alone_when_told_or_already_chosen(environ):
    assert keep_freed_memory(environ) is False


# Four 8 MiB blocks allocated and freed together, again and again: the pattern of the
# relevance tensors of a training step.  Counts the page faults of the repeated rounds.
_ROUNDS = """
import resource, sys
import torch
from isnet.allocator import keep_freed_memory
applied = keep_freed_memory({}) if sys.argv[1] == "keep" else False
def rounds(n):
    for _ in range(n):
        blocks = [torch.ones(2**21) for _ in range(4)]
        del blocks
rounds(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="tunes glibc's malloc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    pages = 20 * 4 * 2**23 // 4096  # every round's 32 MiB, page by page
    applied, kept = _faults("keep")
    assert applied == "True"
    assert kept < pages // 20
    # The control shows that the count sees the faults: blocks above a small, fixed threshold
    # are mapped afresh each time.  (glibc's default adapts its threshold to what the process
    # did before, so it is not a stable control.)
    _, mapped = _faults("default", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert mapped > pages // 2

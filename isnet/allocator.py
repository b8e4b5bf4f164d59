"""The process's memory allocator, set up for training loops on the CPU.

An ISNet step allocates and frees many large temporaries (the B x K relevances of
every layer).  With glibc's default settings, freed blocks above a size threshold
go back to the operating system and the next step's allocation of the same size
page-faults its memory in again.  How often that happens depends on what the
process allocated before (glibc adapts its threshold): on the 2-core development
machine it cost the benchmark's small CNN about a fifth of its ISNet training step
in a fresh process, and between 1 and 11 million page faults in 20-epoch runs.
:func:`keep_freed_memory` tells glibc to keep such blocks for reuse.  The process's
resident memory then stays at its peak instead of shrinking between steps.

The ``isnet`` command line calls it at start-up.  A library user calls it once, or
sets glibc's own environment variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) or preloads another allocator (jemalloc, tcmalloc),
which this function then leaves alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Mapping

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # bytes; glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # bytes of free memory at the heap's top kept before returning any

OPT_OUT = "ISNET_KEEP_FREED_MEMORY"  # set to 0 to leave the allocator as it is
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _chosen_elsewhere(environ: Mapping[str, str]) -> bool:
    """Whether the user turned the setting off, or chose the allocator's settings (or another
    allocator) already, or the C library is not glibc."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return True
    preload = environ.get("LD_PRELOAD", "")
    return any(name in environ for name in _USER_SETTINGS) or any(
        name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")
    )


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Let glibc's malloc keep freed memory of up to 32 MiB per block for reuse.

    Sets ``M_MMAP_THRESHOLD`` (blocks below it come from the heap, not from fresh
    memory maps) and ``M_TRIM_THRESHOLD`` (free memory at the heap's top is kept
    up to 2 GiB).  Affects the whole process; call it before training.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        Whether the settings were applied: ``False`` off Linux/glibc, when
        ``ISNET_KEEP_FREED_MEMORY=0``, when the environment already sets glibc's
        ``MALLOC_*`` tunables, or when jemalloc / tcmalloc / mimalloc is preloaded.
    """
    if _chosen_elsewhere(os.environ if environ is None else environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.  Setting either value also turns off glibc's own adjustment
    # of the mmap threshold (which starts at 128 KiB), so both are always set together.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

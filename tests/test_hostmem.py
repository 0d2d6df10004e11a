"""`stylejax.hostmem`: freed heap goes back to the OS; ahead-of-time compilation."""

from __future__ import annotations

import ctypes
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import xla_compiles
from stylejax import hostmem


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or hostmem._malloc_trim() is None,
                    reason="malloc_trim is glibc's")
def test_release_hands_freed_heap_back():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 250 MB in 64 KiB blocks (below glibc's mmap threshold: heap memory, as a compiler's
    # scratch is), all freed but the last, which pins the heap's top so free() can't shrink it.
    size = 64 * 1024
    blocks = [libc.malloc(size) for _ in range(4000)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[:-1]:
        libc.free(b)
    kept = _rss_mb()
    assert hostmem.release_freed_memory()
    released = kept - _rss_mb()
    libc.free(blocks[-1])
    assert released > 200, released  # measured 250


def test_compile_released_runs_the_compiled_program():
    f = jax.jit(lambda x, k: jnp.cumsum(x) * k, static_argnames="k")
    before = xla_compiles("<lambda>")
    compiled = hostmem.compile_released(f, jnp.arange(5.0), k=3)
    assert xla_compiles("<lambda>") - before == 1
    np.testing.assert_allclose(compiled(jnp.arange(5.0)), [0, 3, 9, 18, 30])
    np.testing.assert_allclose(compiled(jnp.ones(5)), [3, 6, 9, 12, 15])

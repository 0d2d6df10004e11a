"""`stylejax.cpu.hostmem`: freed heap goes back to the OS; ahead-of-time compilation."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, xla_compiles
from stylejax.cpu import hostmem


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or hostmem._libc("malloc_trim") is None,
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


# A 6 MB block (below keep_step_heap's mmap threshold) allocated, touched and freed five
# times in a fresh process, after the steps named in argv[1] ("compiled": the whole package
# imported and a program compiled by compile_released and run; "kept": keep_step_heap);
# prints the page faults of the last four rounds.
_REUSE = """
import ctypes, resource, sys
from stylejax.cpu import hostmem
steps = sys.argv[1].split(",")
if "compiled" in steps:
    import jax, jax.numpy as jnp
    import stylejax
    f = hostmem.compile_released(jax.jit(lambda x: jnp.cumsum(x) * 2), jnp.arange(5.0))
    f(jnp.arange(5.0)).block_until_ready()
if "kept" in steps:
    assert hostmem.keep_step_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 6 * 2**20, []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _reuse_faults(steps):
    # Without any thresholds of the caller's own, which keep_step_heap would leave alone.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    r = subprocess.run([sys.executable, "-c", _REUSE, steps], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


_GLIBC = pytest.mark.skipif(
    not sys.platform.startswith("linux") or hostmem._libc("mallopt") is None,
    reason="mallopt is glibc's")


@_GLIBC
def test_keep_step_heap_reuses_freed_scratch():
    kept, default = _reuse_faults("kept"), _reuse_faults("default")
    # 6 MB is 1,536 pages: glibc's default maps and unmaps the block at least once more.
    assert kept < 100 <= default, (kept, default)


@_GLIBC
def test_the_library_leaves_the_heap_thresholds_to_the_program():
    """Importing stylejax and compiling through `compile_released` keep glibc's default
    thresholds (the block is mapped afresh, as in a bare process); `keep_step_heap`, called
    by the program itself afterwards, still fixes them."""
    compiled, then_kept = _reuse_faults("compiled"), _reuse_faults("compiled,kept")
    assert then_kept < 100 <= compiled, (then_kept, compiled)


def test_compile_released_sets_no_malloc_threshold(monkeypatch):
    """In this process: `compile_released` makes no ``mallopt`` call (through `keep_step_heap`
    or otherwise through `hostmem`); an explicit `keep_step_heap` makes its two."""
    calls = []
    libc = hostmem._libc

    def recording(name):
        if name == "mallopt":
            return lambda param, value: calls.append((param, value)) or 1
        return libc(name)

    monkeypatch.setattr(hostmem, "_libc", recording)
    for k in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(k)
    hostmem.keep_step_heap.cache_clear()  # an earlier call in this process would hide one
    try:
        compiled = hostmem.compile_released(jax.jit(lambda x: x + 1), jnp.arange(3.0))
        np.testing.assert_allclose(compiled(jnp.arange(3.0)), [1, 2, 3])
        assert calls == []
        assert hostmem.keep_step_heap()
        assert sorted(calls) == sorted([(hostmem._M_MMAP_THRESHOLD, hostmem.MMAP_THRESHOLD),
                                        (hostmem._M_TRIM_THRESHOLD, hostmem.TRIM_THRESHOLD)])
    finally:
        hostmem.keep_step_heap.cache_clear()  # its recorded result is not the process's


def test_user_thresholds_win():
    assert not hostmem._user_set_thresholds({})
    assert not hostmem._user_set_thresholds({"MALLOC_ARENA_MAX": "2"})
    assert hostmem._user_set_thresholds({"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert hostmem._user_set_thresholds({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"})
    assert not hostmem._user_set_thresholds({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})

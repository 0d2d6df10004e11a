"""Host memory: compile a program, hand the heap the compiler freed back to the OS, and keep
the heap the program's steps free for their next call.

XLA's CPU compiler (LLVM) allocates and frees 100-250 MB of scratch heap for a 512 px loss.
glibc keeps freed heap mapped, so without a trim it stays in the resident set; the step's
large buffers are then mapped fresh on top of it and the peak is that much higher.

The steps have the opposite problem. Eigen's matrix products (Winograd's batched products) and
YNNPACK's convolutions allocate scratch on every call, tens of MB on XLA's worker threads, and
glibc's default policy (trim and mmap thresholds that adapt to recent frees) hands much of it
back to the OS on each free, so the next call faults the same pages in again, zeroed. Measured
on a 2-core CPU: at 192 px 35,000-80,000 page faults per ten L-BFGS iterations and 5-7% of
the CPU time in the kernel; at 512 px some processes fell into 500,000 faults per ten
iterations and ran up to 13% slower. `keep_step_heap` fixes both thresholds so such scratch
stays mapped between calls: 18,000 faults per ten iterations at 192 px (XLA's temporary
buffer, mapped once per call), half the kernel time, iterations 2-4% faster at 192 and 512
px, the 512 px peak RSS 20-40 MB higher. This module only touches the C allocator, never JAX
arrays (`keep_step_heap` and `release_freed_memory` need no JAX, so a benchmark can use
them on a PyTorch side as well).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import os

import jax

from stylejax.cpu.xla_options import compile_lowered
from stylejax.execution import Execution

# glibc's mallopt parameters (malloc.h) and the values `keep_step_heap` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's adaptive thresholds at the values they adapt to (the mmap threshold's ceiling and
# twice it), fixed from the start. Other code in the process is then treated as glibc would
# treat it once warmed up: PyTorch's 256 and 512 px value+grad measured level with them.
# An 8 MB mmap threshold ran our steps at most 1% faster but PyTorch's 25% slower at 512 px
# (its 8-32 MB activations mapped and faulted in on every use); a 256 MB trim threshold
# added 30-85 MB to our 512 px peak RSS.
MMAP_THRESHOLD = 32 * 2**20  # blocks below it come from the heap, larger ones are mapped
TRIM_THRESHOLD = 64 * 2**20  # free heap kept at the top of an arena before glibc trims it
# glibc's tunables that set them (or stop their adapting); each is also a MALLOC_<NAME>_
# environment variable.
_THRESHOLD_TUNABLES = ("trim_threshold", "mmap_threshold", "top_pad", "mmap_max")


@functools.lru_cache(maxsize=None)
def _libc(name: str):
    """The C library's function ``name``, or None where there is none (not glibc: macOS, musl;
    Windows has no libc to find: CDLL(None) raises TypeError there)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or None), name)
    except (AttributeError, OSError, TypeError):
        return None


def _user_set_thresholds(environ) -> bool:
    """Whether the environment sets glibc's malloc thresholds itself (they then win)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(f"MALLOC_{t.upper()}_" in environ or f"glibc.malloc.{t}" in tunables
               for t in _THRESHOLD_TUNABLES)


@functools.lru_cache(maxsize=None)
def keep_step_heap() -> bool:
    """Fixes glibc's malloc thresholds for the whole process, once: blocks under 32 MB come
    from the heap, and up to 64 MB of free heap stays mapped per arena, so scratch that a
    compiled step frees is reused by its next call instead of being unmapped and faulted in
    again. True if set; False (nothing done) where the C library is not glibc or the
    environment sets these thresholds itself (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``).

    Freed memory above those sizes still goes back to the OS, and `release_freed_memory`
    still returns all of it on request. Setting the thresholds ends glibc's adaptive ones for
    the process (its other code keeps these values too)."""
    mallopt = _libc("mallopt")
    if mallopt is None or _user_set_thresholds(os.environ):
        return False
    set_mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    set_trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(set_mmap and set_trim)


def release_freed_memory() -> bool:
    """Returns freed heap memory kept by the C allocator to the operating system (glibc's
    ``malloc_trim(0)``: every arena, not only its top). True if the allocator supports it;
    False (and nothing done) elsewhere."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def compile_released(jitted, *args, **kwargs):
    """``jitted.lower(*args, **kwargs).compile()`` (with stylejax's compiler options,
    `xla_options.compile_lowered`, for the convolution algorithm of the first argument that
    is an `Execution`; the default one if none), then `release_freed_memory`. It does not call
    `keep_step_heap` (a process-wide setting): the command line does, for its own process.

    Call the result with the non-static arguments only. Compiling ahead like this, rather
    than on the first call, lets the compiler's scratch go back to the OS before the program
    first runs, so it never adds to the run's peak memory. Like `jax.jit`'s own cache, the
    last `CACHED` programs are kept by their arguments' shapes, dtypes, shardings and static
    values, so a second run with the same sizes and settings compiles nothing.
    """
    key = (jitted, _signature(args), _signature(kwargs))
    if key in _compiled:
        _compiled.move_to_end(key)
        return _compiled[key]
    execution = next((a for a in (*args, *kwargs.values()) if isinstance(a, Execution)),
                     Execution())
    conv = execution.resolved_conv()  # bfloat16 runs direct, whatever "auto" says
    compiled = compile_lowered(jitted.lower(*args, **kwargs), conv)
    release_freed_memory()
    _compiled[key] = compiled
    while len(_compiled) > CACHED:
        _compiled.popitem(last=False)
    return compiled


CACHED = 16
_compiled: collections.OrderedDict = collections.OrderedDict()


def forget_compiled() -> None:
    """Empties `compile_released`'s cache (a benchmark's cold start; `jax.clear_caches` does
    the same for jit's own)."""
    _compiled.clear()


def _signature(tree):
    """A hashable description of what ``tree`` compiles to: each array leaf as its shape,
    dtype, weak type and sharding (None for numpy arrays), other leaves as themselves."""
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple(
        (tuple(x.shape), str(x.dtype), getattr(x, "weak_type", False),
         getattr(x, "sharding", None))
        if hasattr(x, "shape") and hasattr(x, "dtype") else x for x in leaves)

"""Host memory: compile a program, then hand the heap the compiler freed back to the OS.

XLA's CPU compiler (LLVM) allocates and frees 100-250 MB of scratch heap for a 512 px loss.
glibc keeps freed heap mapped, so without a trim it stays in the resident set; the step's
large buffers are then mapped fresh on top of it and the peak is that much higher. This module
only touches the C allocator, never JAX arrays (it imports no JAX, so a benchmark can use it
on a PyTorch side as well).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from stylejax.xla_options import compile_lowered


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl; Windows has no
        # libc to find: CDLL(None) raises TypeError there): nothing to do
        return None


def release_freed_memory() -> bool:
    """Returns freed heap memory kept by the C allocator to the operating system (glibc's
    ``malloc_trim(0)``: every arena, not only its top). True if the allocator supports it;
    False (and nothing done) elsewhere."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def compile_released(jitted, *args, **kwargs):
    """``jitted.lower(*args, **kwargs).compile()`` (with stylejax's compiler options,
    `xla_options.compile_lowered`, for the convolution algorithm of the first argument that
    has a ``conv``: the `LossConfig`), then `release_freed_memory`.

    Call the result with the non-static arguments only. Compiling ahead like this, rather
    than on the first call, lets the compiler's scratch go back to the OS before the program
    first runs, so it never adds to the run's peak memory.
    """
    conv = next((a.conv for a in (*args, *kwargs.values())
                 if isinstance(getattr(a, "conv", None), str)), "auto")
    compiled = compile_lowered(jitted.lower(*args, **kwargs), conv)
    release_freed_memory()
    return compiled

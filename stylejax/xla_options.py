"""Compiler options for stylejax's own compiled programs: which library runs a convolution.

XLA's CPU backend hands both its convolutions and its dots to YNNPACK by default. Measured on
a 2-core AMD EPYC with AVX2 only (Zen 3), a direct 3x3 convolution's value+grad through
YNNPACK was slower than through XLA's Eigen path (the whole johnson-preset value+grad at
192 px, direct: 604 vs 543 ms, PyTorch's 542; the default, Winograd, whose first and last
layers stay direct: 434 vs 410 ms), while the batched matmuls of Winograd's layers ran as fast
or faster through YNNPACK. So the programs we compile ahead (the
solver's first state and epochs, batches, tiles, the benchmark) keep YNNPACK for dots only.

This is XLA's ``xla_cpu_experimental_ynn_fusion_type`` option, set per program (never in the
environment): a jaxlib that no longer knows it compiles with its own defaults instead, and a
user whose ``XLA_FLAGS`` names the option keeps their setting.
"""

from __future__ import annotations

import os

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

_rejected = False  # this jaxlib refused CPU_OPTIONS once: don't try again


def compiler_options(platform: str | None = None) -> dict:
    """The options `compile_lowered` adds for ``platform`` (default: JAX's default backend):
    `CPU_OPTIONS` on the CPU, none elsewhere, none once refused or set in ``XLA_FLAGS``."""
    import jax

    if (platform or jax.default_backend()) != "cpu" or _rejected:
        return {}
    if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS)


def compile_lowered(lowered):
    """``lowered.compile()`` (a `jax.stages.Lowered`) with `compiler_options()`; if this jaxlib
    rejects them, with XLA's defaults (and they are not tried again)."""
    global _rejected
    options = compiler_options()
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=options)
    except Exception as e:  # jax.errors.JaxRuntimeError: INVALID_ARGUMENT while setting it
        if YNN_OPTION not in str(e):
            raise
        _rejected = True
        return lowered.compile()

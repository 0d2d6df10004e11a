"""Compiler options for stylejax's own compiled programs: which library runs a convolution
or a matmul on the CPU.

XLA's CPU backend hands both its convolutions and its dots to YNNPACK by default. Measured on
a 2-core AMD EPYC with AVX2 only (Zen 3), interleaved in one process:

- a direct 3x3 convolution's value+grad ran slower through YNNPACK than through XLA's own
  Eigen path (the johnson-preset value+grad at 192 px, direct: 604 vs 543 ms, PyTorch's 542),
  while the loss's Gram matmuls ran faster through it (the same at 512 px with every dot in
  Eigen: 4210 against 3774 ms);
- Winograd's 36 batched products ran faster in Eigen, most on small maps (512 px: 2767 ->
  2449 ms for the whole value+grad; 24x24 maps: 23 -> 15 ms for a 512 -> 512 input gradient,
  with `winograd.FEW_TILES`'s layout), and the program compiled about 1 s sooner.

So a program with Winograd's convolutions (``--conv auto`` on a CPU) compiles with YNNPACK
off, and a direct one with YNNPACK for dots only. The programs we compile ahead are the
solver's first state and epochs, batches, tiles and the benchmark's.

This is XLA's ``xla_cpu_experimental_ynn_fusion_type`` option, set per program (never in the
environment): a jaxlib that no longer knows it compiles with its own defaults instead, and a
user whose ``XLA_FLAGS`` names the option keeps their setting.
"""

from __future__ import annotations

import os

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {"winograd": {YNN_OPTION: ""},
               "direct": {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}}
"""The CPU options of a program by its convolution algorithm (`vgg.resolve_conv`'s)."""

_rejected = False  # this jaxlib refused CPU_OPTIONS once: don't try again


def compiler_options(platform: str | None = None, conv: str = "auto") -> dict:
    """The options `compile_lowered` adds for ``platform`` (default: JAX's default backend)
    to a program whose convolutions use ``conv`` (one of `vgg.CONVS`): `CPU_OPTIONS` on the
    CPU, none elsewhere, none once refused or set in ``XLA_FLAGS``."""
    import jax

    from stylejax.vgg import resolve_conv

    platform = platform or jax.default_backend()
    if platform != "cpu" or _rejected or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS[resolve_conv(conv, platform)])


def compile_lowered(lowered, conv: str = "auto"):
    """``lowered.compile()`` (a `jax.stages.Lowered`) with `compiler_options` for ``conv``; if
    this jaxlib rejects them, with XLA's defaults (and they are not tried again)."""
    global _rejected
    options = compiler_options(conv=conv)
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=options)
    except Exception as e:  # jax.errors.JaxRuntimeError: INVALID_ARGUMENT while setting it
        if YNN_OPTION not in str(e):
            raise
        _rejected = True
        return lowered.compile()

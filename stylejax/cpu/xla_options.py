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

On a 2-core AMD EPYC Zen 5 with AVX-512 the few direct convolutions of a Winograd program
(conv1_1, conv1_2, conv5_1 and their input gradients) ran faster through YNNPACK, with the
batched products left in Eigen: an L-BFGS iteration 784 -> 723 ms at 512 px, 206 -> 192 ms at
256 px, 120 -> 119 ms at 192 px (interleaved, best of 5-12 ten-iteration epochs; conv1_1's
input gradient alone at 256 px 7.2 -> 1.7 ms, conv1_2's forward 16.1 -> 12.1 ms). The same
change in a direct program was level there (256 px: 277 vs 278 ms).

So a program with Winograd's convolutions (``--conv auto`` on a CPU) compiles with YNNPACK
for its convolutions only on a CPU with AVX-512 and with YNNPACK off elsewhere, and a direct
one with YNNPACK for dots only. AVX-512 is a proxy: the Winograd program was measured on the
Zen 5 CPU alone among the AVX-512 ones (on an older AVX-512 EPYC, Eigen's convolutions beat
YNNPACK's by 5% in a whole direct program, which this rule leaves alone). The programs we
compile ahead are the solvers' epochs and first states, batches, tiles and the benchmark's.

This is XLA's ``xla_cpu_experimental_ynn_fusion_type`` option, set per program (never in the
environment): a jaxlib that no longer knows it compiles with its own defaults instead, and a
user whose ``XLA_FLAGS`` names the option keeps their setting.
"""

from __future__ import annotations

import functools
import os

import jax

from stylejax.execution import resolve_conv

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_DOTS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
CPU_OPTIONS = {("winograd", False): {YNN_OPTION: ""},
               ("winograd", True): {YNN_OPTION: _CONVOLUTIONS},
               ("direct", False): {YNN_OPTION: _DOTS},
               ("direct", True): {YNN_OPTION: _DOTS}}
"""The CPU options of a program by its convolution algorithm (`execution.resolve_conv`'s) and
whether the CPU has AVX-512 (`has_avx512`)."""


@functools.cache
def has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True if the CPU reports AVX-512 (``avx512f`` among the flags of Linux's ``cpuinfo``);
    False where that file is missing or says otherwise (macOS, Windows, ARM)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False

_rejected = False  # this jaxlib refused CPU_OPTIONS once: don't try again


def compiler_options(platform: str | None = None, conv: str = "auto") -> dict:
    """The options `compile_lowered` adds for ``platform`` (default: JAX's default backend)
    to a program whose convolutions use ``conv`` (one of `execution.CONVS`): `CPU_OPTIONS` on the
    CPU, none elsewhere, none once refused or set in ``XLA_FLAGS``."""
    platform = platform or jax.default_backend()
    if platform != "cpu" or _rejected or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS[resolve_conv(conv, platform), has_avx512()])


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

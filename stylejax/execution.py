"""How the loss is executed, as opposed to what it is (`losses.LossConfig`).

    ex = Execution(conv="auto", dtype="float32")
    loss_fn(vgg, image, targets, cfg, ex)

Two runs that differ only in their `Execution` minimise the same loss; their values and
gradients agree to the rounding of the chosen precision. One caveat holds for every float32
network, PyTorch's included: a ReLU pre-activation or a 2x2 max-pool's top two values within
rounding of each other may be decided either way, and the gradient jumps by that unit's share
(1e-4 to 1e-2 of its norm at 64-256 px on random weights). Given the decisions the program
took, the gradient is within 4e-6 of float64 for each convolution choice (tests/test_winograd.py
imposes them on a float64 reference); Winograd's coarser rounding (2-5e-6 per layer against
direct's 3e-7) makes such near-ties go the other way about twice as often. A checkpoint made
under one execution may be resumed under another.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from stylejax.errors import StylejaxError

CONVS = ("auto", "direct", "winograd")
"""Convolution algorithms. "direct": XLA's convolution (on the CPU with the input gradient
written as a forward convolution, `stylejax.cpu.kernels`). "winograd": F(4x4, 3x3) on the
layers where it pays on a CPU (`stylejax.cpu.winograd`; float32 only). "auto": `AUTO_CPU` on
the CPU, direct on GPU/TPU (their libraries pick their own fast algorithms)."""

AUTO_CPU = "winograd"
"""What conv="auto" runs on a CPU."""

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Execution:
    """Static execution settings (hashable: part of a compiled program's identity).

    Attributes:
      conv: one of `CONVS`.
      dtype: the VGG activations' dtype, "float32" or "bfloat16" (for GPU/TPU); Grams, the
        loss, the image and the solver's state stay float32.
    """

    conv: str = "auto"
    dtype: str = "float32"

    def __post_init__(self):
        check_conv(self.conv)
        if self.dtype not in DTYPES:
            raise StylejaxError(f"Unknown precision {self.dtype!r}: use float32 or bfloat16.")
        if self.conv == "winograd" and self.dtype != "float32":
            raise StylejaxError("Winograd convolutions run in float32 only: drop --conv "
                                "winograd or --precision bf16.")

    def resolved_conv(self, platform: Optional[str] = None) -> str:
        """"direct" or "winograd": `conv` with "auto" decided for ``platform`` (default: JAX's
        default backend); bfloat16 always runs direct."""
        return resolve_conv(self.conv, platform, self.dtype)


def check_conv(conv: str) -> str:
    """Returns ``conv`` if it is one of `CONVS`, else raises StylejaxError."""
    if conv not in CONVS:
        raise StylejaxError(f"Unknown convolution {conv!r}: use {', '.join(CONVS[:-1])} or "
                            f"{CONVS[-1]}.")
    return conv


def resolve_conv(conv: str, platform: Optional[str] = None, dtype: str = "float32") -> str:
    """"direct" or "winograd" for the algorithm ``conv`` on ``platform`` ("cpu", "gpu",
    "tpu"; default: JAX's default backend) in ``dtype``."""
    if check_conv(conv) == "auto":
        cpu = (platform or jax.default_backend()) == "cpu"
        return AUTO_CPU if cpu and dtype == "float32" else "direct"
    return conv


def on_cpu(platform: Optional[str] = None) -> bool:
    """Whether programs are compiled for the CPU (``platform`` or JAX's default backend)."""
    return (platform or jax.default_backend()) == "cpu"


def as_execution(execution: Optional[Execution]) -> Execution:
    """``execution``, or the default `Execution()` for None."""
    return Execution() if execution is None else execution

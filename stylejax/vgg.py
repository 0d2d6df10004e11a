"""VGG-19's convolutional part as a Flax (linen) module, and `extract_features`.

Layer names (`LAYERS`): ``convB_I`` is convolution I of block B before its ReLU, ``reluB_I``
after it, ``poolB`` the block's 2x2 pooling. The network is evaluated only as deep as the
deepest requested layer. Each convolution is plain `lax.conv_general_dilated`; on a CPU (or
with Winograd) it runs through the one seam to `stylejax.cpu.kernels`, which computes the
same values and gradients faster there.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import stylejax.cpu.kernels as cpu_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.layers import LAYERS, check_layers, min_size
from stylejax.weights import CONV_SPECS, Vgg19

__all__ = ["LAYERS", "VGG19Features", "check_layers", "extract_features", "min_size",
           "pool2x2", "preprocess"]

_DN = ("NHWC", "HWIO", "NHWC")


def pool2x2(x, pooling: str):
    """2x2 pooling with stride 2 ('valid': an odd last row/column is dropped, as in Caffe
    with floor rounding, Keras and torchvision)."""
    if pooling not in ("max", "avg"):
        raise StylejaxError(f"Unknown pooling {pooling!r}: use 'max' or 'avg'.")
    # A reshape and a reduction rather than lax.reduce_window: XLA CPU computes the max
    # pool's gradient for reduce_window with select-and-scatter, 8x slower than this.
    return max_pool2x2(x) if pooling == "max" else _blocks(x).mean(axis=(2, 4))


def _blocks(x):
    """[N, H, W, C] -> [N, H//2, 2, W//2, 2, C], an odd last row/column dropped."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool2x2(x):
    """2x2 max pooling, stride 2, of [N, H, W, C]. Its gradient goes to the first maximum
    of each window in row-major order, as in PyTorch and Caffe."""
    return _blocks(x).max(axis=(2, 4))


def _max_pool_fwd(x):
    y = max_pool2x2(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    # Recomputed from the input and output, which are kept anyway: JAX's rule for the
    # reduction stores a float32 argmax indicator as big as the input in the forward pass
    # and needs two reductions (tie counts) in the backward one; this is one elementwise
    # pass (512 px step: XLA temp 629 -> 508 MB, about 1% faster).
    x, y = res
    b = _blocks(x)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(2):
        cols = []
        for j in range(2):
            hit = (b[:, :, i, :, j] == y) & ~taken
            taken = taken | hit
            cols.append(jnp.where(hit, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(cols, axis=3))
    n, h, w, c = x.shape
    dx = jnp.stack(rows, axis=2).reshape(n, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv3x3(nn.Module):
    """A 3x3 'same' convolution with bias, then ReLU if ``relu``; parameters ``kernel``
    [3, 3, Cin, Cout] and ``bias`` [Cout] (plus the prepared forms of
    `stylejax.cpu.kernels.prepare_kernels`, if present)."""

    features: int
    execution: Execution = Execution()
    relu: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.he_normal(),
                            (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = jnp.dtype(self.execution.dtype)
        x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
        if cpu_kernels.uses_cpu_forms(self.execution):  # the one seam to the CPU forms
            prepared = {k: self.get_variable("params", k) for k in ("winograd", "flipped")
                        if self.has_variable("params", k)}
            fast = cpu_kernels.uses_winograd(self.execution.resolved_conv(), x.shape,
                                             kernel.shape, dtype)
            return cpu_kernels.layer(x, kernel, bias, relu=self.relu, fast=fast,
                                     prepared=prepared)
        y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN) + bias
        return jax.nn.relu(y) if self.relu else y


class VGG19Features(nn.Module):
    """VGG-19 up to the deepest of ``layers``; returns ``{name: [N, h, w, C]}`` for ``layers``.

    Input: preprocessed NHWC images (see `preprocess`). ``execution``: the convolution
    algorithm and the activations' dtype; parameters stay float32.
    """

    layers: tuple[str, ...]
    pooling: str = "max"
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x):
        wanted = set(self.layers)
        deepest = max(LAYERS.index(name) for name in self.layers)
        out = {}
        convs = iter(CONV_SPECS)
        for name in LAYERS[: deepest + 1]:
            if name.startswith("conv"):
                _, _, cout = next(convs)
                # Fused with its ReLU unless the pre-activation itself is asked for.
                fused = name not in wanted
                x = Conv3x3(cout, self.execution, relu=fused, name=name)(x)
            elif name.startswith("relu"):
                x = x if fused else nn.relu(x)
            else:
                x = pool2x2(x, self.pooling)
            if name in wanted:
                out[name] = x
        return out


def preprocess(vgg: Vgg19, images):
    """Maps float RGB images in [0, 1] (NHWC) to the network's input for ``vgg``'s source."""
    p = vgg.preprocess
    x = images * p.scale
    if p.channels == "bgr":
        x = x[..., ::-1]
    return (x - jnp.asarray(p.mean, x.dtype)) / jnp.asarray(p.std, x.dtype)


def extract_features(vgg: Vgg19, images, layers: Sequence[str], pooling: str = "max",
                     execution: Execution | None = None) -> dict:
    """VGG-19 activations of ``images`` at ``layers``.

    Args:
      vgg: the bundle from `load_vgg19`.
      images: float RGB in [0, 1], [N, H, W, 3] (a single [H, W, 3] image is also accepted
        and gets a batch axis of 1).
      layers: names from `LAYERS`, e.g. ``("relu1_1", "relu4_2")``.
      pooling: "max" (as trained) or "avg" (Gatys et al.'s choice for synthesis).
      execution: the convolution algorithm and activation dtype (`Execution`); None: direct
        convolutions in float32 (a forward pass compiled for one use gains nothing from
        Winograd).
    Returns:
      ``{name: [N, h, w, C]}``, where h and w shrink by 2 after each pooling (floor).
    """
    layers = check_layers(layers)
    execution = Execution(conv="direct") if execution is None else execution
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise StylejaxError(f"Images must be [N, H, W, 3] RGB, got shape {images.shape}.")
    need = min_size(layers)
    if min(images.shape[1:3]) < need:
        raise StylejaxError(
            f"The image is {images.shape[2]}x{images.shape[1]} px, too small for layer "
            f"{max(layers, key=LAYERS.index)}: it needs at least {need} px on each side.")
    model = VGG19Features(layers=layers, pooling=pooling, execution=execution)
    return model.apply({"params": vgg.params},
                       preprocess(vgg, images).astype(jnp.dtype(execution.dtype)))

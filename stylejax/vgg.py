"""VGG-19's convolutional part as a Flax (linen) module, and `extract_features`.

Layer names: ``convB_I`` is convolution I of block B before its ReLU, ``reluB_I`` after it,
``poolB`` the block's 2x2 pooling. The network is evaluated only as deep as the deepest
requested layer.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from stylejax.cpu import winograd
from stylejax.errors import StylejaxError
from stylejax.weights import CONV_SPECS, Vgg19


def _layer_names() -> tuple[str, ...]:
    names, block = [], 1
    for conv, _, _ in CONV_SPECS:
        b = int(conv[4])
        if b != block:
            names.append(f"pool{block}")
            block = b
        names += [conv, conv.replace("conv", "relu")]
    names.append(f"pool{block}")
    return tuple(names)


LAYERS: tuple[str, ...] = _layer_names()
"""All 37 layer names in network order: conv1_1, relu1_1, conv1_2, ..., pool5."""

_DN = ("NHWC", "HWIO", "NHWC")
_SPECS = {name: (cin, cout) for name, cin, cout in CONV_SPECS}


def _conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


def flip_kernel(kernel):
    """HWIO [3, 3, Cin, Cout] -> [3, 3, Cout, Cin]: spatially flipped, channels swapped; the
    kernel whose forward convolution is the input gradient of ``kernel``'s."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def conv3x3(x, kernel, flipped=None):
    """3x3 'same' convolution, NHWC x HWIO -> NHWC, no bias.

    Same values and gradients as `lax.conv_general_dilated`; only the input gradient is
    computed differently (see `_conv3x3_bwd`). ``flipped``: ``flip_kernel(kernel)``, made
    here if not given (a strided copy of the kernel: 5-10 ms of each evaluation for a
    512 x 512 kernel on a CPU, so a loop made of many evaluations makes it once ahead).
    """
    return _conv3x3(x, kernel, flip_kernel(kernel) if flipped is None else flipped)


@jax.custom_vjp
def _conv3x3(x, kernel, flipped):
    return _conv(x, kernel)


def _conv3x3_fwd(x, kernel, flipped):
    return _conv(x, kernel), (x, kernel, flipped)


def _conv3x3_bwd(res, g):
    # The input gradient of a stride-1 'same' 3x3 convolution is a forward convolution of g
    # with the spatially flipped kernel whose in/out channels are swapped. Written this way
    # XLA CPU keeps its fast convolution path inside while-loop bodies (a line search, a
    # fori_loop of solver steps); JAX's own transpose rule there ran 3.5-4x slower. The
    # kernel's whole gradient is given directly, so none flows through ``flipped`` (None).
    x, kernel, flipped = res
    dx = _conv(g, flipped)
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k), kernel)
    return dx, kernel_vjp(g)[0], None


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3_relu(x, kernel, bias, flipped=None):
    """``relu(conv3x3(x, kernel) + bias)`` with one saved activation per layer.

    The backward pass reads the ReLU's mask off the output (y > 0 exactly where the
    pre-activation is), so only the output and the input, which is the previous layer's saved
    output, are kept: no separate mask or pre-activation per layer. Same values and
    gradients as the unfused composition. ``flipped`` as in `conv3x3`.
    """
    return _conv3x3_relu(x, kernel, bias, flip_kernel(kernel) if flipped is None else flipped)


@jax.custom_vjp
def _conv3x3_relu(x, kernel, bias, flipped):
    return jax.nn.relu(_conv(x, kernel) + bias)


def _conv3x3_relu_fwd(x, kernel, bias, flipped):
    y = _conv3x3_relu(x, kernel, bias, flipped)
    return y, (x, kernel, flipped, y)


def _conv3x3_relu_bwd(res, g):
    x, kernel, flipped, y = res
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
    dx, dkernel, _ = _conv3x3_bwd((x, kernel, flipped), g)
    return dx, dkernel, g.sum(axis=tuple(range(g.ndim - 1))), None


_conv3x3_relu.defvjp(_conv3x3_relu_fwd, _conv3x3_relu_bwd)

CONVS = ("auto", "direct", "winograd")
"""Convolution algorithms: XLA's direct convolution, Winograd F(4x4, 3x3) (`winograd`), or
"auto": Winograd where JAX's default backend is the CPU, direct elsewhere (GPU and TPU
libraries choose their own fast algorithms for a direct convolution)."""

# Where Winograd pays on a 2-core CPU (measured in the whole value+grad, kernels transformed
# ahead as the solver's epochs have them): at least 64 input and 128 output channels (conv2_1
# on; conv1_2's 64 -> 64 lost: 256 px, 48 -> 68 ms alone) and at least 512 output pixels
# (~23x23). Adding conv2_1: 192 px 206 -> 196 ms, 512 px 1240 -> 1212 ms. Below 512 pixels
# the layers win alone but the whole step loses (192 px: 196 -> 202 ms with them).
WINOGRAD_MIN_IN = 64
WINOGRAD_MIN_OUT = 128
WINOGRAD_MIN_PIXELS = 512


def check_conv(conv: str) -> str:
    """Returns ``conv`` if it is one of `CONVS`, else raises StylejaxError."""
    if conv not in CONVS:
        raise StylejaxError(f"Unknown convolution {conv!r}: use {', '.join(CONVS[:-1])} or "
                            f"{CONVS[-1]}.")
    return conv


def resolve_conv(conv: str, platform: str | None = None) -> str:
    """"direct" or "winograd": ``conv`` with "auto" decided for ``platform`` ("cpu", "gpu",
    "tpu"; default: JAX's default backend)."""
    if check_conv(conv) == "auto":
        return "winograd" if (platform or jax.default_backend()) == "cpu" else "direct"
    return conv


def uses_winograd(conv: str, x_shape, kernel_shape, dtype) -> bool:
    """Whether a layer with input ``x_shape`` [N, H, W, Cin] and kernel ``kernel_shape``
    [3, 3, Cin, Cout] runs as Winograd under the algorithm ``conv`` (float32 only: in
    bfloat16 its transforms lose too much). Only convolutions fused with their ReLU use it:
    one whose pre-activation the loss reads (e.g. ``conv4_2``) stays direct."""
    return (resolve_conv(conv) == "winograd" and jnp.dtype(dtype) == jnp.float32
            and kernel_shape[2] >= WINOGRAD_MIN_IN and kernel_shape[3] >= WINOGRAD_MIN_OUT
            and x_shape[1] * x_shape[2] >= WINOGRAD_MIN_PIXELS)


def runs_winograd(name: str, layers: Sequence[str], conv: str, x_shape, dtype) -> bool:
    """Whether conv layer ``name`` (e.g. "conv3_1"), with input ``x_shape`` [N, H, W, Cin],
    runs as Winograd in a loss reading ``layers``: its pre-activation is not among them (so
    it is fused with its ReLU) and `uses_winograd` says so."""
    cin, cout = _SPECS[name]
    return name not in layers and uses_winograd(conv, x_shape, (3, 3, cin, cout), dtype)


def conv3x3_relu_winograd(x, kernel, bias, u=None):
    """`conv3x3_relu` computed with Winograd F(4x4, 3x3): same values to ~1e-6 relative,
    about 2.5x fewer FLOPs. ``u`` is the kernel's Winograd form [36, Cin, Cout]
    (`winograd.transform_kernel`), made here if not given; the backward pass, the exact
    transpose of the forward algorithm, reuses it."""
    if u is None:
        u = winograd.transform_kernel(kernel)
    return _winograd_relu(x, kernel, bias, u)


@jax.custom_vjp
def _winograd_relu(x, kernel, bias, u):
    return _winograd_fwd(x, kernel, bias, u)[0]


def _winograd_fwd(x, kernel, bias, u):
    y = jax.nn.relu(winograd.conv3x3(x, u) + bias)
    return y, (x, kernel, y, u)


def _winograd_bwd(res, g):
    # The kernel's whole gradient is given directly (by the direct convolution's rule), so
    # none flows back through ``u`` (None: a symbolic zero, no work), whoever made it.
    x, kernel, y, u = res
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k), kernel)  # dropped unless asked for
    return (winograd.conv3x3_input_grad(g, u), kernel_vjp(g)[0],
            g.sum(axis=tuple(range(g.ndim - 1))), None)


_winograd_relu.defvjp(_winograd_fwd, _winograd_bwd)


def prepare_kernels(vgg: Vgg19, layers: Sequence[str], conv: str, dtype=jnp.float32,
                    image_shape=None) -> Vgg19:
    """``vgg`` with each kernel the loss at ``layers`` convolves with also in the form its
    evaluations use, made once: the Winograd form [36, Cin, Cout] of each layer that runs as
    Winograd under ``conv`` (as ``params[name]["winograd"]``), and `flip_kernel`'s
    [3, 3, Cout, Cin] of each that stays direct (``params[name]["flipped"]``, read by the
    input gradient). ``image_shape`` ([N, H, W, 3], [H, W, 3] or (H, W)) of the images the
    loss will see decides which layers are too small for Winograd; without it every layer
    that can be gets the Winograd form (a Winograd form unused in a jitted function is dropped
    by XLA; outside one it takes memory).

    A loop that evaluates the loss many times (an epoch of solver iterations) calls this once
    before it, so that each evaluation does not transform the kernels again: 7-20% of a CPU
    value+grad at 512-192 px. The entries are used instead of the kernels and get a zero
    gradient: make them again after changing the kernels, and don't train a prepared bundle.
    Entries already there are kept (a bundle prepared for a run's size passes through).
    """
    layers = check_layers(layers)
    deepest = max(LAYERS.index(name) for name in layers)
    wino, flip = [], []
    for name, cin, _ in CONV_SPECS:
        if LAYERS.index(name) > deepest:
            break
        fast = runs_winograd(name, layers, conv, _layer_input(name, cin, image_shape), dtype)
        kind, todo = ("winograd", wino) if fast else ("flipped", flip)
        if kind not in vgg.params[name]:
            todo.append(name)
    if not wino and not flip:
        return vgg
    done = _prepare(({name: vgg.params[name]["kernel"] for name in wino},
                     {name: vgg.params[name]["kernel"] for name in flip}))
    made = {name: {"winograd": u} for name, u in done[0].items()}
    made.update({name: {"flipped": k} for name, k in done[1].items()})
    return vgg.replace(params={name: {**p, **made.get(name, {})}
                               for name, p in vgg.params.items()})


with_winograd_kernels = prepare_kernels
"""The earlier name of `prepare_kernels` (which now also prepares the direct layers)."""


def _layer_input(name: str, channels: int, image_shape) -> tuple[int, int, int, int]:
    """The [1, h, w, C] input of conv layer ``name`` for images of ``image_shape`` (big
    enough for any layer when None)."""
    if image_shape is None:
        return (1, 1 << 16, 1 << 16, channels)
    h, w = tuple(image_shape)[-3:-1] if len(image_shape) > 2 else tuple(image_shape)
    for _ in range(int(name[4]) - 1):  # block B follows B - 1 poolings
        h, w = h // 2, w // 2
    return (1, h, w, channels)


# One compiled program: called outside a jit, op by op, the transforms' many intermediates
# left 120-140 MB more heap mapped at a 512 px step's peak.
_prepare = jax.jit(lambda kernels: (jax.tree.map(winograd.transform_kernel, kernels[0]),
                                    jax.tree.map(flip_kernel, kernels[1])))


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
    """A 3x3 'same' convolution with bias; parameters ``kernel`` [3,3,Cin,Cout], ``bias``."""

    features: int
    dtype: jnp.dtype = jnp.float32
    relu: bool = False  # apply the ReLU too, fused (`conv3x3_relu`)
    conv: str = "direct"  # one of `CONVS`; Winograd where `uses_winograd` says it pays

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.he_normal(),
                            (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if self.relu and uses_winograd(self.conv, x.shape, kernel.shape, self.dtype):
            u = (self.get_variable("params", "winograd")
                 if self.has_variable("params", "winograd") else None)
            return conv3x3_relu_winograd(x, kernel, bias, u)
        flipped = (self.get_variable("params", "flipped").astype(self.dtype)
                   if self.has_variable("params", "flipped") else None)
        if self.relu:
            return conv3x3_relu(x, kernel, bias, flipped)
        return conv3x3(x, kernel, flipped) + bias


class VGG19Features(nn.Module):
    """VGG-19 up to the deepest of ``layers``; returns ``{name: [N, h, w, C]}`` for ``layers``.

    Input: preprocessed NHWC images (see `preprocess`). ``dtype`` is the activation dtype
    (float32, or bfloat16 on GPU/TPU); parameters stay float32. ``conv``: one of `CONVS`.
    """

    layers: tuple[str, ...]
    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32
    conv: str = "direct"

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
                x = Conv3x3(cout, self.dtype, relu=fused, conv=self.conv, name=name)(x)
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


def min_size(layers: Iterable[str]) -> int:
    """Smallest height/width (px) for which every layer in ``layers`` is at least 1x1."""
    pools = max(int(name[4]) if name.startswith("pool") else int(name[4]) - 1
                for name in layers)
    return 2 ** pools


def check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """Returns ``layers`` as a tuple, raising StylejaxError on an unknown name."""
    layers = tuple(layers)
    unknown = [name for name in layers if name not in LAYERS]
    if unknown or not layers:
        raise StylejaxError(
            f"Unknown VGG-19 layer name(s) {', '.join(unknown) or '(none given)'}: valid names "
            f"are convB_I / reluB_I (B=1..5; I=1..2 for blocks 1-2, 1..4 for 3-5) and pool1..pool5.")
    return layers


def extract_features(vgg: Vgg19, images, layers: Sequence[str], pooling: str = "max",
                     dtype=jnp.float32, conv: str = "direct") -> dict:
    """VGG-19 activations of ``images`` at ``layers``.

    Args:
      vgg: the bundle from `load_vgg19`.
      images: float RGB in [0, 1], [N, H, W, 3] (a single [H, W, 3] image is also accepted
        and gets a batch axis of 1).
      layers: names from `LAYERS`, e.g. ``("relu1_1", "relu4_2")``.
      pooling: "max" (as trained) or "avg" (Gatys et al.'s choice for synthesis).
      dtype: activation dtype; float32 by default, bfloat16 for speed on GPU/TPU.
      conv: "direct" (XLA's convolution; the default here, as a forward pass compiled for
        one use gains nothing from Winograd), "winograd" (fewer FLOPs, faster on CPU; see
        `stylejax.cpu.winograd`) or "auto" (Winograd on CPU, direct on GPU/TPU; the loss's
        default, `LossConfig.conv`).
    Returns:
      ``{name: [N, h, w, C]}``, where h and w shrink by 2 after each pooling (floor).
    """
    layers = check_layers(layers)
    check_conv(conv)
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
    model = VGG19Features(layers=layers, pooling=pooling, dtype=dtype, conv=conv)
    return model.apply({"params": vgg.params}, preprocess(vgg, images).astype(dtype))

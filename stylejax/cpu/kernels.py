"""The convolution layers' CPU forms, and their kernels prepared once per run.

`stylejax.vgg` calls `layer` for every 3x3 convolution when it runs on the CPU (or when
Winograd is asked for); on GPU/TPU it runs plain `lax.conv_general_dilated` under `jax.jit`
and never reaches this module. The forms here have the same values and gradients as the plain
composition (to float32 rounding; tested against float64 references); they change how XLA
CPU computes them:

- The input gradient of a direct convolution is written as a forward convolution with the
  spatially flipped, channel-swapped kernel (`flip_kernel`): inside while-loop bodies (a line
  search, a loop of solver steps) XLA CPU's own transpose rule ran 3.5-4x slower.
- A convolution fused with its ReLU keeps only its output (the ReLU's mask is read off it).
- Winograd F(4x4, 3x3) (`stylejax.cpu.winograd`) on the layers where it pays.
- `prepare_kernels` makes the flipped and Winograd kernels once before a loop of evaluations
  (7-20% of a CPU value+grad at 512-192 px).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

import stylejax.cpu.winograd as winograd
from stylejax.execution import Execution, as_execution, on_cpu
from stylejax.layers import CHANNELS, LAYERS, check_layers, layer_input
from stylejax.weights import CONV_SPECS, Vgg19

_DN = ("NHWC", "HWIO", "NHWC")

# Where Winograd pays on a 2-core CPU (measured in the whole value+grad, kernels transformed
# ahead as the solver's epochs have them): at least 64 input and 128 output channels (conv2_1
# on; conv1_2's 64 -> 64 lost: 256 px, 48 -> 68 ms alone) and at least 512 output pixels
# (~23x23). Adding conv2_1: 192 px 206 -> 196 ms, 512 px 1240 -> 1212 ms. Below 512 pixels
# the layers win alone but the whole step loses (192 px: 196 -> 202 ms with them).
WINOGRAD_MIN_IN = 64
WINOGRAD_MIN_OUT = 128
WINOGRAD_MIN_PIXELS = 512


def _conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


def flip_kernel(kernel):
    """HWIO [3, 3, Cin, Cout] -> [3, 3, Cout, Cin]: spatially flipped, channels swapped; the
    kernel whose forward convolution is the input gradient of ``kernel``'s."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def uses_winograd(conv: str, x_shape, kernel_shape, dtype) -> bool:
    """Whether a layer with input ``x_shape`` [N, H, W, Cin] and kernel ``kernel_shape``
    [3, 3, Cin, Cout] runs as Winograd under the resolved algorithm ``conv`` ("direct" or
    "winograd"; float32 only: in bfloat16 its transforms lose too much)."""
    return (conv == "winograd" and jnp.dtype(dtype) == jnp.float32
            and kernel_shape[2] >= WINOGRAD_MIN_IN and kernel_shape[3] >= WINOGRAD_MIN_OUT
            and x_shape[1] * x_shape[2] >= WINOGRAD_MIN_PIXELS)


def runs_winograd(name: str, layers: Sequence[str], execution: Execution, x_shape) -> bool:
    """Whether conv layer ``name`` (e.g. "conv3_1"), with input ``x_shape`` [N, H, W, Cin],
    runs as Winograd in a loss reading ``layers``: its pre-activation is not among them (so
    it is fused with its ReLU) and `uses_winograd` says so."""
    cin, cout = CHANNELS[name]
    return name not in layers and uses_winograd(execution.resolved_conv(), x_shape,
                                                (3, 3, cin, cout), execution.dtype)


def layer(x, kernel, bias, *, relu: bool, fast: bool, prepared: dict):
    """One 3x3 'same' convolution layer (NHWC x HWIO, plus ``bias``; then ReLU if ``relu``)
    in its CPU form: Winograd if ``fast`` (only with ``relu``), else direct. ``prepared``:
    the layer's entries from `prepare_kernels` ("winograd" [36, Cin, Cout], "flipped"
    [3, 3, Cout, Cin]), made here when absent."""
    if relu and fast:
        u = prepared.get("winograd")
        return _winograd_relu(x, kernel, bias, winograd.transform_kernel(kernel)
                              if u is None else u)
    flipped = prepared.get("flipped")
    flipped = flip_kernel(kernel) if flipped is None else flipped.astype(x.dtype)
    if relu:
        return _conv3x3_relu(x, kernel, bias, flipped)
    return _conv3x3(x, kernel, flipped) + bias


@jax.custom_vjp
def _conv3x3(x, kernel, flipped):
    return _conv(x, kernel)


def _conv3x3_fwd(x, kernel, flipped):
    return _conv(x, kernel), (x, kernel, flipped)


def _conv3x3_bwd(res, g):
    # The input gradient of a stride-1 'same' 3x3 convolution is a forward convolution of g
    # with the flipped kernel. The kernel's whole gradient is given directly, so none flows
    # through ``flipped`` (None).
    x, kernel, flipped = res
    dx = _conv(g, flipped)
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k), kernel)
    return dx, kernel_vjp(g)[0], None


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def _conv3x3_relu(x, kernel, bias, flipped):
    return jax.nn.relu(_conv(x, kernel) + bias)


def _conv3x3_relu_fwd(x, kernel, bias, flipped):
    y = _conv3x3_relu(x, kernel, bias, flipped)
    return y, (x, kernel, flipped, y)


def _conv3x3_relu_bwd(res, g):
    # The ReLU's mask read off the output (y > 0 exactly where the pre-activation is): only
    # the output and the input (the previous layer's saved output) are kept.
    x, kernel, flipped, y = res
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
    dx, dkernel, _ = _conv3x3_bwd((x, kernel, flipped), g)
    return dx, dkernel, g.sum(axis=tuple(range(g.ndim - 1))), None


_conv3x3_relu.defvjp(_conv3x3_relu_fwd, _conv3x3_relu_bwd)


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


def uses_cpu_forms(execution: Execution) -> bool:
    """Whether `stylejax.vgg` evaluates through `layer` under ``execution``: on the CPU, or
    wherever Winograd is asked for."""
    return on_cpu() or execution.resolved_conv() == "winograd"


def prepare_kernels(vgg: Vgg19, layers: Sequence[str], execution: Execution | None = None,
                    image_shape=None) -> Vgg19:
    """``vgg`` with each kernel the loss at ``layers`` convolves with also in the form its CPU
    evaluations use, made once: the Winograd form [36, Cin, Cout] of each layer that runs as
    Winograd (``params[name]["winograd"]``) and `flip_kernel`'s [3, 3, Cout, Cin] of each
    that stays direct (``params[name]["flipped"]``). ``image_shape`` ([N, H, W, 3], [H, W, 3]
    or (H, W)) of the images the loss will see decides which layers are too small for
    Winograd; without it every layer that can be gets the Winograd form. Unchanged where
    the plain path runs (GPU/TPU, no Winograd).

    The entries are used instead of the kernels and get a zero gradient: make them again
    after changing the kernels, and don't train a prepared bundle. Entries already there are
    kept (a bundle prepared for a run's size passes through).
    """
    execution = as_execution(execution)
    if not uses_cpu_forms(execution):
        return vgg
    layers = check_layers(layers)
    deepest = max(LAYERS.index(name) for name in layers)
    wino, flip = [], []
    for name, _, _ in CONV_SPECS:
        if LAYERS.index(name) > deepest:
            break
        fast = runs_winograd(name, layers, execution, layer_input(name, image_shape))
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


# One compiled program: called outside a jit, op by op, the transforms' many intermediates
# left 120-140 MB more heap mapped at a 512 px step's peak.
_prepare = jax.jit(lambda kernels: (jax.tree.map(winograd.transform_kernel, kernels[0]),
                                    jax.tree.map(flip_kernel, kernels[1])))

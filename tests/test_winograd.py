"""Winograd F(4x4, 3x3) convolutions against XLA's direct convolution and float64, and the loss
computed with them against the float64 PyTorch reference.

How accurate is "right"? A single Winograd layer is 2-5e-6 off float64 (relative L2; XLA's
direct convolution 3e-7), and a whole-network gradient, given the same ReLU masks and max-pool
choices as float64's, 1-4e-6 (direct: 2-9e-7). Without that proviso no float32 network gets
near those figures every time: a ReLU whose pre-activation lies within rounding of zero, or a
2x2 max-pool window whose two largest values lie within rounding of each other, may go the
other way in float32, and the gradient, piecewise constant in those choices, then moves by
one unit's share (1e-4 to 1e-2 of its norm at 64-256 px). That happens for every convolution
(measured over random images: at 64 px direct 5/40, Winograd 11/40 and PyTorch float32 3/40
gradients more than 1e-4 off float64; at 256 px direct 4 of 5), and for Winograd, rounding
5-10x coarser, a few times as often. So the whole-loss tests below compare against float64
*given the float32 program's own masks and max-pool choices* (read off the same compiled
program) at 1e-5, and separately check that every choice that differs from float64's was
within rounding of the other side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stylejax
from stylejax import losses
from stylejax.cpu import kernels as cpu_kernels
from stylejax.cpu import winograd
from stylejax.execution import Execution, resolve_conv
from stylejax.vgg import LAYERS
from conftest import smooth_image
from torch_reference import TorchLoss, nhwc_to_torch, torch_layers

DN = ("NHWC", "HWIO", "NHWC")


def _direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("shape", [(2, 13, 10, 8), (1, 7, 9, 4), (1, 16, 16, 8), (1, 1, 5, 3),
                                   (1, 38, 33, 4)])
def test_convolution_and_input_gradient_equal_xla_direct(shape):
    """Odd sizes (not whole tiles), batches, a single row: values and input gradients; the
    input gradient both with few tiles and with more than `winograd.FEW_TILES` (the last)."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (3, 3, shape[-1], 6)) / np.sqrt(9 * shape[-1])
    g = jax.random.normal(keys[2], shape[:-1] + (6,))
    u = jax.jit(winograd.transform_kernel)(kernel)  # jitted: eagerly, each of the many
    y, vjp = jax.vjp(lambda x: _direct(x, kernel), x)  # small ops would compile on its own
    assert _rel(jax.jit(winograd.conv3x3)(x, u), y) < 1e-5
    assert _rel(jax.jit(winograd.conv3x3_input_grad)(g, u), vjp(g)[0]) < 1e-5


# VGG-19's own shapes, both forms of the input gradient's product: conv2_1 at 64 px (32x32
# maps: 64 tiles, the most the few-tile form takes), conv4_x at 192 px (24x24: 36 tiles, 512
# channels), conv3_x at 192 px (48x48: 144 tiles) and conv2_2 for a batch of two at 64 px.
VGG_SHAPES = {"few": [(1, 32, 32, 64, 128), (1, 24, 24, 512, 512)],
              "many": [(1, 48, 48, 256, 256), (2, 32, 32, 128, 128)]}


@pytest.mark.parametrize("form,shape", [(f, s) for f, shapes in VGG_SHAPES.items()
                                        for s in shapes])
def test_layers_at_vgg_shapes_match_float64(form, shape):
    """Forward and input gradient against float64 at the real layer shapes, alone and as the
    body of a fori_loop (the solver's epoch: XLA compiles loop bodies its own way).

    Tolerance 1e-5 (relative L2): measured 1.8-4.6e-6 for these shapes (the error grows with
    the input channels, ~sqrt(Cin): the Winograd-domain products' float32 sums, whose terms
    are ~10x the output, since the output transform cancels), XLA's direct convolution
    3-4e-7. A wrong coefficient, tile edge or form is off by 1e-3 or more."""
    n, h, w, cin, cout = shape
    tiles = n * -(-h // winograd.TILE) * -(-w // winograd.TILE)
    assert (tiles <= winograd.FEW_TILES) == (form == "few")
    rng = np.random.default_rng(cin + cout + n)
    x = np.maximum(rng.standard_normal((n, h, w, cin)), 0).astype(np.float32)  # post-ReLU
    kernel = (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
    g = rng.standard_normal((n, h, w, cout)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).double().requires_grad_(True)
    yt = F.conv2d(xt, torch.from_numpy(kernel.transpose(3, 2, 0, 1)).double(), padding=1)
    yt.backward(torch.from_numpy(g.transpose(0, 3, 1, 2)).double())
    y64, dx64 = (a.detach().numpy().transpose(0, 2, 3, 1) for a in (yt, xt.grad))
    u = jax.jit(winograd.transform_kernel)(kernel)

    def looped(x, g, u):  # two passes, so the loop is not unrolled away
        def body(i, acc):
            return (acc[0] + winograd.conv3x3(x, u) / 2,
                    acc[1] + winograd.conv3x3_input_grad(g, u) / 2)
        return jax.lax.fori_loop(0, 2, body, (jnp.zeros(y64.shape), jnp.zeros(dx64.shape)))

    alone = (jax.jit(winograd.conv3x3)(x, u), jax.jit(winograd.conv3x3_input_grad)(g, u))
    for y, dx in (alone, jax.jit(looped)(x, g, u)):
        assert _rel_l2(y, y64) < 1e-5
        assert _rel_l2(dx, dx64) < 1e-5


def test_fused_winograd_layer_equals_autodiff_of_the_plain_composition():
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(keys[0], (2, 11, 9, 5))
    kernel = jax.random.normal(keys[1], (3, 3, 5, 6)) * 0.3
    bias = jax.random.normal(keys[2], (6,)) * 0.3
    probe = jax.random.normal(keys[3], (2, 11, 9, 6))
    plain = lambda x, k, b: jnp.sum(jax.nn.relu(_direct(x, k) + b) * probe)  # noqa: E731

    def layer(fast, **prepared):
        return lambda x, k, b: jnp.sum(cpu_kernels.layer(x, k, b, relu=True, fast=fast,
                                                         prepared=prepared) * probe)

    # The kernel transformed once, outside (as `prepare_kernels` does): the kernel's
    # gradient must still be whole, though none flows back through the transform. The
    # direct layers' flipped kernel given (as `prepare_kernels` does): the same.
    for f in (layer(True), layer(True, winograd=winograd.transform_kernel(kernel)),
              layer(False, flipped=cpu_kernels.flip_kernel(kernel))):
        np.testing.assert_allclose(jax.jit(f)(x, kernel, bias), plain(x, kernel, bias),
                                   atol=1e-4)
        for a, b in zip(jax.jit(jax.grad(f, (0, 1, 2)))(x, kernel, bias),
                        jax.grad(plain, (0, 1, 2))(x, kernel, bias)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_which_layers_use_winograd():
    x, k = (1, 32, 32, 128), (3, 3, 128, 256)
    uses = cpu_kernels.uses_winograd
    assert uses("winograd", x, k, jnp.float32)
    assert not uses("direct", x, k, jnp.float32)
    assert not uses("winograd", x, k, jnp.bfloat16)
    assert uses("winograd", x, (3, 3, 64, 128), jnp.float32)  # conv2_1
    assert not uses("winograd", x, (3, 3, 64, 64), jnp.float32)  # conv1_2
    assert not uses("winograd", x, (3, 3, 3, 64), jnp.float32)
    assert not uses("winograd", (1, 16, 16, 128), k, jnp.float32)
    assert uses("winograd", (1, 24, 24, 128), k, jnp.float32)  # >= 512 px
    assert not uses("winograd", (1, 22, 22, 128), k, jnp.float32)
    with pytest.raises(stylejax.StylejaxError, match="auto, direct or winograd"):
        Execution(conv="fft")
    with pytest.raises(stylejax.StylejaxError, match="auto, direct or winograd"):
        resolve_conv("winogard")
    with pytest.raises(stylejax.StylejaxError, match="float32 only"):
        Execution(conv="winograd", dtype="bfloat16")


def test_auto_is_winograd_on_cpu_only():
    assert resolve_conv("auto", "cpu") == "winograd"
    assert resolve_conv("auto", "gpu") == resolve_conv("auto", "tpu") == "direct"
    assert resolve_conv("auto", "cpu", "bfloat16") == "direct"
    assert resolve_conv("direct", "cpu") == "direct"
    assert resolve_conv("winograd", "gpu") == "winograd"
    assert Execution().conv == "auto"
    assert (Execution().resolved_conv() == "winograd") == (jax.default_backend() == "cpu")


# ---------------------------------------------------------------------------------------
# The whole loss's gradient against float64, given the float32 program's ReLU masks and
# max-pool choices.

_UP_TO_RELU5_1 = tuple(n for n in LAYERS[:LAYERS.index("relu5_1") + 1]
                       if not n.startswith("conv"))  # every ReLU and pooling output


def _windows(x):
    """NCHW -> [N, C, H/2, W/2, 4]: each 2x2 window's values in row-major order."""
    n, c, h, w = x.shape
    x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)


def _first_max(x):
    """Index 0..3 of the first maximum of each 2x2 window (the rule of vgg.max_pool2x2's
    gradient, and of PyTorch's)."""
    b = _windows(x)
    return (b == b.max(-1, keepdim=True).values).to(torch.int8).argmax(-1)


def _features_given(masks, picks):
    """A stand-in for `torch_reference.features` (same arguments and preprocessing) in which
    each ReLU multiplies by ``masks[reluB_I]`` and each max pooling takes the window entry
    ``picks[poolB]``: the float64 network with float32's choices."""
    def features(layers, x, wanted, pooling="max", scale=255.0, bgr=True,
                 mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)):
        x = x * scale
        x = x.flip(1) if bgr else x
        x = (x - torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)) / \
            torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
        out, block = {}, 1
        for name, w, b in layers:
            if int(name[4]) != block:
                pool = f"pool{block}"
                x = (F.avg_pool2d(x, 2) if pooling == "avg" else
                     torch.gather(_windows(x), -1, picks[pool].long()[..., None])[..., 0])
                out[pool], block = x, int(name[4])
            if set(wanted) <= set(out):
                break
            relu = name.replace("conv", "relu")
            x = out[relu] = F.conv2d(x, w, b, padding=1) * masks[relu]
        return {k: out[k] for k in wanted}
    return features


def _choices_flipped(f32, f64, pooling):
    """For each ReLU and max pooling: the choices of the float32 outputs ``f32`` that differ
    from float64's (``f64``: pre-activations ``convB_I`` and outputs), as the largest margin
    by which float64 disagrees, relative to the layer's largest value (0: none differ)."""
    margins = {}
    for name in f32:
        if name.startswith("relu"):
            pre = f64[name.replace("relu", "conv")]
            wrong = (f32[name] > 0) != (pre > 0)
            margins[name] = float(pre[wrong].abs().max() / pre.abs().max()) if wrong.any() else 0.0
        elif pooling == "max":
            relu = [r for r in f32 if r.startswith("relu") and r[4] == name[4]][-1]
            b = _windows(f64[relu])
            taken = torch.gather(b, -1, _first_max(f32[relu]).long()[..., None])[..., 0]
            margins[name] = float((b.max(-1).values - taken).max() / b.max())
    return margins


@pytest.mark.parametrize("conv", ["winograd", "direct"])
def test_loss_gradient_matches_float64_given_its_relu_masks_and_pool_choices(
        vgg, vgg_params, monkeypatch, conv):
    """The johnson preset (max pooling, TV) at 64 px, where an outside check first found the
    Winograd gradient 7.8e-3 off float64: conv2_1 and conv2_2 (32x32 maps, the few-tile form)
    run as Winograd. The gradient comes from one compiled program that also returns every
    ReLU and pooling output, so the masks and max-pool choices its backward pass used are
    known exactly (another program, `loss_fn` included, may round differently and flip other
    units). This image flips a relu3_x max-pool choice in the Winograd program on the machine
    it was written on (1.7e-3 off plain float64), none in the direct one.

    Tolerance 1e-5: measured 0.8-4e-6 for Winograd, 2-9e-7 direct, over 40 images at 64-256
    px, all presets and poolings, plain or inside a fori_loop with prepared kernels; a wrong
    transform or a wrong form of the product shows at 1e-3 or more. Choices that differ
    from float64's must be within 1e-4 of the layer's largest value (measured up to 2e-6):
    a wrong forward pass flips units far from zero."""
    cfg = stylejax.preset_config("johnson")
    ex = Execution(conv=conv)
    content, style = smooth_image(64, 64, seed=10), smooth_image(64, 64, seed=11)
    image = np.clip(content + np.random.default_rng(12).normal(0, 0.1, content.shape), 0, 1)
    image = image.astype(np.float32)
    targets = stylejax.make_targets(vgg, content, style, cfg)

    def loss_and_outputs(image):
        feats = stylejax.extract_features(vgg, image, _UP_TO_RELU5_1, cfg.pooling, ex)
        content_loss = sum(w * losses.content_term(feats[n], targets["content"][n],
                                                   cfg.normalization)
                           for n, w in zip(cfg.content_layers, cfg.content_weights))
        style_loss = sum(w * losses.style_term(
            losses.gram(feats[n], cfg.normalization), targets["style"][n],
            feats[n].shape[1] * feats[n].shape[2], cfg.normalization)
            for n, w in zip(cfg.style_layers, cfg.style_weights))
        total = (cfg.content_weight * content_loss + cfg.style_weight * style_loss
                 + cfg.tv_weight * losses.tv_term(image))
        return total, feats

    (value, outputs), grad = jax.jit(jax.value_and_grad(loss_and_outputs, has_aux=True))(
        jnp.asarray(image[None]))
    f32 = {name: nhwc_to_torch(a, torch.float64) for name, a in outputs.items()}

    layers = torch_layers(vgg_params, torch.float64)
    ref_loss = TorchLoss(layers, nhwc_to_torch(content[None], torch.float64),
                         nhwc_to_torch(style[None], torch.float64), cfg)
    x = nhwc_to_torch(image[None], torch.float64)
    import torch_reference
    with torch.no_grad():
        f64 = torch_reference.features(
            layers, x, [n.replace("relu", "conv") for n in f32 if n.startswith("relu")]
            + list(f32), cfg.pooling)
    margins = _choices_flipped(f32, f64, cfg.pooling)
    assert max(margins.values()) < 1e-4, margins

    masks = {n: (a > 0).double() for n, a in f32.items() if n.startswith("relu")}
    picks = {n: _first_max(f32[[r for r in f32 if r.startswith("relu") and r[4] == n[4]][-1]])
             for n in f32 if n.startswith("pool")}
    monkeypatch.setattr(torch_reference, "features", _features_given(masks, picks))
    x.requires_grad_(True)
    ref = ref_loss(x)
    ref.backward()
    ref_grad = x.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5)
    assert _rel_l2(grad, ref_grad) < 1e-5


def test_loss_with_winograd_matches_torch_float64(vgg, vgg_params):
    """At 128 px conv2_1..conv3_4 (>= 512 output pixels, 64+ -> 128+ channels) run as
    Winograd, with the kernels transformed in the loss or ahead (`prepare_kernels`)."""
    assert cpu_kernels.uses_winograd("winograd", (1, 64, 64, 64), (3, 3, 64, 128), jnp.float32)
    content, style = smooth_image(128, 128, seed=4), smooth_image(128, 128, seed=5)
    image = np.clip(content + np.random.default_rng(6).normal(0, 0.1, content.shape), 0, 1)
    image = image.astype(np.float32)
    cfg = stylejax.preset_config("johnson")
    ex = Execution(conv="winograd")
    targets = stylejax.make_targets(vgg, content, style, cfg)
    # The Winograd domain's [36, tiles, channels] arrays are there, and only with it.
    jaxpr = lambda v, e: str(jax.make_jaxpr(stylejax.loss_fn, static_argnums=(3, 4))(  # noqa
        v, image[None], targets, cfg, e))
    assert "f32[36," in jaxpr(vgg, ex)
    assert "f32[36," not in jaxpr(vgg, Execution(conv="direct"))
    on_cpu = jax.default_backend() == "cpu"
    assert ("f32[36," in jaxpr(vgg, Execution(conv="auto"))) == on_cpu
    # The targets, computed once, always take the exact direct convolution.
    assert "f32[36," not in str(jax.make_jaxpr(
        lambda c, s: stylejax.make_targets(vgg, c, s, cfg, execution=ex))(content, style))
    # Kernels transformed ahead: the loss then has no kernel transform left in it (a matmul
    # by the [36, 9] matrix G (x) G), only for the layers that run as Winograd.
    ready = stylejax.prepare_kernels(vgg, cfg.layers, ex, image_shape=image.shape)
    assert "f32[36,9]" in jaxpr(vgg, ex)
    ready_jaxpr = jaxpr(ready, ex)
    assert "f32[36,9]" not in ready_jaxpr and "f32[36," in ready_jaxpr
    # Preparing a prepared bundle again keeps its entries (the same arrays, no new work).
    assert stylejax.prepare_kernels(ready, cfg.layers, ex, image_shape=image.shape) is ready
    prepared = lambda v, kind="winograd": {name for name, p in v.params.items()  # noqa: E731
                                           if kind in p}
    blocks_2_3 = {"conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4"}
    block_4_5 = {"conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1"}
    assert prepared(ready) == blocks_2_3  # at 128 px block 4 has 16x16 = 256 < 512 pixels
    # The layers that stay direct get their flipped kernel instead, and only those.
    assert prepared(ready, "flipped") == {"conv1_1", "conv1_2"} | block_4_5
    assert prepared(stylejax.prepare_kernels(vgg, cfg.layers, ex)) == blocks_2_3 | block_4_5
    # A pre-activation the loss reads is not fused with its ReLU, so it stays direct.
    assert "conv3_2" not in prepared(stylejax.prepare_kernels(
        vgg, ("conv3_2", "relu3_3"), ex, image_shape=(128, 128)))
    if on_cpu:
        direct = stylejax.prepare_kernels(vgg, cfg.layers, Execution(conv="direct"))
        assert prepared(direct) == set()
        assert prepared(direct, "flipped") == {"conv1_1", "conv1_2"} | blocks_2_3 | block_4_5
    shallow = stylejax.prepare_kernels(vgg, ("relu1_2",), ex)
    assert prepared(shallow) == set() and prepared(shallow, "flipped") == {"conv1_1", "conv1_2"}
    np.testing.assert_array_equal(shallow.params["conv1_2"]["flipped"],
                                  np.flip(vgg.params["conv1_2"]["kernel"], (0, 1)).swapaxes(2, 3))
    vg = jax.jit(jax.value_and_grad(stylejax.loss_fn, argnums=1), static_argnums=(3, 4))
    layers = torch_layers(vgg_params, torch.float64)
    loss = TorchLoss(layers, nhwc_to_torch(content[None], torch.float64),
                     nhwc_to_torch(style[None], torch.float64), cfg)
    x = nhwc_to_torch(image[None], torch.float64).requires_grad_(True)
    ref = loss(x)
    ref.backward()
    ref_grad = x.grad.numpy().transpose(0, 2, 3, 1)
    for bundle in (vgg, ready):
        value, grad = vg(bundle, jnp.asarray(image[None]), targets, cfg, ex)
        np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5)
        # `loss_fn`'s own program does not show its masks, so its gradient is held only to
        # what flipped ReLU / max-pool choices can do (see the module docstring; measured
        # here 7e-4 with one flip, 2e-6 without); the test above holds the same
        # convolutions to 1e-5 given the masks.
        assert _rel_l2(grad, ref_grad) < 5e-3


def test_cli_flag_reaches_the_execution():
    from stylejax.cli import options

    args = options.build_parser().parse_args(["c.png", "s.png", "--conv", "winograd"])
    assert options.run_config(args).execution.conv == "winograd"
    args = options.build_parser().parse_args(["c.png", "s.png"])
    assert options.run_config(args).execution.conv == "auto"

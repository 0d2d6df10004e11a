"""The loss against an independent float64 PyTorch implementation of DESIGN.md's formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import stylejax
from stylejax.losses import LossConfig, gram
from stylejax.presets import preset_config
from torch_reference import TorchLoss, nhwc_to_torch, torch_layers

STYLE5 = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

# Each case covers several axes at once to keep the number of XLA compilations small:
# every normalization, both poolings, pre- and post-ReLU layers, TV on and off, and a style
# image of a different size than the content (the fixture's style is 48x36, content 32x40).
CASES = {
    "johnson-max-relu-tv": LossConfig(normalization="johnson", pooling="max"),
    "gatys-avg-conv-notv": LossConfig(
        content_layers=("conv4_2",), style_layers=("conv1_1", "conv2_1", "conv3_1", "conv5_1"),
        normalization="gatys", pooling="avg", content_weight=1.0, style_weight=1e3,
        tv_weight=0.0),
    "seed-max-mixed-tv": LossConfig(
        content_layers=("relu4_2", "conv3_2"), content_layer_weights=(1.0, 0.5),
        style_layers=STYLE5, style_layer_weights=(1, 0.75, 0.2, 0.2, 0.2),
        normalization="seed", pooling="max", content_weight=5.0, style_weight=1e4,
        tv_weight=10.0),
    "johnson-avg-pool-notv": LossConfig(
        content_layers=("relu4_2",), style_layers=("pool1", "relu3_1", "pool4"),
        normalization="johnson", pooling="avg", tv_weight=0.0),
    "gatys-max-tv": LossConfig(normalization="gatys", pooling="max", content_weight=1.0,
                               style_weight=1e3, tv_weight=5.0),
}


@pytest.fixture(scope="module")
def torch_layers64(vgg_params):
    return torch_layers(vgg_params, torch.float64)


def _torch_value_and_grad(layers, content, style, image, cfg):
    loss = TorchLoss(layers, nhwc_to_torch(content[None], torch.float64),
                     nhwc_to_torch(style[None], torch.float64), cfg)
    x = nhwc_to_torch(image[None], torch.float64).requires_grad_(True)
    value = loss(x)
    value.backward()
    return value.item(), x.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_value_and_grad_match_torch_float64(name, vgg, torch_layers64, content_image,
                                            style_image):
    cfg = CASES[name]
    image = np.clip(content_image + np.random.default_rng(3).normal(0, 0.1, content_image.shape),
                    0, 1).astype(np.float32)
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)
    value, grad = jax.value_and_grad(stylejax.loss_fn, argnums=1)(
        vgg, jnp.asarray(image[None]), targets, cfg)
    ref_value, ref_grad = _torch_value_and_grad(torch_layers64, content_image, style_image,
                                                image, cfg)
    # float32 against float64 through 16 convolutions: 1e-4 relative on the value, 1e-3
    # relative L2 on the gradient (the tolerances).
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-4)
    rel = np.linalg.norm(np.asarray(grad) - ref_grad) / np.linalg.norm(ref_grad)
    assert rel < 1e-3, rel
    terms = stylejax.loss_terms(vgg, image[None], targets, cfg)
    np.testing.assert_allclose(sum(float(v) for v in terms.values()), float(value), rtol=1e-5)
    assert (float(terms["tv"]) == 0.0) == (cfg.tv_weight == 0.0)


def test_gram_normalizations_by_hand():
    f = np.random.default_rng(0).normal(size=(1, 3, 5, 4)).astype(np.float32)
    m = f.reshape(15, 4)
    raw = m.T @ m
    np.testing.assert_allclose(gram(f, "seed")[0], raw, rtol=1e-5)
    np.testing.assert_allclose(gram(f, "gatys")[0], raw / 15, rtol=1e-5)
    np.testing.assert_allclose(gram(f, "johnson")[0], raw / 60, rtol=1e-5)


def test_vmap_equals_single_calls(vgg, content_image, style_image):
    cfg = CASES["johnson-max-relu-tv"]
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)
    batch = jnp.stack([jnp.asarray(content_image), jnp.asarray(content_image[::-1])])
    batched = jax.vmap(stylejax.loss_fn, in_axes=(None, 0, None, None))(vgg, batch, targets, cfg)
    singles = [stylejax.loss_fn(vgg, batch[i], targets, cfg) for i in range(2)]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(singles), rtol=1e-5)
    assert abs(float(singles[0]) - float(singles[1])) > 1e-3 * abs(float(singles[0]))


def test_works_inside_outer_jit_grad(vgg, content_image, style_image):
    cfg = CASES["johnson-max-relu-tv"]
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)

    @jax.jit
    def step(vgg, x, targets):
        return x - 1e-4 * jax.grad(stylejax.loss_fn, argnums=1)(vgg, x, targets, cfg)

    x0 = jnp.asarray(content_image[None])
    x1 = step(vgg, x0, targets)
    assert x1.shape == x0.shape and bool(jnp.all(jnp.isfinite(x1)))
    assert float(stylejax.loss_fn(vgg, x1, targets, cfg)) < \
        float(stylejax.loss_fn(vgg, x0, targets, cfg))


def test_blend_weights(vgg, content_image, style_image):
    cfg = CASES["johnson-max-relu-tv"]
    one = stylejax.make_targets(vgg, content_image, style_image, cfg)
    same = stylejax.make_targets(vgg, content_image, [style_image, style_image], cfg, [3, 7])
    first = stylejax.make_targets(vgg, content_image, [style_image, content_image], cfg, [1, 0])
    for t in (same, first):
        for k in one["style"]:
            np.testing.assert_allclose(t["style"][k], one["style"][k], rtol=1e-5, atol=1e-6)
    for bad in ([1, float("nan")], [float("inf")], [0, 0], [-1, 2]):
        with pytest.raises(stylejax.StylejaxError, match="blend weight"):
            stylejax.make_targets(vgg, content_image, [style_image] * len(bad), cfg, bad)


def test_presets_and_validation():
    assert preset_config("gatys").pooling == "avg"
    assert preset_config("seed").style_layer_weights == (1.0, 0.75, 0.2, 0.2, 0.2)
    assert hash(preset_config("johnson")) == hash(preset_config("johnson"))
    for bad in (dict(normalization="x"), dict(style_layers=("relu9_1",)), dict(pooling="min"),
                dict(style_layer_weights=(1.0,)), dict(tv_weight=-1.0)):
        with pytest.raises(stylejax.StylejaxError):
            LossConfig(**bad)
    with pytest.raises(stylejax.StylejaxError, match="gatys, johnson, seed"):
        preset_config("picasso")


def test_bfloat16_activations_stay_within_one_percent(vgg, content_image, style_image):
    """--precision bf16 (for GPU/TPU): bf16 convolutions, f32 Grams and loss."""
    image = jnp.asarray(content_image[None] * 0.8 + 0.1)
    values = {}
    cfg = LossConfig()
    for dtype in ("float32", "bfloat16"):
        ex = stylejax.Execution(dtype=dtype)
        targets = stylejax.make_targets(vgg, content_image, style_image, cfg, execution=ex)
        values[dtype] = float(stylejax.loss_fn(vgg, image, targets, cfg, ex))
    assert values["bfloat16"] != values["float32"]  # it really ran in another precision
    np.testing.assert_allclose(values["bfloat16"], values["float32"], rtol=1e-2)


def test_hand_written_vjps_equal_autodiff_of_the_plain_compositions():
    """conv3x3_relu and the Gram's VJP against JAX's own differentiation of the unfused ops,
    for every argument (the kernel and bias gradients too, for code that trains the net)."""
    from stylejax import losses
    from stylejax.cpu import kernels

    keys = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(keys[0], (2, 9, 7, 5))
    kernel = jax.random.normal(keys[1], (3, 3, 5, 6)) * 0.3
    bias = jax.random.normal(keys[2], (6,)) * 0.3
    probe = jax.random.normal(keys[3], (2, 9, 7, 6))

    def plain(x, k, b):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y + b) * probe)

    fused = lambda x, k, b: jnp.sum(kernels.layer(x, k, b, relu=True, fast=False,  # noqa
                                                  prepared={}) * probe)
    np.testing.assert_allclose(fused(x, kernel, bias), plain(x, kernel, bias), rtol=1e-6)
    for ours, ref in zip(jax.grad(fused, (0, 1, 2))(x, kernel, bias),
                         jax.grad(plain, (0, 1, 2))(x, kernel, bias)):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

    f = x.reshape(2, 63, 5)
    w = jax.random.normal(keys[3], (2, 5, 5))  # not symmetric: the VJP must symmetrise
    ours = jax.grad(lambda f: jnp.sum(losses._gram_product(f) * w))(f)
    ref = jax.grad(lambda f: jnp.sum(jnp.einsum("nmc,nmd->ncd", f, f) * w))(f)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_max_pool_gradient_matches_torch_including_ties_and_odd_sizes():
    """Ties (flat image regions give them) send the gradient to the first maximum of the
    window, as torch.nn.functional.max_pool2d does; an odd last row/column gets none."""
    from stylejax.vgg import max_pool2x2

    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 7, 9, 4)).astype(np.float32)  # few levels: many ties
    g = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    ours = jax.grad(lambda x: jnp.sum(max_pool2x2(x) * g))(jnp.asarray(x))
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    y = torch.nn.functional.max_pool2d(xt, 2)
    (y * torch.tensor(g).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(max_pool2x2(jnp.asarray(x)), y.detach().permute(0, 2, 3, 1))
    np.testing.assert_array_equal(ours, xt.grad.permute(0, 2, 3, 1).numpy())

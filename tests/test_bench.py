"""The benchmark's race is fair (its PyTorch loss is ours) and its FLOP counter is right."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import stylejax
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402


def test_conv_flop_counter_matches_a_hand_count():
    # conv1_1 on 40x32: 3->64 channels, 9 taps, multiply+add, forward and input gradient.
    assert bench.conv_flops(40, 32, ("conv1_1",)) == 2 * (2 * 9 * 3 * 64 * 40 * 32)
    # relu2_1 also runs conv1_2 (64->64) at full size and conv2_1 (64->128) after one pooling.
    hand = 2 * 9 * (3 * 64 * 40 * 32 + 64 * 64 * 40 * 32 + 64 * 128 * 20 * 16)
    assert bench.conv_flops(40, 32, ("relu2_1",)) == 2 * hand


def test_benchmark_torch_loss_equals_ours(vgg, vgg_params):
    """Same value and gradient from both racers (float32 each, so 1e-4 / 1e-3 relative)."""
    cfg = bench.bench_config()
    content, style = bench.bench_images(32)
    targets = stylejax.make_targets(vgg, content, style, cfg)
    x = jnp.asarray(content[None] * 0.9 + 0.05)
    value, grad = jax.value_and_grad(stylejax.loss_fn, argnums=1)(vgg, x, targets, cfg)
    torch, tloss, x0, _ = bench.torch_setup(vgg_params, content, style, cfg)
    xt = (x0 * 0.9 + 0.05).requires_grad_(True)
    tvalue = tloss(xt)
    tvalue.backward()
    np.testing.assert_allclose(float(value), tvalue.item(), rtol=1e-4)
    tgrad = xt.grad.numpy().transpose(0, 2, 3, 1)
    assert np.linalg.norm(np.asarray(grad) - tgrad) / np.linalg.norm(tgrad) < 1e-3


def test_time_to_loss_with_a_coarse_start_runs_both_sizes(vgg):
    """The coarse-to-fine row: iterations at half size, then the full size from that image."""
    content, style = bench.bench_images(32)
    kwargs = dict(target=-np.inf, kind="lbfgs", budget_s=0.0, iterations=2)
    plain = bench.time_to_loss(vgg, content, style, **kwargs)
    coarse = bench.time_to_loss(vgg, content, style, coarse=4, **kwargs)
    assert coarse["coarse_iterations"] == 4 and "half size" in coarse["optimizer"]
    assert not coarse["reached"] and coarse["compile_s"] > 0
    # The full size starts from the coarse result, not from the content: another loss (one
    # epoch runs whatever the budget: the fresh L-BFGS state has no loss before it).
    assert np.isfinite(coarse["loss"]) and coarse["loss"] != plain["loss"]

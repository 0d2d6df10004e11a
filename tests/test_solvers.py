"""Solvers: state carried across epochs, loss falling, and no recompilation after epoch 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stylejax
from stylejax.solvers import SolverConfig, fresh_state, init_state, run_epoch

CFG = stylejax.preset_config("johnson")


@pytest.fixture(scope="module")
def targets(vgg, content_image, style_image):
    return stylejax.make_targets(vgg, content_image, style_image, CFG)


def _run(vgg, targets, content, scfg, epochs):
    state = init_state(scfg, vgg, jnp.asarray(content[None]), targets, CFG)
    values = [float(state.value)]
    for _ in range(epochs):
        state = run_epoch(state, vgg, targets, cfg=CFG, scfg=scfg)
        values.append(float(state.value))
    return np.asarray(state.image), values


@pytest.mark.parametrize("kind,lr,smooth", [("lbfgs", 0.0, None), ("lbfgs", 1e-4, None),
                                            ("optax-lbfgs", 0.0, 12.0), ("adam", 0.02, None)])
def test_state_is_carried_across_epochs(kind, lr, smooth, vgg, targets, content_image):
    """Two epochs of 3 iterations equal one epoch of 6: nothing restarts between epochs
    (lbfgs: preconditioned by default; optax-lbfgs: asked to be)."""
    scfg = lambda n: SolverConfig(kind, n, lr, 10, precondition=smooth)  # noqa: E731
    image_a, values_a = _run(vgg, targets, content_image, scfg(3), 2)
    image_b, values_b = _run(vgg, targets, content_image, scfg(6), 1)
    np.testing.assert_allclose(image_a, image_b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values_a[-1], values_b[-1], rtol=1e-4)
    assert values_a[-1] < values_a[0]


@pytest.mark.parametrize("lr", [0.0, 1e-4])
def test_fresh_state_runs_as_init_state(lr, vgg, content_image, style_image):
    """An L-BFGS `fresh_state` (not evaluated: no evaluation to compile) takes the same
    iterations as `init_state`: its first epoch evaluates it, then runs its own iterations."""
    cfg = stylejax.preset_config("johnson", conv="direct")  # init_state's own convolution
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)
    scfg = SolverConfig("lbfgs", 3, lr, 10)
    x0 = jnp.asarray(content_image[None])
    ref, fresh = init_state(scfg, vgg, x0, targets, cfg), fresh_state(scfg, x0)
    assert float(fresh.value) == np.inf
    for _ in range(2):
        ref = run_epoch(ref, vgg, targets, cfg=cfg, scfg=scfg)
        fresh = run_epoch(fresh, vgg, targets, cfg=cfg, scfg=scfg)
    np.testing.assert_allclose(np.asarray(fresh.image), np.asarray(ref.image), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(float(fresh.value), float(ref.value), rtol=1e-5)
    assert int(fresh.inner.iter_num) == int(ref.inner.iter_num) == 6
    assert int(fresh.inner.num_fun_eval) == int(ref.inner.num_fun_eval)
    with pytest.raises(stylejax.StylejaxError):
        fresh_state(SolverConfig("adam"), x0)


def test_lbfgs_loss_falls_every_epoch(vgg, targets, content_image):
    _, values = _run(vgg, targets, content_image, SolverConfig("lbfgs", 3, history=10), 4)
    assert all(b < a for a, b in zip(values, values[1:])), values


def test_no_recompilation_after_first_epoch(vgg, targets, content_image):
    scfg = SolverConfig("lbfgs", 2, history=10)
    state = init_state(scfg, vgg, jnp.asarray(content_image[None]), targets, CFG)
    state = run_epoch(state, vgg, targets, cfg=CFG, scfg=scfg)
    compiled = run_epoch._cache_size()
    with jax.log_compiles(True):
        for _ in range(3):
            state = run_epoch(state, vgg, targets, cfg=CFG, scfg=scfg)
    jax.block_until_ready(state)
    assert run_epoch._cache_size() == compiled


def test_bad_solver_settings():
    for bad in (dict(kind="sgd"), dict(iterations=0), dict(lr=-1.0), dict(history=0)):
        with pytest.raises(stylejax.StylejaxError):
            SolverConfig(**bad)


def test_driver_epochs_get_winograd_kernels_made_once(vgg, monkeypatch):
    """`driver.compiled_epoch` compiles and calls `run_epoch` with the kernels already in
    Winograd's domain, so no epoch call transforms them again."""
    from types import SimpleNamespace

    from stylejax import driver

    calls = []

    def fake_compile(jitted, state, bundle, targets, **static):
        calls.append((jitted, bundle))
        return lambda st, b, t: b

    monkeypatch.setattr(driver, "compile_released", fake_compile)
    cfg = stylejax.preset_config("johnson", conv="winograd")
    state = SimpleNamespace(image=jnp.zeros((1, 64, 64, 3), jnp.float32))
    epoch = driver.compiled_epoch(vgg, {}, cfg, SolverConfig("lbfgs"), state)
    (jitted, bundle), = calls
    assert jitted is run_epoch and epoch(state) is bundle
    made = {name for name, p in bundle.params.items() if "winograd" in p}
    assert made == {"conv2_1", "conv2_2"}  # 64 px: block 3 has 16x16 = 256 < 512 pixels
    direct = stylejax.preset_config("johnson", conv="direct")
    driver.compiled_epoch(vgg, {}, direct, SolverConfig("lbfgs"), state)
    bundle = calls[-1][1]  # no Winograd form, every kernel flipped for the input gradient
    assert not any("winograd" in p for p in bundle.params.values())
    assert all("flipped" in bundle.params[n] for n in vgg.params if n <= "conv5_1")

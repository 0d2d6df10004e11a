"""Solvers: state carried across epochs, loss falling, and no recompilation after epoch 1."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import stylejax
from conftest import xla_compiles
from stylejax import run
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


@pytest.mark.parametrize("kind,lr,smooth", [("lbfgs", 0.0, "auto"), ("lbfgs", 1e-4, 0),
                                            ("optax-lbfgs", 0.0, 12.0), ("adam", 0.02, 0)])
def test_state_is_carried_across_epochs(kind, lr, smooth, vgg, targets, content_image):
    """Two epochs of 3 iterations equal one epoch of 6: nothing restarts between epochs
    (the preconditioned variables included, for lbfgs and optax-lbfgs)."""
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
    cfg = stylejax.preset_config("johnson")
    direct = stylejax.Execution("direct")  # init_state's own convolution
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)
    scfg = SolverConfig("lbfgs", 3, lr, 10)
    x0 = jnp.asarray(content_image[None])
    ref, fresh = init_state(scfg, vgg, x0, targets, cfg), fresh_state(scfg, x0)
    assert float(fresh.value) == np.inf
    for _ in range(2):
        ref = run_epoch(ref, vgg, targets, cfg=cfg, scfg=scfg, execution=direct)
        fresh = run_epoch(fresh, vgg, targets, cfg=cfg, scfg=scfg, execution=direct)
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


def test_no_recompilation_after_first_epoch(vgg, content_image, style_image):
    """`stylize()` compiles its epoch once ahead of time (counted by XLA's own compile
    events, which see ahead-of-time compiles that jit's cache size does not), then runs
    every epoch with that program."""
    compiles = xla_compiles("run_epoch")
    # A history no other test uses: a program compiled before (or kept in the persistent
    # cache that in-process CLI runs switch on) would not be compiled again.
    result = stylejax.stylize(vgg, content_image, style_image, CFG, epochs=4, max_iter=1,
                              history=7)
    assert len(result.losses) == 4
    assert xla_compiles("run_epoch") - compiles == 1


def test_bad_solver_settings():
    for bad in (dict(kind="sgd"), dict(iterations=0), dict(lr=-1.0), dict(history=0)):
        with pytest.raises(stylejax.StylejaxError):
            SolverConfig(**bad)


def test_loop_epochs_get_winograd_kernels_made_once(vgg, monkeypatch):
    """`run.compiled_epoch` compiles and calls `run_epoch` with the kernels already in
    Winograd's domain, so no epoch call transforms them again."""
    from types import SimpleNamespace

    calls = []

    def fake_compile(jitted, state, bundle, targets, **static):
        calls.append((jitted, bundle))
        return lambda st, b, t: b

    monkeypatch.setattr(run, "compile_released", fake_compile)
    state = SimpleNamespace(image=jnp.zeros((1, 64, 64, 3), jnp.float32))
    epoch = run.compiled_epoch(vgg, {}, CFG, SolverConfig("lbfgs"), state,
                               stylejax.Execution("winograd"))
    (jitted, bundle), = calls
    assert jitted is run_epoch and epoch(state) is bundle
    made = {name for name, p in bundle.params.items() if "winograd" in p}
    assert made == {"conv2_1", "conv2_2"}  # 64 px: block 3 has 16x16 = 256 < 512 pixels
    run.compiled_epoch(vgg, {}, CFG, SolverConfig("lbfgs"), state, stylejax.Execution("direct"))
    bundle = calls[-1][1]  # no Winograd form, every kernel flipped for the input gradient
    assert not any("winograd" in p for p in bundle.params.values())
    assert all("flipped" in bundle.params[n] for n in vgg.params if n <= "conv5_1")

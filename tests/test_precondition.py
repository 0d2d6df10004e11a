"""The change of variables: the filter against a float64 numpy one, its gradient against
autodiff, and L-BFGS in the smooth variables reaching a lower loss than in the pixels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stylejax
from stylejax.precondition import EXPONENT, in_smooth_variables, smooth, unsmooth
from stylejax.solvers import SolverConfig, fresh_state, run_epoch, wavelength

CFG = stylejax.preset_config("johnson")


def _numpy_smooth(z, wavelength):
    """The filter written out in float64 on the full (complex) FFT grid."""
    h, w = z.shape[-3:-1]
    f2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    gain = (1 + f2 * wavelength ** 2) ** -EXPONENT
    spectrum = np.fft.fft2(z.astype(np.float64), axes=(-3, -2)) * gain[..., None]
    return np.fft.ifft2(spectrum, axes=(-3, -2)).real


@pytest.mark.parametrize("dft", ["fft", "matmul"])
@pytest.mark.parametrize("shape", [(1, 32, 40, 3), (2, 1, 33, 27, 3)])
def test_smooth_is_the_filter_inverted_by_unsmooth(shape, dft):
    rng = np.random.default_rng(0)
    z, b = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    x = np.asarray(smooth(jnp.asarray(z), 12.0, dft))
    np.testing.assert_allclose(x, _numpy_smooth(z, 12.0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(unsmooth(jnp.asarray(x), 12.0, dft)), z, atol=1e-4)
    # Symmetric, so the gradient in z is the filtered gradient in x.
    np.testing.assert_allclose(np.vdot(x, b),
                               np.vdot(z, np.asarray(smooth(jnp.asarray(b), 12.0, dft))),
                               rtol=1e-4)
    flat = np.full(shape, 0.5, np.float32)  # a flat image passes unchanged
    np.testing.assert_allclose(np.asarray(smooth(jnp.asarray(flat), 12.0, dft)), flat,
                               atol=1e-6)


def test_objective_in_smooth_variables_has_the_autodiff_gradient(vgg, content_image,
                                                                 style_image):
    targets = stylejax.make_targets(vgg, content_image, style_image, CFG)
    z = unsmooth(jnp.asarray(content_image[None]), 12.0)

    def pixels(x):
        return jax.value_and_grad(stylejax.loss_fn, argnums=1)(vgg, x, targets, CFG)

    value, grad = jax.jit(in_smooth_variables(pixels, 12.0))(z)
    ref_value, ref_grad = jax.jit(jax.value_and_grad(
        lambda z: stylejax.loss_fn(vgg, smooth(z, 12.0), targets, CFG)))(z)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-3,
                               atol=1e-4 * float(jnp.abs(ref_grad).max()))


def test_preconditioned_lbfgs_reaches_a_lower_loss(vgg, content_image, style_image):
    """Same loss, same iterations: the smooth variables ("auto": 4 px at 32 x 40) end
    lower than the pixels (2863 vs 2954 when written), the state's image is the smoothed
    variables and its value the loss there."""
    targets = stylejax.make_targets(vgg, content_image, style_image, CFG)
    x0 = jnp.asarray(content_image[None])
    ends = {}
    for precondition in (0.0, "auto"):
        scfg = SolverConfig("lbfgs", 20, history=10, precondition=precondition)
        state = fresh_state(scfg, x0)
        for _ in range(2):
            state = run_epoch(state, vgg, targets, cfg=CFG, scfg=scfg)
        ends[precondition] = float(state.value)
        assert (state.point is None) == (precondition == 0)
        if precondition == "auto":
            np.testing.assert_allclose(np.asarray(state.image),
                                       np.asarray(smooth(state.point, 4.0)), atol=1e-6)
        at_image = float(stylejax.loss_fn(vgg, state.image, targets, CFG))
        np.testing.assert_allclose(at_image, ends[precondition], rtol=1e-3)
    assert ends["auto"] < 0.985 * ends[0.0], ends


def test_default_and_bad_wavelengths():
    """Off by default for every solver (the paper's path); "auto" is 1/8 of the shorter side."""
    auto = SolverConfig("lbfgs", precondition="auto")
    assert auto.precondition == "auto" and wavelength(auto, (1, 192, 256, 3)) == 24.0
    assert wavelength(auto, (3, 1, 40, 32, 3)) == 4.0
    assert SolverConfig("lbfgs", precondition=" AUTO ").precondition == "auto"
    for off in (SolverConfig("lbfgs"), SolverConfig("lbfgs", lr=1e-3), SolverConfig("adam"),
                SolverConfig("optax-lbfgs"), SolverConfig("lbfgs", precondition=None)):
        assert off.precondition == 0.0 and wavelength(off, (1, 64, 64, 3)) == 0
    assert wavelength(SolverConfig("adam", precondition=8), (1, 64, 64, 3)) == 8.0
    for bad in (dict(precondition=-1.0), dict(precondition=float("nan")), dict(dft="fast"),
                dict(precondition="sometimes")):
        with pytest.raises(stylejax.StylejaxError):
            SolverConfig("lbfgs", **bad)

"""A change of variables that lets L-BFGS see the image's coarse structure first.

The solvers can optimize ``z`` with the image ``x = smooth(z)`` instead of ``x`` itself.
`smooth` is a linear low-pass filter, diagonal in Fourier space::

    X(f) = Z(f) * (1 + |f|^2 * L^2) ** -EXPONENT        (f in cycles per pixel)

so frequencies well below 1 / L (wavelengths longer than ``L`` pixels) pass unchanged and
finer ones are damped, as 1 / (|f| L) for EXPONENT 1/2. The loss is unchanged (every ``x``
is some ``smooth(z)``: the filter is invertible), only the path to its minimum: gradient
steps in ``z`` are gradient steps in ``x`` preconditioned by ``smooth``², which moves the
broad strokes that the fine detail hangs on before the detail, as a coarse-to-fine start does
(README, "Optimizers", gives the measurements behind ``L`` and EXPONENT).

The filter is real and symmetric (the scale is real and even in f), so the gradient in ``z``
is ``smooth`` applied to the gradient in ``x``. Images are periodic to the FFT: a step at one
edge leaks into the opposite one over about L / (2 pi) pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EXPONENT = 0.5


def _scale(height: int, width: int, wavelength: float) -> np.ndarray:
    """The filter's gain [H, W // 2 + 1, 1] on `jnp.fft.rfft2`'s frequency grid."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    gain = (1.0 + (fy ** 2 + fx ** 2) * float(wavelength) ** 2) ** -EXPONENT
    return gain[..., None].astype(np.float32)


def _filter(x: jax.Array, wavelength: float, inverse: bool) -> jax.Array:
    h, w = x.shape[-3:-1]
    gain = _scale(h, w, wavelength)
    spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(-3, -2))
    spectrum = spectrum / gain if inverse else spectrum * gain
    return jnp.fft.irfft2(spectrum, s=(h, w), axes=(-3, -2)).astype(x.dtype)


def smooth(z: jax.Array, wavelength: float) -> jax.Array:
    """The image ``x`` [..., H, W, C] of the variables ``z`` (same shape): detail finer than
    ``wavelength`` pixels damped (see the module's docstring). Linear and symmetric."""
    return _filter(z, wavelength, inverse=False)


def unsmooth(x: jax.Array, wavelength: float) -> jax.Array:
    """The inverse of `smooth`: the variables ``z`` [..., H, W, C] whose image is ``x``."""
    return _filter(x, wavelength, inverse=True)


def in_smooth_variables(value_and_grad, wavelength: float):
    """``f(z, *args) -> (loss(smooth(z)), d loss / d z)`` from ``value_and_grad(x, *args) ->
    (loss(x), d loss / d x)``: the objective over the smoothing's variables."""
    def f(z, *args):
        value, grad = value_and_grad(smooth(z, wavelength), *args)
        return value, smooth(grad, wavelength)

    return f

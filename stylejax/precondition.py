"""A change of variables that lets L-BFGS see the image's coarse structure first.

The solvers can optimize ``z`` with the image ``x = smooth(z)`` instead of ``x`` itself.
`smooth` is a linear low-pass filter, diagonal in Fourier space::

    X(f) = Z(f) * (1 + |f|^2 * L^2) ** -EXPONENT        (f in cycles per pixel)

so frequencies well below 1 / L (wavelengths longer than ``L`` pixels) pass unchanged and
finer ones are damped, as 1 / (|f| L) for EXPONENT 1/2. The loss is unchanged (every ``x``
is some ``smooth(z)``: the filter is invertible), only the path to its minimum: gradient
steps in ``z`` are gradient steps in ``x`` preconditioned by ``smooth``², which moves the
broad strokes that the fine detail hangs on before the detail, as a coarse-to-fine start does
(docs/optimizers.md gives the measurements behind ``L`` and EXPONENT).

The filter is real and symmetric (the scale is real and even in f), so the gradient in ``z``
is ``smooth`` applied to the gradient in ``x``. Images are periodic to the DFT: a step at one
edge leaks into the opposite one, over roughly L / (2 pi) pixels (an estimate, not measured).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EXPONENT = 0.5


def _frequencies(n: int) -> jax.Array:
    """Signed frequencies [n] in cycles per pixel, `np.fft.fftfreq`'s order."""
    k = jnp.arange(n)
    return jnp.where(k < (n + 1) // 2, k, k - n).astype(jnp.float32) / n


def _dft(n: int, inverse: bool) -> jax.Array:
    """The [n, n] DFT matrix (complex64; the inverse unnormalised), made in the program
    rather than embedded: exp(-+2 pi i (j k mod n) / n), the product reduced exactly."""
    k = jnp.arange(n)
    turns = (k[:, None] * k[None, :] % n).astype(jnp.float32) / n
    return jnp.exp((2j if inverse else -2j) * jnp.pi * turns)


DFTS = ("fft", "matmul")


def _gain(h: int, w: int, wavelength: float, inverse: bool) -> jax.Array:
    """The filter's gain (or its inverse) [H, W] on the full DFT grid."""
    f2 = _frequencies(h)[:, None] ** 2 + _frequencies(w)[None, :] ** 2
    gain = (1.0 + f2 * float(wavelength) ** 2) ** -EXPONENT
    return 1.0 / gain if inverse else gain


def _filter(x: jax.Array, wavelength: float, inverse: bool, dft: str) -> jax.Array:
    h, w = x.shape[-3:-1]
    gain = _gain(h, w, wavelength, inverse)
    if dft == "fft":
        planes = jnp.moveaxis(x.astype(jnp.float32), -1, -3)  # [..., C, H, W]
        spectrum = jnp.fft.rfft2(planes) * gain[:, : w // 2 + 1]
        return jnp.moveaxis(jnp.fft.irfft2(spectrum, s=(h, w)), -3, -1).astype(x.dtype)
    # The 2-D DFT as matrix products: XLA's CPU FFT fails a layout check inside programs
    # partitioned over several devices; these cost 9% of a value+grad at 192 px and 20% at
    # 512 px on a 2-core CPU (the FFT: under 1%), so they serve only there.
    gain = gain / (h * w)
    spectrum = jnp.einsum("ij,...jwc,vw->...ivc", _dft(h, False), x.astype(jnp.complex64),
                          _dft(w, False))
    spectrum = spectrum * gain[:, :, None]
    out = jnp.einsum("ij,...jwc,vw->...ivc", _dft(h, True), spectrum, _dft(w, True))
    return out.real.astype(x.dtype)


def smooth(z: jax.Array, wavelength: float, dft: str = "fft") -> jax.Array:
    """The image ``x`` [..., H, W, C] of the variables ``z`` (same shape): detail finer than
    ``wavelength`` pixels damped (see the module's docstring). Linear and symmetric.
    ``dft``: "fft" (`jnp.fft`), or "matmul" (dense products, for sharded programs)."""
    return _filter(z, wavelength, False, dft)


def unsmooth(x: jax.Array, wavelength: float, dft: str = "fft") -> jax.Array:
    """The inverse of `smooth`: the variables ``z`` [..., H, W, C] whose image is ``x``."""
    return _filter(x, wavelength, True, dft)


def in_smooth_variables(value_and_grad, wavelength: float, dft: str = "fft"):
    """``f(z, *args) -> (loss(smooth(z)), d loss / d z)`` from ``value_and_grad(x, *args) ->
    (loss(x), d loss / d x)``: the objective over the smoothing's variables."""
    def f(z, *args):
        value, grad = value_and_grad(smooth(z, wavelength, dft), *args)
        return value, smooth(grad, wavelength, dft)

    return f

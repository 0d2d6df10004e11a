"""Colour preservation, both ways of Gatys, Bethge, Hertzmann & Shechtman (2017), *Controlling
Perceptual Factors in Neural Style Transfer*, Section 5. Pure functions of float RGB arrays
[..., 3] (any leading axes); nothing is clipped unless it says so.

- Luminance-only transfer (their Sec. 5.1): transfer on the luminance Y of YIQ (the colour
  space the paper uses), then put back the content's chroma (I, Q). `luminance_image` makes
  the grey inputs, `match_luminance` matches the style's Y mean and spread to the content's,
  `restore_chroma` recombines.
- Colour histogram matching (their Sec. 5.2): `match_color` moves the style image's pixel
  mean and covariance onto the content's before an ordinary transfer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("luminance", "histogram")

# FCC NTSC YIQ. Rows I and Q sum to 0 and row Y to 1, so the inverse's first column is
# exactly (1, 1, 1): RGB = Y + (a chroma-only offset), which `restore_chroma` relies on.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def _mm(a, b):
    # Full float32 (TPUs otherwise run f32 matmuls as bf16 passes).
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def rgb_to_yiq(rgb):
    """[..., 3] RGB -> [..., 3] YIQ (Y in [0, 1] for RGB in [0, 1]; I, Q signed)."""
    return _mm(jnp.asarray(rgb, jnp.float32), jnp.asarray(RGB_TO_YIQ.T, jnp.float32))


def yiq_to_rgb(yiq):
    """[..., 3] YIQ -> [..., 3] RGB (not clipped)."""
    return _mm(jnp.asarray(yiq, jnp.float32), jnp.asarray(YIQ_TO_RGB.T, jnp.float32))


def luminance(rgb):
    """Y = 0.299 R + 0.587 G + 0.114 B of [..., 3] RGB -> [...]."""
    return rgb_to_yiq(rgb)[..., 0]


def luminance_image(rgb):
    """The grey image whose R = G = B = Y of ``rgb`` [..., 3] (what VGG sees in luminance mode)."""
    y = luminance(rgb)
    return jnp.stack([y, y, y], axis=-1)


def match_luminance(style, content, eps: float = 1e-6):
    """The style's luminance image with the mean and standard deviation of the content's Y.

    ``L' = σ_c / σ_s · (L_s − μ_s) + μ_c`` (Gatys et al. 2017, Sec. 5.1), statistics over all
    pixels. ``style`` [..., 3], ``content`` [..., 3] RGB; returns grey [..., 3] like ``style``.
    """
    ys, yc = luminance(style), luminance(content)
    y = (ys - ys.mean()) * (yc.std() / jnp.maximum(ys.std(), eps)) + yc.mean()
    return jnp.stack([y, y, y], axis=-1)


def restore_chroma(image, content):
    """``image``'s luminance with ``content``'s chroma (I, Q), as RGB [..., 3] in [0, 1].

    Both [..., 3] of the same shape. Y is clamped to the range in which the content's chroma
    stays inside the RGB cube, so the chroma survives exactly (a plain RGB clip would shift
    it wherever the styled luminance is too bright or dark for that colour).
    """
    c = rgb_to_yiq(content)
    offset = yiq_to_rgb(c.at[..., 0].set(0.0))  # RGB = Y + offset, per pixel
    lo, hi = -offset.min(axis=-1), 1.0 - offset.max(axis=-1)
    y = jnp.clip(luminance(image), lo, jnp.maximum(lo, hi))
    return jnp.clip(y[..., None] + offset, 0.0, 1.0)


def _sym_power(cov, power, eps=0.0):
    """cov^power of a symmetric PSD 3x3 matrix, eps x its largest eigenvalue added first."""
    w, v = jnp.linalg.eigh(cov)
    w = jnp.maximum(w, 0.0) + eps * jnp.maximum(w.max(), 1e-12)
    return _mm(v * w ** power, v.T)


def match_color(style, content, eps: float = 1e-5):
    """``style`` [..., 3] with its pixels' mean and 3x3 covariance moved onto ``content``'s.

    ``x' = Σ_c^½ Σ_s^-½ (x − μ_s) + μ_c`` with symmetric matrix square roots (the "image
    analogies" variant of Gatys et al. 2017, Sec. 5.2), so that mean(x') = μ_c and
    cov(x') = Σ_c. ``eps`` times the largest eigenvalue is added to Σ_s's eigenvalues (a grey
    style has a singular covariance). Not clipped: values slightly outside [0, 1] keep the
    statistics exact, and VGG takes them as they are.
    """
    s = jnp.asarray(style, jnp.float32)
    xs, xc = s.reshape(-1, 3), jnp.asarray(content, jnp.float32).reshape(-1, 3)
    mu_s, mu_c = xs.mean(0), xc.mean(0)
    ds, dc = xs - mu_s, xc - mu_c
    cov_s, cov_c = _mm(ds.T, ds) / xs.shape[0], _mm(dc.T, dc) / xc.shape[0]
    a = _mm(_sym_power(cov_c, 0.5), _sym_power(cov_s, -0.5, eps))
    return (_mm(ds, a.T) + mu_c).reshape(s.shape)

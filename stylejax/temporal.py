"""The temporal pieces of video style transfer (Ruder, Dosovitskiy & Brox, *Artistic Style
Transfer for Videos*, GCPR 2016, and the IJCV 2018 version): warping by optical flow, the
per-pixel consistency weights, long-term weights, and the temporal loss. Pure JAX functions
of arrays; `stylejax.video` (sequential) and `stylejax.multipass` drive them.

Flow convention (OpenCV's): a flow ``f`` [H, W, 2] of image ``a`` into image ``b`` holds, at
each pixel p = (x, y) of ``a``, the displacement (dx, dy) to where p is found in ``b``:
``a(p) ≈ b(p + f(p))``. So ``warp(b, f)`` — bilinear sampling of ``b`` at p + f(p) — is ``b``
carried into ``a``'s frame. For a frame k and a reference frame r (r = k − 1 in the paper's
short-term case), the flow of k into r warps the stylized r into k, and the flow of r into
k is only used to check it.

Departure from the paper: pixels whose flow leads outside the reference frame also get c = 0
(the paper leaves them to the forward–backward check, which usually but not always fails
there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stylejax.losses import temporal_term

# Ruder et al. 2016, Sec. 3.1: the forward-backward check and the motion-boundary test.
CONSISTENCY = (0.01, 0.5)
"""|w̃ + ŵ|² > a (|w̃|² + |ŵ|²) + b marks a pixel occluded: (a, b)."""
MOTION_BOUNDARY = (0.01, 0.002)
"""|∇û|² + |∇v̂|² > a |ŵ|² + b marks a motion boundary: (a, b)."""


@jax.jit
def warp(image, flow):
    """Bilinear sampling of ``image`` [..., H, W, C] at p + ``flow``(p): ``flow`` [H, W, 2]
    holds (dx, dy) per pixel (see the module's convention). Positions outside the image take
    the nearest edge pixel (`valid_mask` says which those are). Differentiable in ``image``
    and ``flow``; float32."""
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[-3], image.shape[-2]
    flow = jnp.asarray(flow, jnp.float32)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    xs = jnp.clip(xx + flow[..., 0], 0.0, w - 1.0)
    ys = jnp.clip(yy + flow[..., 1], 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(xs), 0, w - 2 if w > 1 else 0)
    y0 = jnp.clip(jnp.floor(ys), 0, h - 2 if h > 1 else 0)
    fx, fy = (xs - x0)[:, :, None], (ys - y0)[:, :, None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    top = image[..., y0, x0, :] * (1 - fx) + image[..., y0, x1, :] * fx
    bottom = image[..., y1, x0, :] * (1 - fx) + image[..., y1, x1, :] * fx
    return top * (1 - fy) + bottom * fy


def valid_mask(flow):
    """[H, W] bool: where p + ``flow``(p) lies inside the image (``flow`` [H, W, 2])."""
    flow = jnp.asarray(flow, jnp.float32)
    h, w = flow.shape[:2]
    yy, xx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    xs, ys = xx + flow[..., 0], yy + flow[..., 1]
    return (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)


@jax.jit
def consistency_weights(forward, backward):
    """Ruder et al.'s per-pixel weights c [H, W] (float32, 0 or 1) for a frame k.

    ``backward`` ŵ [H, W, 2]: the flow of frame k into its reference (frame k−1 in the
    paper); ``forward`` w: of the reference into frame k. With w̃(p) = w(p + ŵ(p)) (``forward`` warped into frame k), c is 0 where

    - the forward–backward check fails: |w̃ + ŵ|² > 0.01 (|w̃|² + |ŵ|²) + 0.5 (occlusions);
    - at motion boundaries: |∇û|² + |∇v̂|² > 0.01 |ŵ|² + 0.002 (central differences);
    - where p + ŵ(p) falls outside frame k−1 (our addition; see the module docstring),

    and 1 elsewhere.
    """
    back = jnp.asarray(backward, jnp.float32)
    fwd = warp(forward, back)
    sq = lambda v: jnp.sum(v * v, axis=-1)  # noqa: E731
    a, b = CONSISTENCY
    occluded = sq(fwd + back) > a * (sq(fwd) + sq(back)) + b
    du = jnp.stack(jnp.gradient(back[..., 0]), -1)
    dv = jnp.stack(jnp.gradient(back[..., 1]), -1)
    a, b = MOTION_BOUNDARY
    boundary = sq(du) + sq(dv) > a * sq(back) + b
    return jnp.where(occluded | boundary | ~valid_mask(back), 0.0, 1.0).astype(jnp.float32)


def temporal_loss(image, previous, flow, weights):
    """``(1/D) Σ c·(x − warp(x_prev, ŵ))²``, D = H·W·3: ``image`` x [N, H, W, 3], the
    previous stylized frame ``previous`` [1, H, W, 3], the backward ``flow`` ŵ [H, W, 2]
    and ``weights`` c [H, W] (`consistency_weights`). Pure, differentiable in ``image``,
    ``previous`` and ``flow``."""
    c = jnp.asarray(weights, jnp.float32).reshape((1,) + tuple(jnp.shape(weights)[-2:]) + (1,))
    return temporal_term(jnp.asarray(image, jnp.float32), warp(previous, flow), c)


def long_term_weights(weights):
    """Long-term weights (Ruder et al. 2016, Sec. 3.2) from the short-term ones.

    ``weights`` [J, H, W] (or [J, H, W, 1]): c of each reference j = 1..J of a frame, closest
    first (e.g. frames k−1, k−2, k−4). Returns c_long_j = max(c_j − Σ_{l<j} c_l, 0): each
    pixel is held to the closest reference where the flow is trusted, and to no other.
    """
    c = jnp.asarray(weights, jnp.float32)
    before = jnp.cumsum(c, axis=0) - c
    return jnp.maximum(c - before, 0.0)


@jax.jit
def references(images, backward, forward, present):
    """The targets' ``"temporal"`` entry of a frame held to J reference frames.

    ``images`` [J, H, W, 3]: the stylized references (closest first); ``backward`` [J, H, W,
    2]: the flow of the frame into each reference; ``forward`` [J, H, W, 2]: of each
    reference into the frame; ``present`` [J] (0 or 1): which references exist (a frame near
    the clip's ends has fewer). Returns ``{"warped": [J, H, W, 3], "weights": [J, H, W, 1]}``
    with the long-term weights (`long_term_weights`), 0 for absent references.
    """
    warped = jax.vmap(warp)(images, backward)
    c = jax.vmap(consistency_weights)(forward, backward)
    c = c * jnp.asarray(present, jnp.float32)[:, None, None]
    return {"warped": warped, "weights": long_term_weights(c)[..., None]}


def blend_start(image, warped, weights, blend: float = 1.0):
    """The IJCV paper's start of a frame in a later pass: ``(x + δ c ω) / (1 + δ c)``, the
    frame's last result ``image`` [..., H, W, 3] averaged with its neighbour warped into it
    ``warped`` where the flow is trusted (``weights`` c [..., H, W, 1]); δ = ``blend``."""
    dc = blend * jnp.asarray(weights, jnp.float32)
    return (jnp.asarray(image, jnp.float32) + dc * warped) / (1.0 + dc)


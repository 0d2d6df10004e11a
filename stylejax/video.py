"""Video: style transfer frame by frame with a temporal loss (Ruder, Dosovitskiy & Brox 2016,
*Artistic Style Transfer for Videos*), through the run's one compiled epoch.

Flow convention (OpenCV's): a flow ``f`` [H, W, 2] of image ``a`` into image ``b`` holds, at
each pixel p = (x, y) of ``a``, the displacement (dx, dy) to where p is found in ``b``:
``a(p) ≈ b(p + f(p))``. So ``warp(b, f)`` — bilinear sampling of ``b`` at p + f(p) — is ``b``
carried into ``a``'s frame. For frame k the *backward* flow ŵ (frame k into frame k−1) warps
the previous stylized frame into frame k; the *forward* flow w (frame k−1 into frame k) is
only used to check ŵ.

Sequential mode (the paper's Sec. 3): frame 1 is stylized as a still image; each later frame
k starts from the previous stylized frame warped into it (where the flow is trusted,
consistency weight c = 1; from frame k itself where c = 0, the disoccluded pixels) and its
loss gains ``temporal_weight · (1/D) Σ c·(x − warp(x_{k−1}, ŵ))²`` (`losses.temporal_term`).
Every frame has the same shape and the same targets' structure (frame 1 carries an all-zero
temporal weight), so the solver epoch is compiled once per video.

Departure from the paper: pixels whose flow leads outside the previous frame also get c = 0
(the paper leaves them to the forward–backward check, which usually but not always fails
there). Optical flow itself (OpenCV's DIS or Farnebäck) is in `stylejax.flow`, which imports
OpenCV; this module takes flows as arrays or as a function, and imports no video library.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.losses import LossConfig, content_targets, make_targets, temporal_term
from stylejax.run import (Epoch, as_images, check_call, check_stages,
                          compiled_epoch, initial_image, run_epochs, state_maker)
from stylejax.solvers import SolverConfig, solver_config

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

    ``backward`` ŵ [H, W, 2]: the flow of frame k into frame k−1; ``forward`` w: of frame k−1
    into frame k. With w̃(p) = w(p + ŵ(p)) (``forward`` warped into frame k), c is 0 where

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


def temporal_targets(previous, flow, weights) -> dict:
    """The targets' ``"temporal"`` entry for a frame: ``{"warped": [1, H, W, 3], "weights":
    [1, H, W, 1]}`` from the previous stylized frame [1, H, W, 3], the backward flow [H, W,
    2] and the weights [H, W]."""
    c = jnp.asarray(weights, jnp.float32)
    return {"warped": warp(jnp.asarray(previous, jnp.float32).reshape((1,) + c.shape + (3,)),
                           flow),
            "weights": c.reshape((1,) + c.shape + (1,))}


FlowSource = Union[tuple, Callable]


def frame_flows(frames, flow: FlowSource, k: int):
    """(forward, backward) [H, W, 2] for frame ``k`` >= 1 from ``flow``: a pair of arrays
    (forward [T−1, H, W, 2], backward [T−1, H, W, 2]; entry k−1 belongs to frame k) or a
    function ``flow(a, b)`` -> the flow of image a into image b ([H, W, 3] float in [0, 1])."""
    if callable(flow):
        return flow(frames[k - 1], frames[k]), flow(frames[k], frames[k - 1])
    forward, backward = flow
    return np.asarray(forward[k - 1], np.float32), np.asarray(backward[k - 1], np.float32)


def _check_flows(flow, frames) -> None:
    if callable(flow):
        return
    try:
        forward, backward = flow
    except (TypeError, ValueError):
        raise StylejaxError("flow must be a function flow(a, b) or a pair (forward, "
                            "backward) of [T-1, H, W, 2] arrays.") from None
    want = (len(frames) - 1,) + frames.shape[1:3] + (2,)
    for name, f in (("forward", forward), ("backward", backward)):
        if tuple(np.shape(f)) != want:
            raise StylejaxError(f"The {name} flow is {list(np.shape(f))} but the frames need "
                                f"{list(want)}: compute it from these frames.")


def as_frames(frames) -> np.ndarray:
    """[T, H, W, 3] float32 in [0, 1] from an array or a list of same-sized frames."""
    shapes = [np.shape(f) for f in frames]
    if not shapes:
        raise StylejaxError("The video has no frames.")
    for i, s in enumerate(shapes):
        if s != shapes[0] or len(s) != 3 or s[-1] != 3:
            raise StylejaxError(f"Frame {i + 1} is {list(s)} but frame 1 is {list(shapes[0])}: "
                                "every frame must be [H, W, 3] of one size.")
    return np.asarray(frames, np.float32)


@dataclass
class VideoEpoch(Epoch):
    """An `Epoch` of frame ``frame`` (0-based) of ``frames``; ``epoch`` counts from 1 within
    the frame, and ``last_of_scale`` marks the frame's last epoch (``image`` is then the
    frame's result). ``weights``: the fraction of the frame's pixels with c = 1 (1.0 for
    frame 1)."""

    frame: int = 0
    frames: int = 1
    weights: float = 1.0


def video_epochs(vgg, frames, styles, cfg: LossConfig, scfg: SolverConfig, *, epochs: int,
                 flow: FlowSource, init="content", seed: int = 0, style_blend_weights=None,
                 execution: Optional[Execution] = None) -> Iterator[VideoEpoch]:
    """The sequential video loop: yields a `VideoEpoch` after every epoch of every frame.

    ``frames`` [T, H, W, 3]; ``styles`` a list of [h, w, 3]; ``cfg.temporal_weight`` weighs
    the temporal term; ``init`` ("content" / "noise" / an array) starts frame 1 only; the
    other arguments as `video.stylize_video`. One solver epoch is compiled for the whole
    video (`run.compiled_epoch`, called with each frame's targets).
    """
    frames = as_frames(frames)
    t, h, w = frames.shape[:3]
    style_targets = make_targets(vgg, frames[0], styles, cfg, style_blend_weights,
                                 execution=execution)
    make_state = epoch_fn = None
    previous = None
    for k in range(t):
        start = time.perf_counter()
        content = frames[k]
        if k == 0:
            x0 = initial_image(init, content, seed)
            temporal = {"warped": jnp.asarray(content)[None],
                        "weights": jnp.zeros((1, h, w, 1), jnp.float32)}
            kept = 1.0
        else:
            forward, backward = frame_flows(frames, flow, k)
            c = consistency_weights(forward, backward)
            temporal = temporal_targets(previous, backward, c)
            # Disoccluded pixels (c = 0) start from the frame itself, the rest from the warp.
            x0 = temporal["weights"] * temporal["warped"] + \
                (1.0 - temporal["weights"]) * jnp.asarray(content)[None]
            kept = float(jnp.mean(c))
        targets = {**style_targets, "temporal": temporal,
                   "content": content_targets(vgg, content[None], cfg, execution)}
        if make_state is None:
            make_state = state_maker(scfg, vgg, x0, targets, cfg, execution)
        state = make_state(vgg, x0, targets)
        if epoch_fn is None:
            epoch_fn = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
        setup = time.perf_counter() - start  # flows, targets, first compile: the first epoch's
        for e, state, loss, seconds in run_epochs(epoch_fn, state, targets, 1, epochs):
            image = np.asarray(state.image)
            yield VideoEpoch(e, 0, 1, (h, w), e == epochs, state, loss, image,
                             seconds + (setup if e == 1 else 0.0), frame=k, frames=t,
                             weights=kept)
        previous = image


@dataclass
class VideoResult:
    """``frames``: the stylized video [T, H, W, 3] float32; ``losses``: each frame's final
    loss; ``epoch_losses``: each frame's losses after every epoch; ``weights``: the fraction
    of each frame's pixels the temporal term covers (c = 1); ``seconds``: each frame's wall
    time (the first includes compilation)."""

    frames: np.ndarray
    losses: list = field(default_factory=list)
    epoch_losses: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def stylize_video(vgg, frames, style, cfg: LossConfig, *, epochs: int, max_iter: int,
                  flow: FlowSource, temporal_weight: Optional[float] = None,
                  optimizer: str = "lbfgs", lr: Optional[float] = None,
                  history: Optional[int] = None, init="content", seed: int = 0,
                  style_blend_weights=None, callback: Optional[Callable] = None,
                  execution: Optional[Execution] = None) -> VideoResult:
    """Stylizes ``frames`` one after another, each held to the previous (Ruder et al. 2016).

    Args:
      vgg: the bundle from `load_vgg19`.
      frames: [T, H, W, 3] RGB in [0, 1] (or a list of same-sized [H, W, 3] frames).
      style: one image or a list, as for `stylize`.
      cfg: the loss; ``temporal_weight`` (if given) replaces ``cfg.temporal_weight``.
      epochs, max_iter: per frame, as for `stylize`.
      flow: a pair ``(forward, backward)`` of [T−1, H, W, 2] arrays (entry k−1: frame k−1
        into frame k, and frame k into frame k−1) or a function ``flow(a, b)`` giving the
        flow of frame a into frame b, e.g. ``stylejax.flow.optical_flow`` (OpenCV's DIS).
      temporal_weight: the temporal term's weight (the paper's λ; 0: frames independent but
        each started from the previous one warped).
      optimizer, lr, history, init, seed, style_blend_weights, execution: as for `stylize`
        (``init`` applies to frame 1; later frames start from the warped previous result).
      callback: ``callback(frame, epoch, image, loss)`` after every epoch (frame 0-based).
    Returns:
      a `VideoResult`.
    Raises:
      StylejaxError: bad arguments or frames, or a NaN/inf loss.
    """
    check_call(epochs, None)
    if temporal_weight is not None:
        cfg = dataclasses.replace(cfg, temporal_weight=float(temporal_weight))
    scfg = solver_config(optimizer, max_iter, lr, history)
    frames = as_frames(frames)
    _check_flows(flow, frames)
    _, styles = as_images(frames[0], style)
    check_stages(frames.shape[1:], [s.shape for s in styles], [frames.shape[1:3]], cfg.layers)
    out = np.zeros_like(frames)
    result = VideoResult(out)
    for step in video_epochs(vgg, frames, styles, cfg, scfg, epochs=epochs, flow=flow,
                             init=init, seed=seed, style_blend_weights=style_blend_weights,
                             execution=execution):
        if step.epoch == 1:
            result.epoch_losses.append([])
            result.seconds.append(0.0)
            result.weights.append(step.weights)
        result.epoch_losses[-1].append(step.loss)
        result.seconds[-1] += step.seconds
        if step.last_of_scale:
            out[step.frame] = step.image[0]
            result.losses.append(step.loss)
        if callback is not None:
            callback(step.frame, step.epoch, step.image, step.loss)
    return result

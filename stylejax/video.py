"""Video style transfer (Ruder, Dosovitskiy & Brox, *Artistic Style Transfer for Videos*,
GCPR 2016, and the IJCV 2018 version): `stylize_video` in either mode.

``sequential`` (the GCPR paper's Sec. 3; `video_epochs`): frame 1 is stylized as a still
image; each later frame k starts from its stylized predecessor warped into it (where the
flow is trusted, consistency weight c = 1; from frame k itself where c = 0, the disoccluded
pixels), and its loss gains ``temporal_weight · (1/D) Σ_j Σ c_j·(x − warp(x_{k−j}))²`` over
the long-term offsets j (`temporal`). Every frame has the same shape and the same targets'
structure (frame 1 carries all-zero weights), so the solver epoch is compiled once per
video; it goes through the run's compiled-epoch loop (`run.run_epochs`).

``multipass`` (the IJCV paper's multi-pass algorithm; `stylejax.multipass`): all frames
advance together, pass after pass, the frames of a chunk one optimisation problem (one
program compiled for the video).

The temporal pieces (warp, consistency, long-term weights, the loss) are in
`stylejax.temporal`, the flows' bookkeeping in `stylejax.clip`, optical flow itself (OpenCV)
in `stylejax.flow`; this module imports no video or flow library.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import stylejax.colour as colour
import stylejax.multipass as multipass
from stylejax.clip import FlowSource, FrameFlows, as_frames
from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.losses import LossConfig, content_targets, make_targets
from stylejax.run import (Epoch, as_images, check_call, check_stages, compiled_epoch,
                          initial_image, run_epochs, state_maker)
from stylejax.solvers import SolverConfig, solver_config

MODES = ("sequential", "multipass")


def default_mode(platform: Optional[str] = None) -> str:
    """"multipass" on a GPU or TPU (a pass over many frames fills the device), "sequential"
    on a CPU (see docs/video.md for the measured comparison)."""
    return "sequential" if (platform or jax.default_backend()) == "cpu" else "multipass"


@dataclass
class VideoEpoch(Epoch):
    """An `Epoch` of frame ``frame`` (0-based) of ``frames``; ``epoch`` counts from 1 within
    the frame, and ``last_of_scale`` marks the frame's last epoch (``image`` is then the
    frame's result). ``weights``: the fraction of the frame's pixels held to a reference
    frame (Σ_j c_j; 0 for frame 1)."""

    frame: int = 0
    frames: int = 1
    weights: float = 1.0


def video_epochs(vgg, frames, styles, cfg: LossConfig, scfg: SolverConfig, *, epochs: int,
                 flows: FrameFlows, init="content", seed: int = 0, style_blend_weights=None,
                 execution: Optional[Execution] = None, resume: Optional[np.ndarray] = None,
                 first_epochs: Optional[int] = None) -> Iterator[VideoEpoch]:
    """The sequential video loop: yields a `VideoEpoch` after every epoch of every frame.

    ``frames`` [T, H, W, 3]; ``styles`` a list of [h, w, 3]; ``flows`` the clip's
    `FrameFlows` (its offsets are the long-term ones); ``cfg.temporal_weight`` weighs the
    temporal term; ``init`` ("content" / "noise" / an array) starts frame 1 only; ``resume``
    [K, H, W, 3]: the first K frames' results, already done (frames K+1.. are stylized);
    ``first_epochs``: frame 1's epochs (default ``epochs``; the paper gives frame 1 twice the
    iterations, as it starts from scratch); the other arguments as `video.stylize_video`. One solver epoch is compiled for the
    whole video (`run.compiled_epoch`, called with each frame's targets).
    """
    frames = as_frames(frames)
    t, h, w = frames.shape[:3]
    done = 0 if resume is None else len(resume)
    results = np.zeros_like(frames)
    if done:
        results[:done] = resume
    # The flows are computed on the worker thread, in the order the frames need them.
    flows.prefetch(pair for k in range(max(done, 1), t) for pair in flows.pairs(k, 1))
    style_targets = make_targets(vgg, frames[0], styles, cfg, style_blend_weights,
                                 execution=execution)
    make_state = epoch_fn = None
    for k in range(done, t):
        start = time.perf_counter()
        content = frames[k]
        temporal = _unheld(content, flows)
        if k:
            held = flows.references(results, k, 1, keep=False)  # each flow is used once
            temporal = {"warped": held["warped"], "weights": held["weights"]}
        if k == 0:
            x0 = initial_image(init, content, seed)
        else:
            # Disoccluded pixels (c = 0) start from the frame itself, the rest from the
            # closest reference warped.
            c, warped = temporal["weights"][:1], temporal["warped"][:1]
            x0 = c * warped + (1.0 - c) * jnp.asarray(content)[None]
        kept = float(jnp.mean(jnp.sum(temporal["weights"], axis=0)))
        targets = {**style_targets, "temporal": temporal,
                   "content": content_targets(vgg, content[None], cfg, execution)}
        if make_state is None:
            make_state = state_maker(scfg, vgg, x0, targets, cfg, execution)
        state = make_state(vgg, x0, targets)
        if epoch_fn is None:
            epoch_fn = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
        setup = time.perf_counter() - start  # flows, targets, first compile: the first epoch's
        last = (first_epochs or epochs) if k == 0 else epochs
        for e, state, loss, seconds in run_epochs(epoch_fn, state, targets, 1, last):
            image = np.asarray(state.image)
            yield VideoEpoch(e, 0, 1, (h, w), e == last, state, loss, image,
                             seconds + (setup if e == 1 else 0.0), frame=k, frames=t,
                             weights=kept)
        results[k] = image[0]


def _unheld(frame, flows: FrameFlows) -> dict:
    """A ``"temporal"`` entry that holds nothing (all weights 0), shaped as a held frame's."""
    j = len(flows.offsets)
    return {"warped": jnp.broadcast_to(jnp.asarray(frame)[None], (j,) + frame.shape),
            "weights": jnp.zeros((j,) + frame.shape[:2] + (1,), jnp.float32)}


@dataclass
class VideoResult:
    """``frames``: the stylized video [T, H, W, 3] float32; ``losses``: each frame's final
    loss; ``epoch_losses``: each frame's losses after every epoch (sequential) or pass
    (multipass); ``weights``: the fraction of each frame's pixels held to a reference
    (sequential); ``seconds``: each frame's (sequential) or pass's (multipass) wall time, the
    first including compilation; ``flow_seconds``: time spent computing optical flow, and
    ``flow_waited``: the part of it the stylization did not hide."""

    frames: np.ndarray
    losses: list = field(default_factory=list)
    epoch_losses: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    flow_seconds: float = 0.0
    flow_waited: float = 0.0


def colour_clip(preserve_colors: Optional[str], frames, styles) -> tuple:
    """(frames, styles) as VGG sees them for a clip (Gatys et al. 2017, Sec. 5; as
    `run.colour_inputs` for a still, the whole clip [T, H, W, 3] standing for the content):
    unchanged; each frame's grey luminance and the styles' luminance matched to the clip's
    ("luminance"); or the styles' colour mean and covariance matched to the clip's
    ("histogram"). One set of style statistics for the whole clip keeps frames consistent."""
    if preserve_colors == "luminance":
        return (np.asarray(colour.luminance_image(frames)),
                [np.asarray(colour.match_luminance(s, frames)) for s in styles])
    if preserve_colors == "histogram":
        return frames, [np.asarray(colour.match_color(s, frames)) for s in styles]
    if preserve_colors is not None:
        raise StylejaxError(f"Unknown colour preservation {preserve_colors!r}: use luminance, "
                            "histogram or None.")
    return frames, styles


def shown_frames(preserve_colors: Optional[str], images, frames) -> np.ndarray:
    """The frames to show and save for the optimised ``images`` [..., H, W, 3]: in luminance
    mode their luminance with ``frames``' (the originals', same shape) chroma."""
    if preserve_colors == "luminance":
        return np.asarray(colour.restore_chroma(images, frames))
    return np.asarray(images)


def stylize_video(vgg, frames, style, cfg: LossConfig, *, max_iter: int, flow: FlowSource,
                  epochs: int = 1, first_epochs: Optional[int] = None,
                  mode: Optional[str] = None, preserve_colors: Optional[str] = None,
                  temporal_weight: Optional[float] = None, long_term: Sequence[int] = (1,),
                  passes: int = multipass.PASSES, temporal_from: Optional[int] = None,
                  blend: float = 1.0, chunk: Optional[int] = None, shard: str = "auto",
                  devices=None, optimizer: str = "lbfgs", lr: Optional[float] = None,
                  history: Optional[int] = None, init="content", seed: int = 0,
                  style_blend_weights=None, callback: Optional[Callable] = None,
                  execution: Optional[Execution] = None) -> VideoResult:
    """Stylizes ``frames`` with each frame held to its neighbours (Ruder et al. 2016/2018).

    Args:
      vgg: the bundle from `load_vgg19`.
      frames: [T, H, W, 3] RGB in [0, 1] (or a list of same-sized [H, W, 3] frames).
      style: one image or a list, as for `stylize`.
      cfg: the loss; ``temporal_weight`` (if given) replaces ``cfg.temporal_weight`` (the
        paper's λ; 0: no temporal term, though frames still start from their neighbours).
      max_iter: solver iterations per epoch (sequential) or per pass (multipass).
      flow: a `clip.FlowSource`: a function ``flow(a, b)`` giving the flow of image a into
        image b, e.g. ``stylejax.flow.flow_function()`` (OpenCV's DIS), computed ahead on a
        worker thread; or arrays (``(forward, backward)`` [T−1, H, W, 2], entry k−1: frame
        k−1 into frame k, and frame k into frame k−1; or ``{offset: (forward, backward)}``).
      epochs: epochs per frame (sequential only); first_epochs: frame 1's (default
        ``epochs``; the paper's 2000 against 1000 iterations is ``first_epochs=2 * epochs``).
      mode: "sequential", "multipass" or None (`default_mode`: multipass on a GPU/TPU).
      long_term: the offsets j of the frames each frame is held to (1: the neighbour only;
        the paper's long-term choice is 1, 2, 4).
      passes, temporal_from, blend, chunk, shard, devices: the multi-pass settings
        (`multipass.multipass`).
      optimizer, lr, history, init, seed, style_blend_weights, execution: as for `stylize`
        (``init`` starts frame 1 (sequential) or pass 1 (multipass)).
      preserve_colors: None, "luminance" or "histogram", as for `stylize`, with the whole
        clip's statistics (`colour_clip`); the flow is computed on the original frames.
      callback: ``callback(frame, step, image, loss)`` after every epoch of a frame
        (sequential; step = epoch) or every frame of a pass (multipass; step = pass);
        frame 0-based, image [1, H, W, 3].
    Returns:
      a `VideoResult`.
    Raises:
      StylejaxError: bad arguments or frames, or a NaN/inf loss.
    """
    check_call(epochs, None)
    if first_epochs is not None:
        check_call(first_epochs, None)
    mode = mode or default_mode()
    if mode not in MODES:
        raise StylejaxError(f"Unknown video mode {mode!r}: use {' or '.join(MODES)}.")
    if temporal_weight is not None:
        cfg = dataclasses.replace(cfg, temporal_weight=float(temporal_weight))
    scfg = solver_config(optimizer, max_iter, lr, history)
    originals = as_frames(frames)
    _, styles = as_images(originals[0], style)
    check_stages(originals.shape[1:], [s.shape for s in styles], [originals.shape[1:3]],
                 cfg.layers)
    frames, styles = colour_clip(preserve_colors, originals, styles)
    flows = FrameFlows(originals, flow, long_term)
    result = VideoResult(np.zeros_like(frames))
    shown = lambda k, image: shown_frames(  # noqa: E731
        preserve_colors, image, np.broadcast_to(originals[k], np.shape(image)))
    try:
        if mode == "sequential":
            _sequential(result, video_epochs(
                vgg, frames, styles, cfg, scfg, epochs=epochs, flows=flows, init=init,
                seed=seed, style_blend_weights=style_blend_weights, execution=execution,
                first_epochs=first_epochs),
                callback, shown)
        else:
            _passes(result, multipass.multipass(
                vgg, frames, styles, cfg, scfg, passes=passes, flows=flows,
                temporal_from=temporal_from, blend=blend, init=init, seed=seed,
                style_blend_weights=style_blend_weights, execution=execution, chunk=chunk,
                shard=shard, devices=devices), callback, shown)
    finally:
        flows.close()
    result.flow_seconds, result.flow_waited = flows.seconds, flows.waited
    return result


def _sequential(result: VideoResult, steps, callback, shown) -> None:
    for step in steps:
        image = shown(step.frame, step.image)
        if step.epoch == 1:
            result.epoch_losses.append([])
            result.seconds.append(0.0)
            result.weights.append(step.weights)
        result.epoch_losses[-1].append(step.loss)
        result.seconds[-1] += step.seconds
        if step.last_of_scale:
            result.frames[step.frame] = image[0]
            result.losses.append(step.loss)
        if callback is not None:
            callback(step.frame, step.epoch, image, step.loss)


def _passes(result: VideoResult, steps, callback, shown) -> None:
    t = len(result.frames)
    result.epoch_losses = [[] for _ in range(t)]
    number = None
    for step in steps:
        if step.number != number:  # a backward pass starts with the last chunk
            number = step.number
            result.seconds.append(0.0)
        result.seconds[-1] += step.seconds
        for k in step.frames:
            result.epoch_losses[k].append(float(step.losses[k]))
            if callback is not None:
                callback(k, step.number, shown(k, step.images[k][None]), float(step.losses[k]))
        if step.last_of_pass:
            result.frames[:] = [shown(k, image) for k, image in enumerate(step.images)]
    result.losses = [losses[-1] for losses in result.epoch_losses]

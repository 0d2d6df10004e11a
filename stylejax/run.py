"""THE epoch loop: `stylize_epochs` yields after every epoch; `stylize` and the command line
(snapshots, checkpoints, the loss log, the progress bar) consume it.

Coarse to fine: each scale (``scales``) gets its own targets and a solver compiled once; the
solver state is carried across the epochs of a scale, and each scale starts from the
previous one's image upsampled. The loss and the solver it drives are pure and compiled
once per scale; this module holds the loop around them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import stylejax.colour as colour
import stylejax.images as imageio
from stylejax.cpu.hostmem import compile_released
from stylejax.cpu.kernels import prepare_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.layers import min_size
from stylejax.losses import LossConfig, make_targets
from stylejax.solvers import (SolverConfig, SolverState, fresh_state, init_state, run_epoch,
                              solver_config)

@dataclass
class StylizeResult:
    """``image``: the final [1, H, W, 3] float32 image; ``losses``: the loss after each epoch;
    ``seconds``: wall time of each epoch (the first of each scale includes compilation);
    ``sizes``: the (H, W) each epoch ran at (they change only with ``scales``)."""

    image: np.ndarray
    losses: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    sizes: list = field(default_factory=list)


def initial_image(init, content, seed: int = 0) -> jax.Array:
    """The starting image [1, H, W, 3]: "content", "noise" (uniform white noise in [0, 1],
    as Gatys et al.; ``seed`` picks it) or an array resized to the content's size."""
    content = jnp.asarray(content, jnp.float32).reshape((1,) + tuple(content.shape[-3:]))
    if isinstance(init, str) and init == "content":
        return content
    if isinstance(init, str) and init == "noise":
        return jax.random.uniform(jax.random.key(seed), content.shape, jnp.float32)
    if isinstance(init, str):
        raise StylejaxError(f"Unknown init {init!r}: use content, noise, or an image path.")
    a = np.asarray(init, np.float32).reshape(tuple(np.shape(init)[-3:]))
    return jnp.asarray(imageio.resize(a, *content.shape[1:3]))[None]


PRESERVE_COLORS = (None,) + colour.MODES


@dataclass(frozen=True)
class Stage:
    """The inputs of one coarse-to-fine scale: ``content`` [h, w, 3] (also what colours are
    restored from), ``styles`` [[h_i, w_i, 3]], optional ``content_masks`` [R, h, w] and
    ``style_masks`` [[h_i, w_i] or None]."""

    content: np.ndarray
    styles: list
    content_masks: Optional[np.ndarray] = None
    style_masks: Optional[list] = None


def stage_sizes(height: int, width: int, scales=None, edge: str = "long") -> list:
    """(h, w) of each coarse-to-fine scale: ``scales`` px on the ``edge`` ("long"/"short")
    side, or (h, w) pairs as given; None: one scale at (height, width)."""
    if not scales:
        return [(height, width)]
    return [tuple(int(v) for v in s) if isinstance(s, (tuple, list))
            else imageio.fit_size(height, width, int(s), edge) for s in scales]


def _scaled_style_size(style_shape, content_size, factor, style_scale):
    if style_scale is None:  # keep the style's size relative to the content as given
        return max(1, round(style_shape[0] * factor)), max(1, round(style_shape[1] * factor))
    return imageio.fit_size(*style_shape[:2], max(1, round(max(content_size) * style_scale)),
                            "long")


def stage_inputs(content, styles, size, content_masks=None, style_masks=None,
                 style_scale=None) -> Stage:
    """``content`` [H, W, 3] resized to ``size`` (h, w), and everything else to match.

    Each style is scaled by the content's factor (``style_scale`` None) or to ``style_scale``
    times the content's long side; masks follow their images (bilinear).
    """
    h, w = size
    factor = max(h, w) / max(content.shape[:2])
    resized, masks = [], []
    for i, s in enumerate(styles):
        sh, sw = _scaled_style_size(s.shape, size, factor, style_scale)
        resized.append(imageio.resize(s, sh, sw))
        m = style_masks[i] if style_masks is not None else None
        masks.append(None if m is None else imageio.resize_mask(m, sh, sw))
    cm = None if content_masks is None else np.stack(
        [imageio.resize_mask(m, h, w) for m in content_masks])
    return Stage(imageio.resize(content, h, w), resized, cm,
                 masks if style_masks is not None else None)


def check_stages(content_shape, style_shapes, sizes, layers, style_scale=None, hint="") -> None:
    """Raises StylejaxError if any scale makes the content or a style image too small for
    ``layers``."""
    need = min_size(layers)
    for k, size in enumerate(sizes):
        factor = max(size) / max(content_shape[:2])
        shapes = [("content", size)] + [
            ("style", _scaled_style_size(s, size, factor, style_scale)) for s in style_shapes]
        for name, (h, w) in shapes:
            if min(h, w) < need:
                where = f"at scale {k + 1} of {len(sizes)} " if len(sizes) > 1 else ""
                raise StylejaxError(
                    f"The {name} image is {w}x{h} px {where}after resizing, too small for the "
                    f"chosen layers: they need at least {need} px on each side{hint}.")


def colour_inputs(preserve_colors, content, styles):
    """(content, styles) as VGG sees them: unchanged; grey luminance with the style's
    luminance matched to the content's ("luminance"); or each style's colour mean and
    covariance matched to the content's ("histogram"). Gatys et al. 2017, Sec. 5."""
    if preserve_colors == "luminance":
        return (np.asarray(colour.luminance_image(content)),
                [np.asarray(colour.match_luminance(s, content)) for s in styles])
    if preserve_colors == "histogram":
        return content, [np.asarray(colour.match_color(s, content)) for s in styles]
    return content, styles


def shown_image(preserve_colors, image, content) -> np.ndarray:
    """The image to show and save for the optimised ``image`` [1, h, w, 3]: in luminance mode
    its luminance with ``content``'s [h, w, 3] chroma; otherwise ``image`` itself."""
    if preserve_colors == "luminance":
        return np.asarray(colour.restore_chroma(image, jnp.asarray(content)[None]))
    return np.asarray(image)


def stage_state(vgg, stage: Stage, cfg: LossConfig, scfg: SolverConfig, init, seed: int = 0,
                preserve_colors=None, style_blend_weights=None,
                execution: Optional[Execution] = None):
    """Targets and the solver's initial state for one scale; ``init`` as in `initial_image`
    (the previous scale's image, for every scale but the first)."""
    content, styles = colour_inputs(preserve_colors, stage.content, stage.styles)
    targets = make_targets(vgg, content, styles, cfg, style_blend_weights,
                           stage.content_masks, stage.style_masks, execution)
    x0 = initial_image(init, content, seed)
    if preserve_colors == "luminance":
        x0 = colour.luminance_image(x0)
    return targets, state_maker(scfg, vgg, x0, targets, cfg, execution)(vgg, x0, targets)


def state_maker(scfg: SolverConfig, vgg, x0, targets, cfg: LossConfig,
                execution: Optional[Execution] = None):
    """``make(vgg, x, targets) -> SolverState`` for images and targets shaped as ``x0`` [1, H,
    W, 3] and ``targets``: for L-BFGS `solvers.fresh_state` (the first epoch evaluates it; no
    evaluation to compile), else `solvers.init_state`, compiled ahead here with the
    compiler's freed heap released (`cpu.hostmem.compile_released`) before it first runs."""
    if scfg.kind == "lbfgs":
        return lambda vgg, x, targets: fresh_state(scfg, x)
    compiled = compile_released(init_state, scfg, vgg, x0, targets, cfg, execution)
    return lambda vgg, x, targets: compiled(vgg, x, targets)


def check_masks(content, styles, content_masks, style_masks) -> None:
    """Raises StylejaxError unless the masks fit ``content`` [H, W, 3] and ``styles``."""
    if content_masks is not None and np.shape(content_masks) != (len(styles),) + content.shape[:2]:
        raise StylejaxError(f"content_masks must be [R, H, W] = {[len(styles), *content.shape[:2]]}"
                            f" (one mask per style, the content's size), got "
                            f"{list(np.shape(content_masks))}.")
    if style_masks is not None:
        if len(style_masks) != len(styles):
            raise StylejaxError(f"Give one style mask (or None) per style image: "
                                f"{len(style_masks)} for {len(styles)}.")
        for i, (m, s) in enumerate(zip(style_masks, styles)):
            if m is not None and np.shape(m) != s.shape[:2]:
                raise StylejaxError(f"Style mask {i + 1} is {list(np.shape(m))} but its style "
                                    f"image is {list(s.shape[:2])}: give it the image's size.")


def check_call(epochs: int, preserve_colors) -> None:
    """Raises StylejaxError for a bad epoch count or colour mode."""
    if epochs < 1:
        raise StylejaxError(f"The number of epochs must be >= 1, got {epochs}.")
    if preserve_colors not in PRESERVE_COLORS:
        raise StylejaxError(f"Unknown colour preservation {preserve_colors!r}: use luminance, "
                            "histogram or None.")


def as_images(content, style):
    """(content [H, W, 3], [style [h, w, 3], ...]) float32 from one image or a list."""
    content = np.asarray(content, np.float32).reshape(np.shape(content)[-3:])
    styles = [np.asarray(s, np.float32).reshape(np.shape(s)[-3:])
              for s in (style if isinstance(style, (list, tuple)) else [style])]
    return content, styles


def compiled_epoch(vgg, targets, cfg: LossConfig, scfg: SolverConfig, state,
                   execution: Optional[Execution] = None):
    """``epoch(state, targets=targets) -> state``: `solvers.run_epoch` compiled ahead for the
    shapes of ``state`` and ``targets`` (other targets of those shapes may be given per call,
    as tiles do), the compiler's freed heap released before it first runs. The kernels'
    prepared forms (`cpu.kernels.prepare_kernels`) are made here, once for all the calls."""
    vgg = prepare_kernels(vgg, cfg.layers, execution, state.image.shape)
    compiled = compile_released(run_epoch, state, vgg, targets, cfg=cfg, scfg=scfg,
                                execution=execution)
    return lambda st, tg=targets: compiled(st, vgg, tg)


def check_finite(epoch: int, loss: float) -> None:
    """Raises the one-sentence StylejaxError for a NaN or infinite loss."""
    if not math.isfinite(loss):
        raise StylejaxError(
            f"The loss became {loss} in epoch {epoch}; stopped, keeping the last good "
            "image: lower --lr or the loss weights, or use --optimizer optax-lbfgs.")


def run_epochs(epoch_fn, state, targets, first: int, last: int, offset: int = 0):
    """Epochs ``first..last`` of ``epoch_fn`` (`compiled_epoch`'s) from ``state`` against
    ``targets``; yields ``(epoch, state, loss, seconds)`` after each, reading the loss once
    (the one host sync per epoch). Raises StylejaxError for a NaN/inf loss, naming epoch
    ``offset + epoch``."""
    clock = time.perf_counter()
    for e in range(first, last + 1):
        state = epoch_fn(state, targets)
        loss = float(state.value)
        check_finite(offset + e, loss)
        yield e, state, loss, time.perf_counter() - clock
        clock = time.perf_counter()


@dataclass
class Epoch:
    """What `stylize_epochs` yields after each epoch.

    ``epoch``: counted from 1 across scales; ``scale``: the scale's index (0-based) of
    ``scales`` scales, ``size`` its (h, w); ``last_of_scale``: this epoch ends its scale;
    ``state``: the solver state (read or save it before asking for the next epoch, which
    donates it; None for tiled runs); ``loss``: float; ``image``: numpy [1, h, w, 3], colours
    restored; ``seconds``: wall time of the epoch (the first of a scale includes compiling).
    """

    epoch: int
    scale: int
    scales: int
    size: tuple
    last_of_scale: bool
    state: Optional[SolverState]
    loss: float
    image: np.ndarray
    seconds: float


def stylize_epochs(vgg, content, styles, cfg: LossConfig, scfg: SolverConfig, *,
                   epochs: int, init="content", seed: int = 0, style_blend_weights=None,
                   preserve_colors: Optional[str] = None, scales=None, edge: str = "long",
                   style_scale: Optional[float] = None, content_masks=None, style_masks=None,
                   execution: Optional[Execution] = None,
                   resume: Optional[tuple] = None) -> Iterator[Epoch]:
    """THE epoch loop: yields an `Epoch` after each epoch of each scale.

    Arguments as `stylize` (``content`` [H, W, 3], ``styles`` a list of [h, w, 3]; ``scfg``
    the solver), plus ``edge``: which side ``scales`` sizes ("long" or "short"), and
    ``resume``: ``(epoch, state_dict)`` of a finished epoch (a saved
    ``flax.serialization.to_state_dict(Epoch.state)``) to continue from; the epochs after it
    are yielded. Raises StylejaxError on a NaN/inf loss (after the last good epoch).
    """
    sizes = stage_sizes(*content.shape[:2], scales, edge)
    per, n = epochs, len(sizes)
    done, k0, start, raw = 0, 0, init, None
    if resume is not None:
        done, raw = resume
        k0 = min(max(done - 1, 0) // per, n - 1)
        if done == (k0 + 1) * per and k0 + 1 < n:  # it ended a scale: start the next from it
            k0, start, raw = k0 + 1, np.asarray(raw["image"]), None
    for k in range(k0, n):
        if done >= (k + 1) * per:
            continue
        stage = stage_inputs(content, styles, sizes[k], content_masks, style_masks,
                             style_scale)
        targets, state = stage_state(vgg, stage, cfg, scfg, start, seed, preserve_colors,
                                     style_blend_weights, execution)
        if raw is not None:
            state, raw = serialization.from_state_dict(state, raw), None
        epoch_fn = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
        for e, state, loss, seconds in run_epochs(epoch_fn, state, targets,
                                                  max(done - k * per, 0) + 1, per, k * per):
            image = shown_image(preserve_colors, np.asarray(state.image), stage.content)
            yield Epoch(k * per + e, k, n, tuple(sizes[k]), e == per, state, loss, image,
                        seconds)
        start = np.asarray(state.image)


def stylize(vgg, content, style, cfg: LossConfig, *, epochs: int, max_iter: int,
            optimizer: str = "lbfgs", lr: Optional[float] = None, init="content",
            seed: int = 0, callback: Optional[Callable] = None, history: Optional[int] = None,
            style_blend_weights=None, preserve_colors: Optional[str] = None, scales=None,
            style_scale: Optional[float] = None, content_masks=None, style_masks=None,
            precondition=None, execution: Optional[Execution] = None) -> StylizeResult:
    """Optimizes an image so its VGG-19 content matches ``content`` and its style ``style``.

    Args:
      vgg: the bundle from `load_vgg19`.
      content: [H, W, 3] or [1, H, W, 3] RGB in [0, 1]; the output has its size (or the last
        of ``scales``).
      style: one image or a list (any sizes), blended by ``style_blend_weights`` (one weight
        >= 0 per style, normalised to sum 1).
      cfg: the loss (`LossConfig` or `preset_config(...)`).
      epochs: compiled solver calls (per scale); max_iter: solver iterations in each.
      optimizer, lr, history, precondition: see `SolverConfig` (None: its defaults;
        precondition "auto" or a wavelength in px opts in to the smoothed parametrization).
      init: "content", "noise" (white noise from ``seed``) or an image array (any size).
      callback: ``callback(epoch, image, loss)`` after every epoch (epoch from 1, counted
        across scales; image a numpy [1, h, w, 3] copy, colours restored; loss a float).
        For the solver state and the scale too, iterate `stylize_epochs` instead.
      preserve_colors: None, "luminance" (transfer on YIQ luminance, keep the content's
        chroma) or "histogram" (match each style's colour mean and covariance to the
        content's first); Gatys et al. 2017, Sec. 5.
      scales: coarse to fine: long-side sizes in px (or (h, w) pairs), optimised in turn,
        each result upsampled as the next one's start; None: one run at the content's size.
      style_scale: None keeps each style's size relative to the content as given (at every
        scale); a number sizes each style's long side to that times the content's.
      content_masks: [R, H, W] in [0, 1], one per style: region r takes style r.
      style_masks: one [h, w] mask (or None) per style: where in that style image its
        statistics come from.
      execution: convolution algorithm and activation dtype (`Execution`; None: default).
    Raises:
      StylejaxError: bad arguments, or a NaN/inf loss (the last good image was already
        passed to ``callback``).
    """
    check_call(epochs, preserve_colors)
    scfg = solver_config(optimizer, max_iter, lr, history, precondition)
    content, styles = as_images(content, style)
    check_masks(content, styles, content_masks, style_masks)
    sizes = stage_sizes(*content.shape[:2], scales)
    check_stages(content.shape, [s.shape for s in styles], sizes, cfg.layers, style_scale)
    result = StylizeResult(image=None)
    for step in stylize_epochs(vgg, content, styles, cfg, scfg, epochs=epochs, init=init,
                               seed=seed, style_blend_weights=style_blend_weights,
                               preserve_colors=preserve_colors, scales=scales,
                               style_scale=style_scale, content_masks=content_masks,
                               style_masks=style_masks, execution=execution):
        result.image = step.image
        result.losses.append(step.loss)
        result.seconds.append(step.seconds)
        result.sizes.append(step.size)
        if callback is not None:
            callback(step.epoch, step.image, step.loss)
    return result

"""The epoch loop: `stylize()` as a library call, and the `stylize.py` command line.

This is the only module with a loop over epochs, files, the clock and a progress bar; the
loss and the solver it drives are pure and compiled once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from stylejax import colour
from stylejax import images as imageio
from stylejax.errors import StylejaxError
from stylejax.cpu.hostmem import compile_released
from stylejax.losses import PRESETS, LossConfig, make_targets, network_warning, preset_config
from stylejax.vgg import CONVS, min_size, prepare_kernels
from stylejax.solvers import OPTIMIZERS, SolverConfig, fresh_state, init_state, run_epoch
from stylejax.weights import atomic_write_bytes, load_vgg19

# On CPU, XLA cannot reuse donated buffers and says so on every call; donation still pays
# on GPU/TPU, where the image and the L-BFGS history are replaced each epoch.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


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
                preserve_colors=None, style_blend_weights=None):
    """Targets and the solver's initial state for one scale; ``init`` as in `initial_image`
    (the previous scale's image, for every scale but the first)."""
    content, styles = colour_inputs(preserve_colors, stage.content, stage.styles)
    targets = make_targets(vgg, content, styles, cfg, style_blend_weights,
                           stage.content_masks, stage.style_masks)
    x0 = initial_image(init, content, seed)
    if preserve_colors == "luminance":
        x0 = colour.luminance_image(x0)
    return targets, initial_state(scfg, vgg, x0, targets, cfg)


def initial_state(scfg: SolverConfig, vgg, x0, targets, cfg: LossConfig):
    """The solver's state at ``x0`` [1, H, W, 3] (`state_maker`'s, made once)."""
    return state_maker(scfg, vgg, x0, targets, cfg)(vgg, x0, targets)


def state_maker(scfg: SolverConfig, vgg, x0, targets, cfg: LossConfig):
    """``make(vgg, x, targets) -> SolverState`` for images and targets shaped as ``x0`` [1, H,
    W, 3] and ``targets``: for L-BFGS `solvers.fresh_state` (the first epoch evaluates it; no
    evaluation to compile), else `solvers.init_state`, compiled ahead here with the
    compiler's freed heap released (`hostmem.compile_released`) before it first runs."""
    if scfg.kind == "lbfgs":
        return lambda vgg, x, targets: fresh_state(scfg, x)
    return compile_released(init_state, scfg, vgg, x0, targets, cfg)


def _check_masks(content, styles, content_masks, style_masks):
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


def _check_preserve(preserve_colors):
    if preserve_colors not in PRESERVE_COLORS:
        raise StylejaxError(f"Unknown colour preservation {preserve_colors!r}: use luminance, "
                            "histogram or None.")


def call_inputs(epochs, preserve_colors, optimizer, max_iter, lr, history, content, style,
                precondition=None):
    """Validates a library call's settings; returns (SolverConfig, content [H, W, 3],
    list of style images [h, w, 3]), all float32."""
    if epochs < 1:
        raise StylejaxError(f"The number of epochs must be >= 1, got {epochs}.")
    _check_preserve(preserve_colors)
    scfg = SolverConfig(optimizer, iterations=max_iter, lr=lr, history=history,
                        precondition=precondition)
    content = np.asarray(content, np.float32).reshape(np.shape(content)[-3:])
    styles = [np.asarray(s, np.float32).reshape(np.shape(s)[-3:])
              for s in (style if isinstance(style, (list, tuple)) else [style])]
    return scfg, content, styles


def run_epochs(vgg, targets, cfg: LossConfig, scfg: SolverConfig, state, last: int,
               first: int = 1):
    """Runs epochs ``first..last`` from ``state``; yields ``(epoch, state, loss)`` after each.

    The consumer may read or save ``state`` before asking for the next epoch (which donates
    it). Raises StylejaxError when the loss stops being finite. The epoch is compiled before
    the first one runs (`hostmem.compile_released`), so the compiler's scratch memory is not
    part of the run's peak.
    """
    if first > last:  # e.g. --resume of a finished run: nothing to compile
        return
    epoch_fn = compiled_epoch(vgg, targets, cfg, scfg, state)
    for epoch in range(first, last + 1):
        state = epoch_fn(state)
        loss = float(state.value)  # the one host sync per epoch
        check_finite(epoch, loss)
        yield epoch, state, loss


def compiled_epoch(vgg, targets, cfg: LossConfig, scfg: SolverConfig, state):
    """``epoch(state, targets=targets) -> state``: `solvers.run_epoch` compiled ahead for the
    shapes of ``state`` and ``targets`` (other targets of those shapes may be given per call,
    as tiles do), the compiler's freed heap released before it first runs
    (`hostmem.compile_released`). The kernels' prepared forms (`vgg.prepare_kernels`) are
    made here, once for all the calls, not at the start of each (192 px: 45 ms a call, a
    fifth of an iteration)."""
    vgg = prepare_kernels(vgg, cfg.layers, cfg.conv, cfg.dtype, state.image.shape)
    compiled = compile_released(run_epoch, state, vgg, targets, cfg=cfg, scfg=scfg)
    return lambda st, tg=targets: compiled(st, vgg, tg)


def check_finite(epoch: int, loss: float) -> None:
    """Raises the one-sentence StylejaxError for a NaN or infinite loss."""
    if not math.isfinite(loss):
        raise StylejaxError(
            f"The loss became {loss} in epoch {epoch}; stopped, keeping the last good "
            "image: lower --lr or the loss weights, or use --optimizer optax-lbfgs.")


def stylize(vgg, content, style, cfg: LossConfig, *, epochs: int, max_iter: int,
            optimizer: str = "lbfgs", lr: float = 0.0, init="content", seed: int = 0,
            callback: Optional[Callable] = None, history: int = 100,
            style_blend_weights=None, preserve_colors: Optional[str] = None, scales=None,
            style_scale: Optional[float] = None, content_masks=None,
            style_masks=None, precondition: Optional[float] = None) -> StylizeResult:
    """Optimizes an image so its VGG-19 content matches ``content`` and its style ``style``.

    Args:
      vgg: the bundle from `load_vgg19`.
      content: [H, W, 3] or [1, H, W, 3] RGB in [0, 1]; the output has its size (or the last
        of ``scales``).
      style: one image or a list (any sizes), blended by ``style_blend_weights`` (one weight
        >= 0 per style, normalised to sum 1).
      cfg: the loss (`LossConfig` or `preset_config(...)`).
      epochs: compiled solver calls (per scale); max_iter: solver iterations in each.
      optimizer, lr, history, precondition: see `SolverConfig`.
      init: "content", "noise" (white noise from ``seed``) or an image array (any size).
      callback: ``callback(epoch, image, loss)`` after every epoch (epoch from 1, counted
        across scales; image a numpy [1, h, w, 3] copy, colours restored; loss a float).
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
    Raises:
      StylejaxError: bad arguments, or a NaN/inf loss (the last good image was already
        passed to ``callback``).
    """
    scfg, content, styles = call_inputs(epochs, preserve_colors, optimizer, max_iter, lr,
                                        history, content, style, precondition)
    _check_masks(content, styles, content_masks, style_masks)
    sizes = stage_sizes(*content.shape[:2], scales)
    check_stages(content.shape, [s.shape for s in styles], sizes, cfg.layers, style_scale)
    result, image, done = StylizeResult(image=None), init, 0
    for size in sizes:
        stage = stage_inputs(content, styles, size, content_masks, style_masks, style_scale)
        targets, state = stage_state(vgg, stage, cfg, scfg, image, seed, preserve_colors,
                                     style_blend_weights)
        if result.image is None:
            result.image = shown_image(preserve_colors, state.image, stage.content)
        start = time.perf_counter()
        for _, state, loss in run_epochs(vgg, targets, cfg, scfg, state, epochs):
            done += 1
            result.seconds.append(time.perf_counter() - start)
            image = np.asarray(state.image)
            result.image = shown_image(preserve_colors, image, stage.content)
            result.losses.append(loss)
            result.sizes.append(tuple(size))
            if callback is not None:
                callback(done, result.image, loss)
            start = time.perf_counter()
    return result


# ---------------------------------------------------------------- command line


def _layers(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers, got {text!r}")


def _flat(groups):
    """nargs="+" of comma lists ("3 7" or "3,7") -> one tuple, or None."""
    return None if groups is None else tuple(v for g in groups for v in g)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, exit 2, as argparse does, without the usage dump
        raise StylejaxError(f"{message} (see --help).")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize.py", description=(
        "Neural style transfer (Gatys et al. 2016): repaint CONTENT in the style of STYLE. "
        "A preset sets the defaults; explicit flags override it."))
    p.add_argument("content", nargs="?", help="content image (any format Pillow reads); "
                                               "or a folder of them with --content-dir")
    p.add_argument("style", nargs="*", help="style image(s); or give them with --style")
    p.add_argument("--style", dest="style_images", nargs="+", metavar="STYLE",
                   help="style image(s), instead of after CONTENT")
    p.add_argument("--style-blend-weights", type=_floats, nargs="+", metavar="W",
                   help="one weight per style image, e.g. 3 7 (normalised to sum 1; default "
                        "equal); with --content-mask, the weight of each style's region")
    p.add_argument("--preserve-colors", choices=("none",) + colour.MODES, default="none",
                   help="luminance: transfer on YIQ luminance and keep the content's chroma; "
                        "histogram: match each style's colour mean and covariance to the "
                        "content's first (Gatys et al. 2017)")
    p.add_argument("--scales", type=_ints, nargs="+", metavar="PX",
                   help="coarse to fine, e.g. 256,512,1024: optimise at each size in turn "
                        "(--epochs each), each result upsampled as the next start; the last "
                        "is the output size (replaces --size)")
    p.add_argument("--content-mask", nargs="+", metavar="PATH",
                   help="regions of the content: one grey label image (black = style 1, "
                        "white = the last, evenly spaced greys between) or one mask per "
                        "style (white = 1); region i takes style i")
    p.add_argument("--style-masks", nargs="+", metavar="PATH",
                   help="one mask per style image (white = use this part; 'none' = all of "
                        "it): where each style is sampled")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--weights", help="converted VGG-19 (default: $STYLEJAX_WEIGHTS or "
                                     "weights/vgg19.msgpack)")
    p.add_argument("--preset", default="johnson", help=f"one of {', '.join(PRESETS)} "
                                                       "(default: johnson)")
    p.add_argument("--size", type=int, help="output size in px: the long side (seed preset: "
                                            "the short side); johnson/gatys: 512")
    p.add_argument("--epochs", type=int, help="number of epochs (compiled solver calls)")
    p.add_argument("--max-iter", type=int, help="solver iterations per epoch")
    p.add_argument("--lr", type=float, help="L-BFGS: fixed step (0 = line search); Adam: "
                                            "learning rate")
    p.add_argument("--snapshot-every", type=int, help="write a snapshot every N epochs")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs")
    p.add_argument("--lbfgs-history", type=int, default=100, help="L-BFGS memory (default 100)")
    p.add_argument("--precondition", type=float, metavar="PX",
                   help="optimize a smoothed parametrization of the image, detail finer than "
                        "PX pixels damped (same loss, fewer iterations to it); 0 = off "
                        "(default: 1/8 of the image's shorter side for lbfgs with a line "
                        "search, else 0)")
    p.add_argument("--init", default="content", help="content, noise, or an image path")
    p.add_argument("--seed", type=int, default=0, help="random seed for --init noise")
    p.add_argument("--content-weight", type=float)
    p.add_argument("--style-weight", type=float)
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--pooling", choices=("max", "avg"))
    p.add_argument("--content-layers", type=_layers, help="comma-separated, e.g. relu4_2")
    p.add_argument("--style-layers", type=_layers,
                   help="comma-separated, e.g. relu1_1,relu2_1,relu3_1,relu4_1,relu5_1")
    p.add_argument("--style-layer-weights", type=_floats, help="comma-separated, one per "
                                                               "style layer")
    p.add_argument("--style-scale", type=float, default=1.0,
                   help="style image size relative to the output size (default 1)")
    p.add_argument("--precision", choices=("f32", "bf16", "float32", "bfloat16"), default="f32",
                   help="VGG activations: f32, or bf16 for GPU/TPU (Grams, loss, image and "
                        "L-BFGS memory stay float32)")
    p.add_argument("--conv", choices=CONVS, default="auto",
                   help="convolution algorithm: winograd (F(4x4,3x3) on the layers with >= 64 "
                        "input and >= 128 output channels and >= 512 output pixels; float32 "
                        "only; about 1.8x faster on CPU), direct, or auto (default: winograd "
                        "on CPU, direct on GPU/TPU and in bf16)")
    p.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS,
                   help="refuse input images with more pixels than this")
    # Many images and several devices: see stylejax/batch.py and stylejax/devices.py.
    p.add_argument("--content-dir", metavar="DIR",
                   help="stylize every image in DIR (one compiled batch per size): writes "
                        "OUT/<name>.png and OUT/snapshots/<name>_NNNN.png; --resume skips "
                        "images already written")
    p.add_argument("--batch-size", type=int,
                   help="with --content-dir: most images optimised at once (default: 8 on "
                        "GPU/TPU or the device count if larger; on CPU one per device)")
    p.add_argument("--shard", choices=("auto", "batch", "spatial", "none"), default="auto",
                   help="several devices: auto/batch split the images of a batch over them; "
                        "spatial splits each image's rows (one image too large for one "
                        "device); none uses one device")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU pod "
                        "slice; also $STYLEJAX_DISTRIBUTED=1); run the same command on "
                        "every host")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (same flags; --epochs may grow)")
    # Images beyond memory: see stylejax/tiling.py and stylejax/plan.py.
    p.add_argument("--tile", type=int, metavar="PX",
                   help="optimise overlapping PX x PX tiles (grid moved randomly each "
                        "epoch, overlaps blended) instead of the whole image at once")
    p.add_argument("--tile-overlap", type=int, metavar="PX",
                   help="px shared by neighbouring tiles (default: a quarter of --tile, "
                        ">= 16)")
    p.add_argument("--plan", action="store_true",
                   help="print the predicted peak memory and the device's free memory, "
                        "then exit without running")
    return p


@dataclass(frozen=True)
class RunConfig:
    """Everything a command-line run needs, after the preset and the flags are merged."""

    loss: LossConfig
    size: int
    edge: str
    epochs: int
    max_iter: int
    lr: float
    snapshot_every: int
    optimizer: str
    history: int
    init: str
    seed: int
    style_scale: float
    style_to_content_size: bool
    style_blend_weights: Optional[tuple] = None
    preserve_colors: Optional[str] = None
    scales: Optional[tuple] = None
    precondition: Optional[float] = None


def solver_config(rc: RunConfig) -> SolverConfig:
    """The run's solver settings."""
    return SolverConfig(rc.optimizer, iterations=rc.max_iter, lr=rc.lr, history=rc.history,
                        precondition=rc.precondition)


def style_paths(args) -> list:
    """The style image paths: those after CONTENT, or those of --style (not both)."""
    if args.style and args.style_images:
        raise StylejaxError("Give the style images either after CONTENT or with --style, "
                            "not both.")
    paths = list(args.style or args.style_images or [])
    if not paths:
        raise StylejaxError("Give at least one style image: stylize.py CONTENT STYLE "
                            "[STYLE ...] (see --help).")
    return paths


def run_config(args) -> RunConfig:
    """Merges ``args`` over the preset's defaults and validates the result."""
    if args.preset not in PRESETS:
        raise StylejaxError(f"Unknown preset {args.preset!r}: use one of {', '.join(PRESETS)}.")
    preset = PRESETS[args.preset]
    overrides = {k: v for k, v in dict(
        content_weight=args.content_weight, style_weight=args.style_weight,
        tv_weight=args.tv_weight, pooling=args.pooling, content_layers=args.content_layers,
        style_layers=args.style_layers, style_layer_weights=args.style_layer_weights).items()
        if v is not None}
    if args.style_layers is not None and args.style_layer_weights is None:
        overrides["style_layer_weights"] = (1.0,) * len(args.style_layers) \
            if args.preset == "johnson" else None
    dtype = {"f32": "float32", "bf16": "bfloat16"}.get(args.precision, args.precision)
    loss = preset_config(args.preset, dtype=dtype, conv=args.conv, **overrides)
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    rc = RunConfig(
        loss=loss, size=pick(args.size, "size"),
        edge="short" if args.preset == "seed" else "long",
        epochs=pick(args.epochs, "epochs"), max_iter=pick(args.max_iter, "max_iter"),
        lr=pick(args.lr, "lr"), snapshot_every=pick(args.snapshot_every, "snapshot_every"),
        optimizer=args.optimizer, history=args.lbfgs_history, init=args.init, seed=args.seed,
        style_scale=args.style_scale, style_to_content_size=args.preset == "seed",
        style_blend_weights=_flat(args.style_blend_weights),
        preserve_colors=None if args.preserve_colors == "none" else args.preserve_colors,
        scales=_flat(args.scales), precondition=args.precondition)
    n_styles = len(style_paths(args))
    if rc.style_blend_weights is not None and (
            len(rc.style_blend_weights) != n_styles or min(rc.style_blend_weights) < 0
            or sum(rc.style_blend_weights) <= 0):
        raise StylejaxError(f"--style-blend-weights needs {n_styles} non-negative number(s), "
                            f"one per style image and not all zero, got "
                            f"{' '.join(f'{w:g}' for w in rc.style_blend_weights)}.")
    if rc.scales is not None:
        if min(rc.scales) < 1 or any(b <= a for a, b in zip(rc.scales, rc.scales[1:])):
            raise StylejaxError(f"--scales must be increasing sizes >= 1 px, got "
                                f"{','.join(map(str, rc.scales))}.")
        if args.size is not None and args.size != rc.scales[-1]:
            raise StylejaxError(f"--size {args.size} disagrees with the last of --scales "
                                f"({rc.scales[-1]}), which is the output size: drop --size.")
        rc = dataclasses.replace(rc, size=rc.scales[-1])
    if args.style_masks is not None and len(args.style_masks) != n_styles:
        raise StylejaxError(f"--style-masks needs one mask per style image ({n_styles}), got "
                            f"{len(args.style_masks)} (write 'none' for a style without one).")
    if args.content_mask is not None and len(args.content_mask) not in (1, n_styles):
        raise StylejaxError(f"--content-mask takes one label image or one mask per style "
                            f"image ({n_styles}), got {len(args.content_mask)}.")
    for name in ("size", "epochs", "max_iter", "snapshot_every", "history"):
        if getattr(rc, name) < 1:
            raise StylejaxError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(rc, name)}.")
    if rc.lr < 0 or not rc.style_scale > 0:
        raise StylejaxError("--lr must be >= 0 and --style-scale > 0.")
    return rc


def prepare_images(rc: RunConfig, content_path, style_path, max_pixels):
    """Loads and resizes the content and style images; returns float [H, W, 3] arrays.

    ``style_path`` may be a list; then the styles come back as a list. Every coarse-to-fine
    scale is checked for images too small for the layers.
    """
    several = isinstance(style_path, (list, tuple))
    content = imageio.load_image(content_path, max_pixels)
    styles = [imageio.load_image(p, max_pixels) for p in (style_path if several
                                                          else [style_path])]
    h, w = imageio.fit_size(*content.shape[:2], rc.size, rc.edge)
    content = imageio.resize(content, h, w)
    for i, style in enumerate(styles):
        if rc.style_to_content_size:
            styles[i] = imageio.resize(style, h, w)
        else:
            styles[i] = imageio.resize(style, *imageio.fit_size(
                *style.shape[:2], max(1, round(max(h, w) * rc.style_scale)), "long"))
    hint = " (raise the smallest --scales value or --style-scale)" if rc.scales else \
        " (raise --size or --style-scale)"
    check_stages(content.shape, [s.shape for s in styles],
                 stage_sizes(h, w, rc.scales, rc.edge), rc.loss.layers, None, hint)
    return (content, styles) if several else (content, styles[0])


def _mask_for(path, shape, what, max_pixels, regions=None):
    """Loads mask(s) for an image of ``shape``: [h, w], or [regions, h, w] from a label image."""
    mask = imageio.load_mask(path, max_pixels)
    mh, mw = mask.shape
    h, w = shape[:2]
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise StylejaxError(f"The {what} {path} is {mw}x{mh} px, a different shape from its "
                            f"image ({w}x{h} after resizing): draw it over that image.")
    masks = imageio.label_masks(mask, regions) if regions else mask[None]
    out = np.stack([imageio.resize_mask(m, h, w) for m in masks])
    return out if regions else out[0]


def prepare_masks(args, content, styles, max_pixels):
    """``(content_masks [R, H, W] or None, style_masks [[h, w] or None] or None)`` from the
    --content-mask and --style-masks paths, resized to the prepared images."""
    content_masks = style_masks = None
    if args.content_mask:
        if len(args.content_mask) == 1:
            content_masks = _mask_for(args.content_mask[0], content.shape, "content mask",
                                      max_pixels, len(styles))
        else:
            content_masks = np.stack([_mask_for(p, content.shape, "content mask", max_pixels)
                                      for p in args.content_mask])
    if args.style_masks:
        style_masks = [None if p.lower() == "none" else
                       _mask_for(p, s.shape, "style mask", max_pixels)
                       for p, s in zip(args.style_masks, styles)]
    return content_masks, style_masks


CHECKPOINT = "checkpoint.msgpack"


def _identity(rc: RunConfig, content_path, *input_paths) -> dict:
    """What a checkpoint must share with the command that resumes it (epochs may grow)."""
    ident = dataclasses.asdict(rc)
    # --epochs may grow on --resume, except with --scales, where it fixes each scale's epochs.
    for key in ("snapshot_every",) + (("epochs",) if rc.scales is None else ()):
        ident.pop(key)
    # The convolution algorithm changes the speed, not the loss being minimised (the result
    # then differs from an uninterrupted run by float rounding only).
    ident["loss"].pop("conv")
    ident["inputs"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                       for p in (content_path, *input_paths)]
    return json.loads(json.dumps(ident))  # tuples -> lists, as they come back from JSON


class _Outputs:
    """Snapshots, final image, contact sheet, loss log and checkpoint, all written atomically."""

    def __init__(self, out: Path, rc: RunConfig, identity: dict):
        self.out, self.rc, self.identity = out, rc, identity
        self.log = []

    def epoch(self, epoch, image, loss, seconds, last=False):
        """Logs an epoch; snapshots every --snapshot-every and at ``last`` (a scale's end)."""
        snapshot = epoch % self.rc.snapshot_every == 0 or epoch == self.rc.epochs or last
        self.log.append({"epoch": epoch, "iterations": epoch * self.rc.max_iter,
                         "loss": loss, "seconds": seconds,
                         "snapshot": f"snapshot_{epoch:04d}.png" if snapshot else ""})
        if snapshot:
            imageio.save_image(self.out / self.log[-1]["snapshot"], image)
        self.write_log()
        return snapshot

    def write_log(self):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["epoch", "iterations", "loss", "seconds", "snapshot"])
        writer.writeheader()
        writer.writerows(self.log)
        atomic_write_bytes(self.out / "losses.csv", buf.getvalue().encode())
        atomic_write_bytes(self.out / "losses.json", json.dumps(self.log, indent=1).encode())

    def checkpoint(self, epoch, state):
        record = {"format": "stylejax-checkpoint", "version": 1, "epoch": epoch,
                  "identity": json.dumps(self.identity), "log": json.dumps(self.log),
                  "state": serialization.to_state_dict(state)}
        atomic_write_bytes(self.out / CHECKPOINT, serialization.msgpack_serialize(record))

    def read_checkpoint(self) -> dict:
        """The checkpoint's record, checked against this run's identity."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise StylejaxError(f"Nothing to resume: {path} does not exist (run without "
                                "--resume to start afresh).")
        try:
            record = serialization.msgpack_restore(path.read_bytes())
            identity = json.loads(record["identity"])
        except Exception:  # msgpack and json raise several unrelated types for damaged input
            raise StylejaxError(f"{path} is damaged: delete it and start afresh.") from None
        if identity != self.identity:
            changed = sorted(k for k in set(identity) | set(self.identity)
                             if identity.get(k) != self.identity.get(k))
            raise StylejaxError(
                f"The checkpoint in {self.out} was made with other settings or images "
                f"({', '.join(changed)} differ): resume with the original command, or use "
                "another --out.")
        return record

    def resume(self, template, record=None):
        """Reads the checkpoint into a state shaped like ``template`` (None: the raw state
        dict); returns (epoch, state)."""
        record = self.read_checkpoint() if record is None else record
        self.log = [e for e in json.loads(record["log"]) if e["epoch"] <= record["epoch"]]
        if template is None:
            return record["epoch"], record["state"]
        return record["epoch"], serialization.from_state_dict(template, record["state"])

    def finish(self, content, image, name="final.png"):
        imageio.save_image(self.out / name, image)
        shots = [e for e in self.log if e["snapshot"] and (self.out / e["snapshot"]).is_file()]
        frames = [imageio.load_image(self.out / e["snapshot"]) for e in shots]
        imageio.save_image(self.out / "contact_sheet.png", imageio.contact_sheet(
            [content] + frames, ["content"] + [f"epoch {e['epoch']}  loss {e['loss']:.4g}"
                                               for e in shots]))


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: finish the current epoch, then stop. Second: stop at once."""

    def __init__(self):
        self.requested = None

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``stylize.py CONTENT STYLE [flags]``; returns the exit status."""
    try:
        return _main(argv)
    except StylejaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the snapshots and the last checkpoint are kept (resume "
              "with the same command and --resume).", file=sys.stderr)
        return 130


def enable_compilation_cache(folder: Optional[Path] = None) -> None:
    """Keeps compiled XLA programs in ``folder`` (default ``$STYLEJAX_CACHE/xla``, that is
    ``~/.cache/stylejax/xla``), so a second run with the same sizes and settings skips the
    first epoch's compilation. Programs that compiled in under 0.1 s are not kept (JAX's
    default, 1 s, left out the targets' and the initial state's: 1.3 s of a warm 192 px run)."""
    from stylejax.convert import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(folder or cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _main(argv) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    from stylejax import batch  # here, not at the top: batch imports this module

    args = batch.resolve_args(args)
    rc = run_config(args)
    if batch.wants_batch_path(args):
        return batch.run_folder(args, rc)
    paths = style_paths(args)
    content, styles = prepare_images(rc, args.content, paths, args.max_pixels)
    content_masks, style_masks = prepare_masks(args, content, styles, args.max_pixels)
    init = rc.init if rc.init in ("content", "noise") else imageio.load_image(rc.init,
                                                                              args.max_pixels)
    from stylejax import plan as memory_plan  # before any work: --plan, or refuse up front

    if memory_plan.check_run(args, rc, content.shape):
        return 0
    vgg = load_vgg19(args.weights)
    warning = network_warning(args.preset, vgg.normalized)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    out = imageio.ensure_writable_dir(args.out)
    mask_paths = list(args.content_mask or []) + [p for p in args.style_masks or []
                                                  if p.lower() != "none"]
    outputs = _Outputs(out, rc, _identity(rc, args.content, *paths, *mask_paths))
    scfg = solver_config(rc)
    if args.tile:
        from stylejax import tiling

        return tiling.run_cli(args, rc, scfg, vgg, content, styles, init, outputs)
    # Coarse to fine: scale k runs global epochs k*E+1 .. (k+1)*E, each scale compiled once.
    sizes = stage_sizes(*content.shape[:2], rc.scales, rc.edge)
    per, n = rc.epochs, len(sizes)
    record = outputs.read_checkpoint() if args.resume else None
    done, k0, start = 0, 0, init
    if record is not None:
        done = record["epoch"]
        k0 = min((done - 1) // per, n - 1)
        if done == (k0 + 1) * per and k0 + 1 < n:  # it ended a scale: start the next from it
            _, raw = outputs.resume(None, record)
            k0, start, record = k0 + 1, np.asarray(raw["image"]), None

    def build(k, start):
        stage = stage_inputs(content, styles, sizes[k], content_masks, style_masks)
        return (stage,) + stage_state(vgg, stage, rc.loss, scfg, start, rc.seed,
                                      rc.preserve_colors, rc.style_blend_weights)

    stage, targets, state = build(k0, start)  # errors here leave nothing written
    if record is not None:
        done, state = outputs.resume(state, record)
    image = shown_image(rc.preserve_colors, state.image, stage.content)
    bar = tqdm(total=per * n, initial=min(done, per * n), unit="epoch", file=sys.stderr,
               dynamic_ncols=True)
    last, stopped = time.perf_counter(), None
    try:
        with _StopOnSignal() as stop:
            for k in range(k0, n):
                if k > k0:
                    stage, targets, state = build(k, np.asarray(state.image))
                for e, state, loss in run_epochs(vgg, targets, rc.loss, scfg, state, per,
                                                 max(done - k * per, 0) + 1):
                    now = time.perf_counter()
                    epoch = k * per + e
                    image, done = shown_image(rc.preserve_colors, state.image,
                                              stage.content), epoch
                    snapshot = outputs.epoch(epoch, image, loss, now - last, last=e == per)
                    bar.set_postfix_str(f"loss {loss:.4g}, {rc.max_iter / (now - last):.2f} "
                                        "it/s" + (f", {sizes[k][1]}x{sizes[k][0]} px"
                                                  if n > 1 else ""))
                    bar.update(1)
                    last = now
                    # Read the flag once, after the bookkeeping: a signal landing between a
                    # checkpoint's test and the break would stop without a checkpoint.
                    stopped = stop.requested
                    if snapshot or stopped:
                        outputs.checkpoint(epoch, state)
                    if stopped:
                        break
                if stopped:
                    break
    except StylejaxError:
        outputs.finish(content, image, "last.png")
        raise
    finally:
        bar.close()
    if stopped:
        outputs.finish(content, image, "last.png")
        print(f"error: stopped by {stopped} after epoch {done}; wrote {out / 'last.png'} "
              f"and a checkpoint: run the same command with --resume to continue.",
              file=sys.stderr)
        return 130
    outputs.finish(content, image)
    loss = f"loss {outputs.log[-1]['loss']:.6g} after " if outputs.log else ""
    print(f"wrote {out / 'final.png'} ({loss}{done * rc.max_iter} iterations"
          + (f" over {n} scales" if n > 1 else "") + ")")
    return 0

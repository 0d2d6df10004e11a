"""Images larger than memory: optimise overlapping tiles of one host image, epoch by epoch.

    result = stylize_tiled(vgg, content, style, cfg, tile=512, epochs=10, max_iter=100)

One float32 image [H, W, 3] lives on the host (numpy). Every epoch lays a grid of tiles of
one shape (th, tw) = (min(tile, H), min(tile, W)) over it, shifted by a random offset
(``numpy.random.default_rng(seed)``, so runs are reproducible) so that seams never settle in
one place; tiles at the image's edges are moved inwards, never cut, so every tile has the same
shape and the solver compiles once. For each tile:

- its content targets are the VGG features of the content image's crop at the same place;
- its style targets are the whole style image's Grams, computed once. The gatys (FᵀF/M) and
  johnson (FᵀF/(M·N)) Grams are per-position averages, so a tile's Gram is directly comparable
  with the whole style image's; seed Grams (FᵀF) are sums over positions, so for them the
  style targets are scaled by (positions in a tile) / (positions in the whole content image)
  per layer, which is what the untiled loss compares against;
- the TV term is the tile's own;
- ``max_iter`` solver iterations run from the current image's crop, with a fresh solver state
  (L-BFGS history, Adam moments) per tile per epoch: the history of a tile would be stale
  after its neighbours moved the pixels it shares with them.

All tiles of an epoch start from the same image; their results are blended back with a
feathered weight (linear ramps over ``overlap`` px on each side that faces another tile, 1
elsewhere) into weight and sum buffers, so overlaps cross-fade and the result does not depend
on the order of the tiles. With a single tile covering the image (``tile`` >= both sides), the
solver state is carried across epochs exactly as `stylejax.stylize` does, and the result equals
the untiled run: it is `stylejax.run.stylize_epochs` itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import jax.numpy as jnp
import numpy as np

import stylejax.colour as colour
from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.layers import LAYERS, min_size
from stylejax.losses import LossConfig, content_targets, make_targets
from stylejax.run import (Epoch, as_images, check_call, check_finite, colour_inputs,
                          compiled_epoch, initial_image, shown_image, state_maker,
                          stylize_epochs)
from stylejax.solvers import SolverConfig, solver_config


@dataclass
class TiledResult:
    """``image``: the final [1, H, W, 3] float32 image; ``losses``: per epoch, the mean of the
    tiles' final losses; ``seconds``: wall time per epoch; ``tile``: (th, tw) px;
    ``grids``: per epoch, the tiles' top-left corners [(y, x), ...]."""

    image: np.ndarray
    losses: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    tile: tuple = (0, 0)
    grids: list = field(default_factory=list)


def default_overlap(tile: int) -> int:
    """The default overlap of neighbouring tiles: a quarter of the tile, at least 16 px."""
    return max(16, tile // 4)


def check_tile(tile: int, overlap: int, height: int, width: int, layers) -> tuple[int, int]:
    """The tile shape (th, tw) for an image of ``height`` x ``width``; StylejaxError if
    ``tile`` is too small for ``layers`` or ``overlap`` is not in [0, tile)."""
    need = min_size(layers)
    th, tw = min(tile, height), min(tile, width)
    if tile < need:
        raise StylejaxError(f"--tile {tile} is too small for the chosen layers: tiles need at "
                            f"least {need} px on each side.")
    if not 0 <= overlap < min(th, tw) and (th < height or tw < width):
        raise StylejaxError(f"--tile-overlap must be >= 0 and smaller than the tile "
                            f"({min(th, tw)} px), got {overlap}.")
    return th, tw


def axis_starts(length: int, tile: int, overlap: int, offset: int = 0) -> list[int]:
    """Start positions (px) of the tiles along one axis of ``length`` px.

    Tiles of ``tile`` px step by ``stride = tile - overlap``, shifted by ``offset`` in
    [0, stride); starts are clamped into [0, length - tile] (edge tiles move inwards) and
    duplicates dropped. Every pixel is covered; neighbours overlap by >= ``overlap`` px.
    """
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = {min(max(s, 0), length - tile) for s in range(offset - stride, length, stride)}
    return sorted(starts)


def feather(start: int, tile: int, length: int, overlap: int) -> np.ndarray:
    """Blend weights [tile] of a tile at ``start`` on an axis of ``length`` px: linear ramps
    (1/(overlap+1) .. 1) over ``overlap`` px on each side that faces another tile, else 1."""
    w = np.ones(tile, np.float32)
    if overlap > 0:
        ramp = np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1)
        if start > 0:
            w[:overlap] = np.minimum(w[:overlap], ramp)
        if start + tile < length:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def tile_grid(height: int, width: int, tile_shape, overlap: int, rng=None) -> list:
    """Top-left corners [(y, x)] of one epoch's tiles; ``rng`` (a numpy Generator) draws the
    grid's random offset (None: no offset)."""
    th, tw = tile_shape
    offs = []
    for length, t in ((height, th), (width, tw)):
        stride = t - overlap
        offs.append(int(rng.integers(0, stride)) if rng is not None and t < length
                    and stride > 1 else 0)
    return [(y, x) for y in axis_starts(height, th, overlap, offs[0])
            for x in axis_starts(width, tw, overlap, offs[1])]


def _positions(h: int, w: int, layer: str) -> int:
    """h*w positions of ``layer``'s activations for an [h, w] input (floor at each pooling)."""
    pools = sum(1 for name in LAYERS[: LAYERS.index(layer) + 1] if name.startswith("pool"))
    return (h >> pools) * (w >> pools)


def _style_for_tiles(style: dict, cfg: LossConfig, tile_shape, image_shape) -> dict:
    """The whole style image's Grams as targets for a tile (seed Grams rescaled by area)."""
    if cfg.normalization != "seed":
        return style
    return {name: g * (_positions(*tile_shape, name) / _positions(*image_shape, name))
            for name, g in style.items()}


def tiled_epochs(vgg, content, styles, cfg: LossConfig, scfg: SolverConfig, *, tile: int,
                 overlap: Optional[int] = None, epochs: int, init="content", seed: int = 0,
                 style_blend_weights=None, preserve_colors: Optional[str] = None,
                 feathered: bool = True,
                 execution: Optional[Execution] = None) -> Iterator[Epoch]:
    """`stylejax.run.stylize_epochs` by tiles: yields an `Epoch` (``state`` None, ``loss``
    the mean of the tiles' final losses) after each epoch. ``content`` [H, W, 3], ``styles``
    a list of [h, w, 3]; the other arguments as `stylize_tiled`. One tile covering the whole
    image is the untiled loop itself (solver state carried)."""
    h, w = content.shape[:2]
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    th, tw = check_tile(tile, overlap, h, w, cfg.layers)
    if (th, tw) == (h, w):
        yield from stylize_epochs(vgg, content, styles, cfg, scfg, epochs=epochs, init=init,
                                  seed=seed, style_blend_weights=style_blend_weights,
                                  preserve_colors=preserve_colors, execution=execution)
        return
    shown_content = content
    content, styles = colour_inputs(preserve_colors, content, styles)
    content = np.asarray(content, np.float32)
    x0 = initial_image(init, content, seed)
    if preserve_colors == "luminance":
        x0 = colour.luminance_image(x0)
    # Style Grams once, from the whole style image(s); content features per tile.
    style_targets = make_targets(vgg, content[:th, :tw], styles, cfg, style_blend_weights,
                                 execution=execution)
    style_targets = _style_for_tiles(style_targets["style"], cfg, (th, tw), (h, w))
    rng = np.random.default_rng(seed)
    image = np.array(x0[0], np.float32)
    init_fn = epoch_fn = None  # compiled at the first tile: every tile has its shape
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        grid = tile_grid(h, w, (th, tw), overlap, rng)
        acc = np.zeros_like(image)
        wsum = np.zeros((h, w, 1), np.float32)
        losses = []
        for y, x in grid:
            targets = {"content": content_targets(
                vgg, jnp.asarray(content[None, y:y + th, x:x + tw]), cfg, execution),
                "style": style_targets}
            crop = jnp.asarray(image[None, y:y + th, x:x + tw])
            if init_fn is None:
                init_fn = state_maker(scfg, vgg, crop, targets, cfg, execution)
            state = init_fn(vgg, crop, targets)
            if epoch_fn is None:
                epoch_fn = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
            state = epoch_fn(state, targets)
            losses.append(float(state.value))
            if not math.isfinite(losses[-1]):
                break
            wy = feather(y, th, h, overlap) if feathered else np.ones(th, np.float32)
            wx = feather(x, tw, w, overlap) if feathered else np.ones(tw, np.float32)
            wgt = (wy[:, None] * wx[None, :])[..., None]
            acc[y:y + th, x:x + tw] += wgt * np.asarray(state.image[0])
            wsum[y:y + th, x:x + tw] += wgt
        loss = float(np.mean(losses))
        check_finite(epoch, loss)
        image = acc / wsum
        yield TiledEpoch(epoch, 0, 1, (h, w), epoch == epochs, None, loss,
                         shown_image(preserve_colors, image[None], shown_content),
                         time.perf_counter() - start, grid)


@dataclass
class TiledEpoch(Epoch):
    """An `Epoch` of a tiled run, with ``grid``: the tiles' top-left corners [(y, x)]."""

    grid: list = field(default_factory=list)


def stylize_tiled(vgg, content, style, cfg: LossConfig, *, tile: int,
                  overlap: Optional[int] = None, epochs: int, max_iter: int,
                  optimizer: str = "lbfgs", lr: Optional[float] = None,
                  history: Optional[int] = None, init="content", seed: int = 0,
                  callback: Optional[Callable] = None, style_blend_weights=None,
                  preserve_colors: Optional[str] = None, feathered: bool = True,
                  precondition=None, execution: Optional[Execution] = None) -> TiledResult:
    """`stylejax.stylize` for images larger than memory allows, by tiles of ``tile`` px.

    Args as `stylejax.stylize` (no scales or masks), plus:
      tile: tile side in px (a tile is min(tile, H) x min(tile, W)).
      overlap: px shared by neighbouring tiles (default `default_overlap`).
      seed: also seeds the grid's random offsets.
      feathered: False pastes tiles with weight 1 (hard seams; for comparison only).
    Memory: one tile's solver state and activations on the device (see `stylejax.plan`), and
    four image-sized float32 buffers on the host.
    """
    check_call(epochs, preserve_colors)
    scfg = solver_config(optimizer, max_iter, lr, history, precondition)
    content, styles = as_images(content, style)
    h, w = content.shape[:2]
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    result = TiledResult(image=None, tile=check_tile(tile, overlap, h, w, cfg.layers))
    for step in tiled_epochs(vgg, content, styles, cfg, scfg, tile=tile, overlap=overlap,
                             epochs=epochs, init=init, seed=seed,
                             style_blend_weights=style_blend_weights,
                             preserve_colors=preserve_colors, feathered=feathered,
                             execution=execution):
        result.image = step.image
        result.losses.append(step.loss)
        result.seconds.append(step.seconds)
        result.grids.append(getattr(step, "grid", [(0, 0)]))
        if callback is not None:
            callback(step.epoch, step.image, step.loss)
    return result

"""The multi-pass video algorithm (Ruder, Dosovitskiy & Brox, IJCV 2018, Sec. 4.3) with all
frames of a chunk optimized together as one problem, pass after pass, by one program compiled
for the video.

Pass 1 stylizes every frame on its own (from ``init``). Each later pass p runs in a direction
(odd passes forward, even ones backward, as the paper's) and starts each frame k from its
last result blended with its neighbour in that direction warped into it,
``(x_k + δ c ω) / (1 + δ c)`` (`temporal.blend_start`, δ = ``blend``); from pass
``temporal_from`` on, the loss also holds each frame k to its references k ∓ j (the
long-term offsets j) warped into it, Σ_j c_j (x_k − warp(x_{k∓j}))² (`temporal`).

Departure from the paper, and why: the paper's pass is a sweep, frame by frame, each frame
held to its neighbour's result *of the same pass*, which is sequential by construction. Here
the frames of a chunk are one optimization problem: the sum of their losses, the temporal
terms between frames of the chunk coupling them (the gradient reaches both frames of a
pair), solved by one L-BFGS over the stacked frames [B, 1, H, W, 3]. A reference outside
the chunk is data: its result of this pass if its chunk is done (chunks run in the pass's
direction, so the sweep survives between chunks), else of the previous pass. Holding every
frame to its neighbour's *previous-pass* result instead (a Jacobi sweep, the obvious way to
batch the paper's passes) was tried and fails: with a strong temporal weight each frame
copies its neighbour's old image, so an inconsistency moves one frame per pass instead of
fading (measured: the stylized frames' warped difference 1.02× that without the term).
Frames are sharded over devices along the chunk's axis (XLA partitions the program; the
warps between frames on different devices exchange those images).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional

import jax
import numpy as np

import dataclasses
import functools

import jax.numpy as jnp

import stylejax.devices as dev
import stylejax.plan as plan
import stylejax.temporal as temporal
from stylejax.clip import FrameFlows, as_frames
from stylejax.cpu.hostmem import compile_released
from stylejax.cpu.kernels import prepare_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution, as_execution
from stylejax.losses import (LossConfig, content_targets, feature_terms, make_targets,
                             temporal_term)
from stylejax.vgg import extract_features
from stylejax.run import initial_image
from stylejax.solvers import SolverConfig, fresh_state, lbfgs_epoch

PASSES = 15
"""The paper's (artistic-videos' ``-num_passes``) default."""
MAX_CHUNK = 32
"""The most frames one program takes by default: beyond this a larger batch of convolutions
gains nothing measurable on a CPU and only delays the first frames' output."""


def default_temporal_from(passes: int) -> int:
    """The first pass with the temporal loss: the second half of the passes (the paper's
    8 of 15, ``-use_temporalLoss_after 8``)."""
    return passes // 2 + 1


@dataclass
class VideoPass:
    """What `multipass` yields after each chunk of frames of each pass.

    ``number``: the pass (from 1) of ``passes``; ``direction``: +1 forward, −1 backward;
    ``temporal``: whether its loss holds frames to their neighbours; ``frames``: the chunk's
    frames (0-based); ``last_of_pass``: the chunk ends the pass; ``images`` [T, H, W, 3]:
    this pass's results so far (earlier frames of the pass) and the previous pass's for the
    rest (read it before asking for the next chunk); ``losses`` [T]: this pass's final loss
    of each frame so far (NaN for the rest); ``seconds``: the chunk's wall time (the first
    includes compiling)."""

    number: int
    passes: int
    direction: int
    temporal: bool
    frames: range
    last_of_pass: bool
    images: np.ndarray
    losses: np.ndarray
    seconds: float


def default_chunk(cfg: LossConfig, scfg: SolverConfig, h: int, w: int, references: int,
                  execution: Optional[Execution] = None, free: Optional[int] = None) -> int:
    """How many frames of h x w px one program can hold: the memory plan's per-image part
    (activations, targets, solver, the temporal references) into 60% of the free memory,
    after the shared part (parameters, kernels, runtime); at most `MAX_CHUNK`, at least 1."""
    table = plan.predict(cfg, scfg, h, w, execution=execution)
    image = h * w * 3 * 4
    per_frame = (table["activations"] + table["targets"] + table["solver"]
                 + references * (image + h * w * 4) + 2 * image)
    shared = table["total"] - table["activations"] - table["targets"] - table["solver"]
    free = plan.free_memory() if free is None else free
    return int(max(1, min(MAX_CHUNK, (0.6 * free - shared) // per_frame)))


def frame_losses(vgg, images, targets, cfg: LossConfig, execution: Optional[Execution] = None):
    """[B] each frame's loss: its style-transfer loss (as `loss_fn`'s, the frames' own
    targets stacked along B) plus its temporal terms against ``targets["couple"]``: ``"frame"``
    [B, J] (a reference's index in ``images`` [B, 1, H, W, 3], or −1: use ``"warped"`` [B,
    J, H, W, 3] instead), ``"flow"`` [B, J, H, W, 2] (the frame into each reference) and
    ``"weights"`` [B, J, H, W, 1]. Pure; differentiable in ``images`` (through both frames
    of each pair inside ``images``)."""
    own = {k: v for k, v in targets.items() if k not in ("couple", "live")}
    frames = images[:, 0]
    # The network runs once over the whole chunk (a vmap of loss_fn over the frames costs
    # 25% more per frame on a CPU); each frame's terms then use its own targets.
    feats = extract_features(vgg, frames, cfg.layers, cfg.pooling, as_execution(execution))
    per = jax.vmap(lambda f, x, t: sum(feature_terms(
        jax.tree.map(lambda a: a[None], f), x[None], t, cfg).values()))(feats, frames, own)
    couple = targets["couple"]
    inner = jax.vmap(jax.vmap(temporal.warp))(frames[jnp.maximum(couple["frame"], 0)],
                                              couple["flow"])
    ref = jnp.where((couple["frame"] >= 0)[..., None, None, None], inner, couple["warped"])
    held = jax.vmap(temporal_term)(images, ref, couple["weights"])
    return per + cfg.temporal_weight * held


def _for_mesh(scfg: SolverConfig, mesh) -> SolverConfig:
    # XLA's CPU FFT fails a layout check in partitioned programs (see `batch._for_mesh`).
    return scfg if mesh is None else dataclasses.replace(scfg, dft="matmul")


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "execution", "mesh"),
                   donate_argnames=("state",))
def pass_epoch(state, vgg, targets, *, cfg: LossConfig, scfg: SolverConfig,
               execution: Optional[Execution] = None, mesh=None):
    """One solver epoch (``scfg.iterations`` L-BFGS iterations) of a chunk of frames: the
    state's image is [B, 1, H, W, 3]; the objective is Σ live · `frame_losses` (``targets
    ["live"]`` [B] is 0 for padding). ``state`` donated; ``mesh``: the frames' axis split
    over "batch" (None: one device)."""
    scfg = _for_mesh(scfg, mesh)
    vgg = prepare_kernels(vgg, cfg.layers, execution, state.image.shape[-3:])

    def total(images, targets):
        images, targets = dev.constrain((images, targets), mesh)
        return jnp.sum(targets["live"] * frame_losses(vgg, images, targets, cfg, execution))

    return lbfgs_epoch(state, jax.value_and_grad(total), scfg, targets)


@functools.partial(jax.jit, static_argnames=("cfg", "execution"))
def _losses(vgg, images, targets, cfg: LossConfig, execution: Optional[Execution] = None):
    return frame_losses(vgg, images, targets, cfg, execution)


def chunk_plan(cfg: LossConfig, scfg: SolverConfig, h: int, w: int, frames: int,
               references: int, execution: Optional[Execution] = None,
               chunk: Optional[int] = None, shard: str = "auto", devices=None) -> tuple:
    """(frames per program, the mesh or None) of a clip of ``frames`` h x w frames: ``chunk``
    (default `default_chunk`) rounded up to a multiple of the devices the mesh uses, and at
    most the clip (so rounded too). Which frames share a problem changes the result, so a
    resumed run must get the same size (the command line records it)."""
    if chunk is not None and chunk < 1:
        raise StylejaxError(f"The chunk must be >= 1 frame, got {chunk}.")
    size = chunk or default_chunk(cfg, scfg, h, w, references, execution)
    mesh = dev.make_mesh(shard, min(size, frames), devices)
    lanes = 1 if mesh is None else mesh.shape[dev.BATCH]
    return min(-(-size // lanes) * lanes, -(-frames // lanes) * lanes), mesh


def multipass(vgg, frames, styles, cfg: LossConfig, scfg: SolverConfig, *, passes: int,
              flows: FrameFlows, temporal_from: Optional[int] = None, blend: float = 1.0,
              init="content", seed: int = 0, style_blend_weights=None,
              execution: Optional[Execution] = None, chunk: Optional[int] = None,
              shard: str = "auto", devices=None,
              resume: Optional[tuple] = None) -> Iterator[VideoPass]:
    """The multi-pass loop: yields a `VideoPass` after each chunk of each pass.

    ``frames`` [T, H, W, 3]; ``styles`` a list of [h, w, 3]; ``scfg``: L-BFGS, one pass of
    a chunk being one solver epoch (``scfg.iterations`` iterations); ``passes`` >= 1;
    ``flows`` the clip's `FrameFlows` (its offsets are the long-term ones);
    ``temporal_from``: the first pass with the temporal loss (default
    `default_temporal_from`); ``blend`` δ >= 0; ``chunk``: frames per program (default
    `default_chunk`; rounded as `chunk_plan` says); ``shard``/``devices``:
    as `stylize_batch`'s ("batch" or "auto"); ``resume``: ``(passes done, images [T, H, W,
    3] after the last of them)``. One program is compiled for the video. Raises
    StylejaxError for bad arguments or a NaN/inf loss (naming the frame and pass).
    """
    frames = as_frames(frames)
    t, h, w = frames.shape[:3]
    temporal_from = default_temporal_from(passes) if temporal_from is None else temporal_from
    if passes < 1 or temporal_from < 1 or not blend >= 0:
        raise StylejaxError(f"Multi-pass needs passes >= 1, temporal_from >= 1 and blend >= 0,"
                            f" got {passes}, {temporal_from}, {blend}.")
    if scfg.kind != "lbfgs" or scfg.precondition != 0:
        raise StylejaxError("Multi-pass video runs plain L-BFGS (--optimizer lbfgs, no "
                            "--precondition): use --mode sequential for the others.")
    if shard not in ("auto", "batch", "none"):
        raise StylejaxError(f"Multi-pass shards frames over devices (--shard batch or auto), "
                            f"not {shard!r}.")
    execution = as_execution(execution)
    done, previous = (0, None) if resume is None else resume
    size, mesh = chunk_plan(cfg, scfg, h, w, t, len(flows.offsets), execution, chunk, shard,
                            devices)
    # Pass 1 needs no flow: the worker computes them meanwhile, in the order pass 2 uses.
    flows.prefetch(pair for k in range(t) for pair in flows.pairs(k, -1))
    flows.prefetch(pair for k in range(t) for pair in flows.pairs(k, 1))
    style = make_targets(vgg, frames[0], styles, cfg, style_blend_weights,
                         execution=execution)
    style.pop("content")
    contents = [jax.tree.map(np.asarray, content_targets(vgg, f[None], cfg, execution))
                for f in frames]
    placed_vgg = dev.replicate(prepare_kernels(vgg, cfg.layers, execution, (h, w, 3)), mesh)
    epoch_fn = None
    current = np.array(previous) if previous is not None else np.zeros_like(frames)
    for number in range(done + 1, passes + 1):
        direction = 1 if number % 2 else -1
        held = number > 1 and number >= temporal_from
        losses = np.full(t, np.nan, np.float32)
        chunks = [list(range(a, min(a + size, t))) for a in range(0, t, size)]
        order = chunks if direction > 0 else chunks[::-1]  # the sweep between chunks
        for ks in order:
            clock = time.perf_counter()
            images, targets = _chunk_inputs(ks, size, number, direction, held, frames,
                                            current, flows, blend, init, seed, style,
                                            contents)
            images, targets = dev.place((images, targets), mesh)
            state = fresh_state(scfg, images)
            if epoch_fn is None:
                epoch_fn = compile_released(pass_epoch, state, placed_vgg, targets, cfg=cfg,
                                            scfg=scfg, execution=execution, mesh=mesh)
            state = epoch_fn(state, placed_vgg, targets)
            values = dev.to_host(_losses(placed_vgg, state.image, targets, cfg,
                                         execution))[:len(ks)]
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise StylejaxError(
                    f"The loss of frame {ks[bad[0]] + 1} became {values[bad[0]]} in pass "
                    f"{number}; stopped, keeping the last finished pass: lower --lr or the "
                    "loss weights.")
            current[ks] = dev.to_host(state.image)[:len(ks), 0]
            losses[ks] = values
            yield VideoPass(number, passes, direction, held, range(ks[0], ks[-1] + 1),
                            ks is order[-1], current,
                            losses, time.perf_counter() - clock)


def _chunk_inputs(ks, size, number, direction, held, frames, current, flows, blend, init,
                  seed, style, contents):
    """(start images [B, 1, H, W, 3], stacked targets) of the chunk of frames ``ks``, padded
    to ``size`` lanes by repeating its last frame with ``live`` 0."""
    lanes = ks + ks[-1:] * (size - len(ks))
    j = len(flows.offsets)
    starts, couples = [], []
    for k in lanes:
        if number == 1:
            starts.append(np.asarray(initial_image(init, frames[k], seed)))
            couples.append({"frame": np.full(j, -1, np.int32),
                            "flow": np.zeros((j,) + frames.shape[1:3] + (2,), np.float32),
                            "warped": np.broadcast_to(frames[k][None], (j,) + frames.shape[1:]),
                            "weights": np.zeros((j,) + frames.shape[1:3] + (1,), np.float32)})
            continue
        entry = jax.tree.map(np.asarray, flows.references(current, k, direction))
        starts.append(np.asarray(temporal.blend_start(current[k][None], entry["warped"][:1],
                                                      entry["weights"][:1], blend)))
        # A reference inside the chunk is coupled (its lane's index); one outside is data.
        entry["frame"] = np.asarray([ks.index(r) if r in ks else -1 for r in entry["frame"]],
                                    np.int32)
        if not held:
            entry["weights"] = np.zeros_like(entry["weights"])
        couples.append(entry)
    targets = _stack([{**style, "content": contents[k], "couple": c}
                      for k, c in zip(lanes, couples)])
    targets["live"] = np.asarray([1.0] * len(ks) + [0.0] * (size - len(ks)), np.float32)
    return np.stack(starts), targets


def _stack(trees: list):
    """The trees' arrays stacked along a new leading axis (numpy, on the host)."""
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *trees)

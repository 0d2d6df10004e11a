"""Many images at once: N (content, style) pairs optimized by one compiled program.

    result = stylize_batch(vgg, contents, styles, cfg, epochs=10, max_iter=100)
    result.images                       # [N, H, W, 3], pair i as stylize() would make it

The solver's own `init_state` / `run_epoch` are `jax.vmap`-ed over a leading pair axis of
the image, the solver state and the targets (stacked per pair, so each pair may have its own
style). A vmapped line search (a `while_loop`) runs until every pair's search is done, and
pairs that finished early are held unchanged meanwhile, so each pair follows the same path
as alone; the results differ from one-by-one runs only by float rounding (a batched
convolution sums in another order), which L-BFGS amplifies slowly over many iterations.

With several devices the pair axis is sharded over them (see `stylejax.devices`), each
device running its own pairs, so the result does not depend on the device count; with
``shard="spatial"`` each image's rows are split instead. Also here: `throughput`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec as P

import stylejax.devices as dev
from stylejax.cpu.hostmem import compile_released
from stylejax.cpu.kernels import prepare_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution, as_execution
from stylejax.losses import LossConfig, loss_fn, make_targets
from stylejax.presets import preset_config
from stylejax.run import initial_image
from stylejax.solvers import SolverConfig, epoch, init_state, solver_config


@dataclass
class BatchResult:
    """``images``: [N, H, W, 3] float32, the last finite image of each pair; ``losses``:
    [epochs, N] (NaN/inf where a pair's loss broke down); ``seconds``: wall time of each
    epoch (the first includes compilation); ``failed``: {pair: epoch its loss broke down}."""

    images: np.ndarray
    losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    seconds: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)


def _per_device(fn, mesh):
    """``fn(state_or_images, vgg, targets)`` over the pairs, placed for ``mesh``.

    A mesh along "batch" only never needs to split an image: each device runs ``fn`` on its
    own pairs (`jax.shard_map`), so every image's work (the preconditioner's FFT included) is
    an ordinary local program, the same as on one device. A mesh that splits the rows
    ("space") leaves the partitioning to XLA (`devices.constrain`)."""
    if mesh is None:
        return fn
    if mesh.shape[dev.SPACE] == 1:
        pairs = P(dev.BATCH)
        return jax.shard_map(fn, mesh=mesh, in_specs=(pairs, P(), pairs), out_specs=pairs,
                             check_vma=False)

    def constrained(x, vgg, targets):
        x, targets = dev.constrain((x, targets), mesh)
        return dev.constrain(fn(x, vgg, targets), mesh)

    return constrained


def _for_mesh(execution: Execution, scfg: SolverConfig, mesh):
    """The execution and solver settings for a program whose images ``mesh`` splits by
    rows: convolutions direct (XLA's partitioner exchanges a direct convolution's halos
    between neighbours, but gathers whole activations around Winograd's overlapping tile
    windows: 6 all-gathers at 128 px when measured), and the preconditioner's DFT as matrix
    products (XLA's CPU FFT fails a layout check in partitioned programs). Both change the
    speed, not the result (float32 rounding). Unchanged for other meshes."""
    if mesh is None or mesh.shape[dev.SPACE] == 1:
        return execution, scfg
    if execution.conv == "auto":
        execution = dataclasses.replace(execution, conv="direct")
    return execution, dataclasses.replace(scfg, dft="matmul")


@functools.partial(jax.jit, static_argnames=("scfg", "cfg", "execution", "mesh"))
def init_batch_state(scfg: SolverConfig, vgg, images, targets, cfg: LossConfig,
                     execution: Optional[Execution] = None, mesh=None):
    """The solver states of ``images`` [N, 1, H, W, 3] against stacked ``targets`` (every
    leaf with a leading N axis); the state's leaves gain that axis too. ``mesh``: see
    `stylejax.devices` (None: one device)."""
    execution, scfg = _for_mesh(as_execution(execution), scfg, mesh)

    def states(images, vgg, targets):
        return jax.vmap(lambda x, t: init_state(scfg, vgg, x, t, cfg, execution))(images,
                                                                                  targets)

    return _per_device(states, mesh)(images, vgg, targets)


def _shared_vgg_value_and_grad(vgg, cfg, execution):
    """``f(x, targets) -> (loss, d loss / d x)`` of one pair, for jaxopt's
    ``value_and_grad=True``, that keeps ``vgg`` shared when the pairs are vmapped.

    Why: jaxopt's zoom line search branches with `lax.cond` on per-pair conditions. Under
    vmap such a cond becomes a select and broadcasts every operand to all pairs, the VGG
    parameters (closed over by the objective) included. With a batched kernel JAX writes
    each convolution as a grouped one (the pairs folded into the channels), which is slower
    and, with the pairs sharded over devices, makes XLA all-gather the activations. The
    objective is `custom_vmap`-ed: its batching rule takes the parameters of pair 0 (all
    pairs hold the same ones: ``vgg`` is closed over, never mapped) and maps only the
    images and targets, so the pairs are folded into the convolutions' batch axis.
    """
    def value_and_grad(vgg, x, targets):
        return jax.value_and_grad(loss_fn, argnums=1)(vgg, x, targets, cfg, execution)

    shared = jax.custom_batching.custom_vmap(value_and_grad)

    @shared.def_vmap
    def _rule(axis_size, in_batched, vgg, x, targets):
        vgg_b, x_b, targets_b = in_batched
        vgg = jax.tree.map(lambda a, b: a[0] if b else a, vgg, vgg_b)
        spread = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)  # noqa
        x = spread(x, x_b)
        targets = jax.tree.map(spread, targets, targets_b)
        out = jax.vmap(value_and_grad, in_axes=(None, 0, 0))(vgg, x, targets)
        return out, (True, True)

    return lambda x, targets: shared(vgg, x, targets)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "execution", "mesh"),
                   donate_argnames=("state",))
def run_batch_epoch(state, vgg, targets, *, cfg: LossConfig, scfg: SolverConfig,
                    execution: Optional[Execution] = None, mesh=None):
    """`solvers.run_epoch` for every pair at once (one compiled call; ``state`` donated).
    ``state.value`` is [N], ``state.image`` [N, 1, H, W, 3]."""
    execution, scfg = _for_mesh(as_execution(execution), scfg, mesh)

    def epochs(state, vgg, targets):
        vgg = prepare_kernels(vgg, cfg.layers, execution, state.image.shape[1:])
        # optax's line search closes over the objective: nothing to work around there.
        f = _shared_vgg_value_and_grad(vgg, cfg, execution) if scfg.kind == "lbfgs" else None
        return jax.vmap(lambda s, t: epoch(s, vgg, t, cfg, scfg, execution, f))(state,
                                                                                 targets)

    return _per_device(epochs, mesh)(state, vgg, targets)


def _image_list(contents) -> list:
    if isinstance(contents, (list, tuple)):
        items = [np.asarray(c, np.float32) for c in contents]
    else:
        a = np.asarray(contents, np.float32)
        items = list(a) if a.ndim == 4 else [a]
    items = [c[0] if c.ndim == 4 and c.shape[0] == 1 else c for c in items]
    if not items or any(c.ndim != 3 or c.shape[-1] != 3 for c in items):
        raise StylejaxError("Give the contents as [N, H, W, 3] or a list of [H, W, 3] RGB "
                            "images.")
    if len({c.shape for c in items}) > 1:
        raise StylejaxError(f"The contents of one batch must share one size, got "
                            f"{sorted({c.shape[:2] for c in items})} (H, W): group them by "
                            "size or resize them.")
    return items


def _style_list(styles, n: int) -> list:
    """One style entry per pair: an image shared by all, or a sequence of N entries."""
    if isinstance(styles, (list, tuple)):
        if len(styles) != n:
            raise StylejaxError(f"Give one style per content ({n}), or one style image for "
                                f"all, not {len(styles)}.")
        return list(styles)
    a = np.asarray(styles)
    if a.ndim == 4 and a.shape[0] == n and n > 1:
        return list(a)
    return [styles] * n


def stylize_batch(vgg, contents, styles, cfg: LossConfig, *, epochs: int, max_iter: int,
                  optimizer: str = "lbfgs", lr: Optional[float] = None, init="content",
                  seed: int = 0, callback: Optional[Callable] = None,
                  history: Optional[int] = None, style_blend_weights=None,
                  shard: str = "auto", devices=None, precondition=None,
                  execution: Optional[Execution] = None) -> BatchResult:
    """Stylizes N same-size contents at once; pair i equals `stylize` of pair i alone.

    Args:
      vgg: the bundle from `load_vgg19`.
      contents: [N, H, W, 3] or a list of N [H, W, 3] RGB images in [0, 1], one size.
      styles: one style image for every pair, or a list of N entries (an image, or a list
        of images blended by ``style_blend_weights``); any sizes.
      cfg, epochs, max_iter, optimizer, lr, history, precondition, init, execution: as in
        `stylize`. ``init="noise"`` gives every pair the same noise (``seed``), as N
        separate runs with that seed would.
      callback: ``callback(epoch, images, losses)`` after every epoch: numpy [N, H, W, 3]
        (each pair's last finite image) and [N].
      shard: "auto" (the pairs over all visible devices, if several), "batch", "spatial"
        (each image's rows over all devices) or "none"; see `stylejax.devices`.
      devices: the devices to use (default: `jax.devices()`).
    Raises:
      StylejaxError: bad arguments, or every pair's loss became NaN/inf.
    """
    if epochs < 1:
        raise StylejaxError(f"The number of epochs must be >= 1, got {epochs}.")
    contents = _image_list(contents)
    n = len(contents)
    styles = _style_list(styles, n)
    scfg = solver_config(optimizer, max_iter, lr, history, precondition)
    mesh = dev.make_mesh(shard, n, devices)
    # Pad the pairs to a multiple of the devices along "batch" by repeating the last pair;
    # the copies are dropped from the result.
    lanes = n if mesh is None else -(-n // mesh.shape[dev.BATCH]) * mesh.shape[dev.BATCH]
    per_pair = [make_targets(vgg, c, s, cfg, style_blend_weights=style_blend_weights,
                             execution=execution) for c, s in zip(contents, styles)]
    per_pair += per_pair[-1:] * (lanes - n)
    targets = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *per_pair)
    images = np.stack([np.asarray(initial_image(init, c, seed)) for c in contents]
                      + [np.asarray(initial_image(init, contents[-1], seed))] * (lanes - n))
    # Winograd's kernels made once for all the epochs (the first state, evaluated with direct
    # convolutions, leaves them unused).
    vgg = prepare_kernels(vgg, cfg.layers, _for_mesh(as_execution(execution), scfg, mesh)[0],
                          images.shape[-3:])
    if mesh is None:
        targets, images = jax.tree.map(jnp.asarray, (targets, images))
    else:
        targets, images = dev.place((targets, images), mesh)
        vgg = dev.replicate(vgg, mesh)
    state = compile_released(init_batch_state, scfg, vgg, images, targets, cfg, execution,
                             mesh=mesh)(vgg, images, targets)
    result = BatchResult(images=dev.to_host(state.image)[:n, 0],
                         losses=np.zeros((0, n), np.float32))
    losses = []
    start = time.perf_counter()
    epoch_fn = compile_released(run_batch_epoch, state, vgg, targets, cfg=cfg, scfg=scfg,
                                execution=execution, mesh=mesh)
    for k in range(1, epochs + 1):
        state = epoch_fn(state, vgg, targets)
        values = dev.to_host(state.value)[:n]  # the one host sync per epoch
        images_now = dev.to_host(state.image)[:n, 0]
        result.seconds.append(time.perf_counter() - start)
        for i in np.flatnonzero(~np.isfinite(values)):
            result.failed.setdefault(int(i), k)
        ok = np.array([i not in result.failed for i in range(n)])
        result.images = np.where(ok[:, None, None, None], images_now, result.images)
        losses.append(values)
        result.losses = np.stack(losses)
        if callback is not None:
            callback(k, result.images, values)
        if len(result.failed) == n:
            raise StylejaxError(
                f"The loss of every image became NaN or inf (by epoch {k}); stopped: lower "
                "--lr or the loss weights, or use --optimizer optax-lbfgs.")
        start = time.perf_counter()
    return result


# ---------------------------------------------------------------- throughput


def _synthetic(size: int, seed: int) -> np.ndarray:
    """A smooth random RGB image [size, size, 3] in [0, 1], photo-like at low frequency."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.5 + sum(rng.uniform(0.1, 0.3, 3) * np.sin(
        2 * np.pi * (rng.uniform(0.5, 4) * y + rng.uniform(0.5, 4) * x) + rng.uniform(0, 6.3)
    )[..., None] for _ in range(4))
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)


def throughput(vgg, size: int = 256, batch: int = 1, iterations: int = 10, *,
               per_image: int = 1000, cfg: Optional[LossConfig] = None,
               shard: str = "auto", execution: Optional[Execution] = None) -> dict:
    """Images per hour that `stylize_batch` sustains for ``batch`` pairs of ``size`` px.

    Runs two epochs of ``iterations`` L-BFGS iterations (line search, johnson preset unless
    ``cfg``) on synthetic images; the first compiles, the second is timed. Returns
    ``{"size", "batch", "iterations", "compile_s", "seconds_per_iteration",
    "images_per_hour", "device"}`` where images_per_hour = batch · 3600 /
    (per_image · seconds_per_iteration): whole images of ``per_image`` iterations each
    (1000 = the johnson preset's 10 epochs of 100).
    """
    cfg = cfg or preset_config("johnson")
    contents = [_synthetic(size, 2 * i) for i in range(batch)]
    styles = [_synthetic(size, 2 * i + 1) for i in range(batch)]
    result = stylize_batch(vgg, contents, styles, cfg, epochs=2, max_iter=iterations,
                           shard=shard, execution=execution)
    per_iteration = result.seconds[1] / iterations
    return {"size": size, "batch": batch, "iterations": iterations,
            "compile_s": result.seconds[0] - result.seconds[1],
            "seconds_per_iteration": per_iteration,
            "images_per_hour": batch * 3600.0 / (per_image * per_iteration),
            "device": f"{len(jax.devices())} x {jax.devices()[0].device_kind}"}

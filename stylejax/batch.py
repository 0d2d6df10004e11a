"""Many images at once: N (content, style) pairs optimized by one compiled program.

    result = stylize_batch(vgg, contents, styles, cfg, epochs=10, max_iter=100)
    result.images                       # [N, H, W, 3], pair i as stylize() would make it

The solver's own `init_state` / `run_epoch` are `jax.vmap`-ed over a leading pair axis of
the image, the solver state and the targets (stacked per pair, so each pair may have its own
style). A vmapped line search (a `while_loop`) runs until every pair's search is done, and
pairs that finished early are held unchanged meanwhile, so each pair follows the same path
as alone; the results differ from one-by-one runs only by float rounding (a batched
convolution sums in another order), which L-BFGS amplifies slowly over many iterations.

With several devices the pair axis is sharded over them (see `stylejax.devices`); with
``shard="spatial"`` each image's rows are split instead. Also here: the ``--content-dir``
command line (`run_folder`) and `throughput`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from stylejax import devices as dev
from stylejax import images as imageio
from stylejax.errors import StylejaxError
from stylejax.cpu.hostmem import compile_released
from stylejax.losses import LossConfig, make_targets
from stylejax.solvers import SolverConfig, init_state, run_epoch
from stylejax.vgg import prepare_kernels


@dataclass
class BatchResult:
    """``images``: [N, H, W, 3] float32, the last finite image of each pair; ``losses``:
    [epochs, N] (NaN/inf where a pair's loss broke down); ``seconds``: wall time of each
    epoch (the first includes compilation); ``failed``: {pair: epoch its loss broke down}."""

    images: np.ndarray
    losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    seconds: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)


def _vmapped_init(scfg, vgg, images, targets, cfg):
    return jax.vmap(lambda x, t: init_state(scfg, vgg, x, t, cfg))(images, targets)


@functools.partial(jax.jit, static_argnames=("scfg", "cfg", "mesh"))
def init_batch_state(scfg: SolverConfig, vgg, images, targets, cfg: LossConfig, mesh=None):
    """The solver states of ``images`` [N, 1, H, W, 3] against stacked ``targets`` (every
    leaf with a leading N axis); the state's leaves gain that axis too. ``mesh``: see
    `stylejax.devices` (None: one device)."""
    images, targets = dev.constrain((images, targets), mesh)
    scfg = _solver_for_mesh(scfg, mesh)
    return dev.constrain(_vmapped_init(scfg, vgg, images, targets, cfg), mesh)


def _for_mesh(cfg: LossConfig, mesh) -> LossConfig:
    """``cfg``, with ``conv="auto"`` made direct when ``mesh`` splits the image rows: XLA's
    partitioner exchanges a direct convolution's halos between neighbours, but gathers whole
    activations around Winograd's overlapping tile windows (6 all-gathers at 128 px when
    measured)."""
    if mesh is not None and mesh.shape[dev.SPACE] > 1 and cfg.conv == "auto":
        return dataclasses.replace(cfg, conv="direct")
    return cfg


def _solver_for_mesh(scfg: SolverConfig, mesh) -> SolverConfig:
    """``scfg``, for a program sharded over ``mesh``: the default preconditioning off, an
    explicit one with its DFT as matrix products. XLA's CPU FFT fails a layout check in
    partitioned programs; the products cost 9-20% of a value+grad (192-512 px) and, when the
    mesh splits the rows, gather each image to every device."""
    if mesh is None or mesh.size == 1:
        return scfg
    if scfg.precondition is None:
        return dataclasses.replace(scfg, precondition=0.0)
    return dataclasses.replace(scfg, dft="matmul")


def _shared_vgg_value_and_grad(vgg, cfg):
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
    from stylejax.losses import loss_fn

    def value_and_grad(vgg, x, targets):
        return jax.value_and_grad(loss_fn, argnums=1)(vgg, x, targets, cfg)

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


def _lbfgs_epoch(state, vgg, targets, cfg, scfg):
    """One pair's jaxopt L-BFGS epoch, as `solvers.run_epoch`'s (same solver settings, from
    the solver's private `_jaxopt_lbfgs`), with the objective of
    `_shared_vgg_value_and_grad`."""
    from stylejax.solvers import _jaxopt_iterations, _jaxopt_lbfgs

    vgg = prepare_kernels(vgg, cfg.layers, cfg.conv, cfg.dtype,  # as run_epoch does
                          state.image.shape)
    solver = _jaxopt_lbfgs(scfg, _shared_vgg_value_and_grad(vgg, cfg))
    return _jaxopt_iterations(solver, scfg, state, targets)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "mesh"), donate_argnames=("state",))
def run_batch_epoch(state, vgg, targets, *, cfg: LossConfig, scfg: SolverConfig, mesh=None):
    """`solvers.run_epoch` for every pair at once (one compiled call; ``state`` donated).
    ``state.value`` is [N], ``state.image`` [N, 1, H, W, 3]."""
    state, targets = dev.constrain((state, targets), mesh)
    cfg, scfg = _for_mesh(cfg, mesh), _solver_for_mesh(scfg, mesh)
    if scfg.kind == "lbfgs":
        epoch = lambda s, t: _lbfgs_epoch(s, vgg, t, cfg, scfg)  # noqa: E731
    else:  # optax's line search closes over the objective: nothing to work around
        epoch = lambda s, t: run_epoch(s, vgg, t, cfg=cfg, scfg=scfg)  # noqa: E731
    return dev.constrain(jax.vmap(epoch)(state, targets), mesh)


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
                  optimizer: str = "lbfgs", lr: float = 0.0, init="content", seed: int = 0,
                  callback: Optional[Callable] = None, history: int = 100,
                  style_blend_weights=None, shard: str = "auto",
                  devices=None, precondition: Optional[float] = None) -> BatchResult:
    """Stylizes N same-size contents at once; pair i equals `stylize` of pair i alone.

    Args:
      vgg: the bundle from `load_vgg19`.
      contents: [N, H, W, 3] or a list of N [H, W, 3] RGB images in [0, 1], one size.
      styles: one style image for every pair, or a list of N entries (an image, or a list
        of images blended by ``style_blend_weights``); any sizes.
      cfg, epochs, max_iter, optimizer, lr, history, precondition, init: as in `stylize`
        (precondition's default is off over several devices). ``init="noise"`` gives every
        pair the same noise (``seed``), as N separate runs with that seed would.
      callback: ``callback(epoch, images, losses)`` after every epoch: numpy [N, H, W, 3]
        (each pair's last finite image) and [N].
      shard: "auto" (the pairs over all visible devices, if several), "batch", "spatial"
        (each image's rows over all devices) or "none"; see `stylejax.devices`.
      devices: the devices to use (default: `jax.devices()`).
    Raises:
      StylejaxError: bad arguments, or every pair's loss became NaN/inf.
    """
    from stylejax.driver import initial_image  # the driver imports this module lazily

    if epochs < 1:
        raise StylejaxError(f"The number of epochs must be >= 1, got {epochs}.")
    contents = _image_list(contents)
    n = len(contents)
    styles = _style_list(styles, n)
    scfg = SolverConfig(optimizer, iterations=max_iter, lr=lr, history=history,
                        precondition=precondition)
    mesh = dev.make_mesh(shard, n, devices)
    # Pad the pairs to a multiple of the devices along "batch" by repeating the last pair;
    # the copies are dropped from the result.
    lanes = n if mesh is None else -(-n // mesh.shape[dev.BATCH]) * mesh.shape[dev.BATCH]
    per_pair = [make_targets(vgg, c, s, cfg, style_blend_weights=style_blend_weights)
                for c, s in zip(contents, styles)]
    per_pair += per_pair[-1:] * (lanes - n)
    targets = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *per_pair)
    images = np.stack([np.asarray(initial_image(init, c, seed)) for c in contents]
                      + [np.asarray(initial_image(init, contents[-1], seed))] * (lanes - n))
    # Winograd's kernels made once for all the epochs (the first state, evaluated with direct
    # convolutions, leaves them unused).
    vgg = prepare_kernels(vgg, cfg.layers, cfg.conv, cfg.dtype, images.shape[-3:])
    if mesh is None:
        targets, images = jax.tree.map(jnp.asarray, (targets, images))
    else:
        targets, images = dev.place((targets, images), mesh)
        vgg = dev.replicate(vgg, mesh)
    state = compile_released(init_batch_state, scfg, vgg, images, targets, cfg, mesh=mesh)(
        vgg, images, targets)
    result = BatchResult(images=dev.to_host(state.image)[:n, 0],
                         losses=np.zeros((0, n), np.float32))
    losses = []
    start = time.perf_counter()
    epoch_fn = compile_released(run_batch_epoch, state, vgg, targets, cfg=cfg, scfg=scfg,
                                mesh=mesh)
    for epoch in range(1, epochs + 1):
        state = epoch_fn(state, vgg, targets)
        values = dev.to_host(state.value)[:n]  # the one host sync per epoch
        images_now = dev.to_host(state.image)[:n, 0]
        result.seconds.append(time.perf_counter() - start)
        for i in np.flatnonzero(~np.isfinite(values)):
            result.failed.setdefault(int(i), epoch)
        ok = np.array([i not in result.failed for i in range(n)])
        result.images = np.where(ok[:, None, None, None], images_now, result.images)
        losses.append(values)
        result.losses = np.stack(losses)
        if callback is not None:
            callback(epoch, result.images, values)
        if len(result.failed) == n:
            raise StylejaxError(
                f"The loss of every image became NaN or inf (by epoch {epoch}); stopped: lower "
                "--lr or the loss weights, or use --optimizer optax-lbfgs.")
        start = time.perf_counter()
    return result


# ---------------------------------------------------------------- command line: a folder


def resolve_args(args):
    """Settles ``stylize.py``'s image arguments for a folder (``--content-dir DIR --style
    STYLE`` or ``--content-dir DIR STYLE``) or one image (``CONTENT STYLE``), checks the
    batch flags and calls `jax.distributed.initialize` if asked; returns ``args``."""
    folder = getattr(args, "content_dir", None)
    if folder is not None and args.content is not None:
        # `--content-dir DIR STYLE...`: every positional argument is a style image.
        args.style = [args.content] + list(args.style or [])
        args.content = None
    if folder is not None and not (args.style or getattr(args, "style_images", None)):
        raise StylejaxError("Give the style image too: --content-dir DIR --style STYLE.")
    if folder is None and args.content is None:
        raise StylejaxError("Give a content and a style image (stylize.py CONTENT STYLE), or "
                            "a folder of them (--content-dir DIR --style STYLE).")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise StylejaxError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if dev.wants_distributed(getattr(args, "distributed", False)):
        if folder is None:
            raise StylejaxError(f"--distributed (or ${dev.DISTRIBUTED_ENV}=1) spreads a folder "
                                "over all hosts: use it with --content-dir.")
        dev.initialize_distributed()
    return args


def wants_batch_path(args) -> bool:
    """True if this command line runs through `run_folder`: ``--content-dir``, or one image
    with ``--shard spatial``."""
    return getattr(args, "content_dir", None) is not None or getattr(args, "shard",
                                                                      None) == "spatial"


def _style_paths(args) -> list:
    from stylejax import driver

    if hasattr(driver, "style_paths"):
        return driver.style_paths(args)
    return list(args.style) if isinstance(args.style, (list, tuple)) else [args.style]


def _check_supported(args, rc) -> None:
    what = "--content-dir" if getattr(args, "content_dir", None) else "--shard spatial"
    unsupported = [flag for flag, used in (
        ("--scales", getattr(rc, "scales", None)),
        ("--preserve-colors", getattr(rc, "preserve_colors", None)),
        ("--content-mask", getattr(args, "content_mask", None)),
        ("--style-masks", getattr(args, "style_masks", None)),
        ("--tile", getattr(args, "tile", None)),
        ("--plan", getattr(args, "plan", None)),
        ("--resume", what != "--content-dir" and args.resume)) if used]
    if unsupported:
        raise StylejaxError(f"{what} does not support {', '.join(unsupported)} yet: run "
                            "those images one at a time.")


@dataclass
class _Entry:
    path: Path
    name: str  # output name without ".png"
    size: tuple  # (h, w) after resizing


def _warn(message: str) -> None:
    if dev.is_main_process():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def scan_folder(folder, rc, style_paths, max_pixels) -> list:
    """The usable images in ``folder`` (sorted by name; subfolders ignored) with their
    output names and sizes after resizing; warns (one line on stderr) for each file
    skipped: not an image, unreadable, or too small (with its style) for the layers."""
    from stylejax.driver import prepare_images

    folder = Path(folder)
    if not folder.is_dir():
        raise StylejaxError(f"--content-dir {folder} is not a folder.")
    usable = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:  # exactly what a one-image run would load; the arrays are loaded again later
            content, _ = prepare_images(rc, path, list(style_paths), max_pixels)
        except StylejaxError as e:
            _warn(f"skipped {path.name}: {e}")
            continue
        usable.append(_Entry(path, path.stem, content.shape[:2]))
    stems = [e.name.casefold() for e in usable]
    for e in usable:  # "a.jpg" and "a.png" would both be "a.png": name them in full
        if stems.count(e.name.casefold()) > 1:
            e.name = e.path.name
    return usable


def plan_batches(entries, batch_size: int) -> list:
    """Groups ``entries`` by size and cuts each group into near-equal batches of at most
    ``batch_size``; returns ``[(entries, lanes)]``, lanes the group's largest batch (the
    others are padded to it, so each size compiles once)."""
    groups: dict = {}
    for e in entries:
        groups.setdefault(tuple(e.size), []).append(e)
    batches = []
    for group in groups.values():
        count = math.ceil(len(group) / batch_size)
        per = math.ceil(len(group) / count)
        batches += [(group[i:i + per], per) for i in range(0, len(group), per)]
    return batches


def default_batch_size() -> int:
    """8 images at once on GPU/TPU (or one per device, if more). On CPU one per device:
    one image already keeps the cores busy, and a batch waits for its slowest pair's line
    search (see the README's throughput table)."""
    count = len(jax.devices())
    return count if jax.default_backend() == "cpu" else max(8, count)


LOG_FIELDS = ["name", "epoch", "iterations", "loss", "seconds", "snapshot"]


def _write_log(out: Path, rows) -> None:
    from stylejax.weights import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "losses.csv", buf.getvalue().encode())


def run_folder(args, rc) -> int:
    """``stylize.py --content-dir DIR --style STYLE``: every image in DIR, one compiled
    batch per size, writing ``OUT/<name>.png``, ``OUT/snapshots/<name>_NNNN.png`` and
    ``OUT/losses.csv``. Also ``stylize.py CONTENT STYLE --shard spatial`` (``OUT/final.png``,
    ``OUT/snapshot_NNNN.png``, ``OUT/losses.csv``). Returns the exit status."""
    from tqdm import tqdm

    from stylejax.driver import prepare_images
    from stylejax.weights import load_vgg19

    _check_supported(args, rc)
    folder = getattr(args, "content_dir", None)
    out = imageio.ensure_writable_dir(args.out)
    styles = _style_paths(args)
    for path in styles:  # a bad style stops the run before any work
        imageio.load_image(path, args.max_pixels)
    if folder is not None and out.resolve() == Path(folder).resolve():
        raise StylejaxError("Choose an --out folder other than --content-dir: the results "
                            "would overwrite the inputs.")
    init = rc.init if rc.init in ("content", "noise") else imageio.load_image(rc.init,
                                                                              args.max_pixels)
    if folder is not None:
        entries = scan_folder(folder, rc, styles, args.max_pixels)
        if not entries:
            raise StylejaxError(f"{folder} holds no image that can be stylized.")
        shot_name = "snapshots/{name}_{epoch:04d}.png"
    else:
        content, _ = prepare_images(rc, args.content, styles, args.max_pixels)
        entries = [_Entry(Path(args.content), "final", content.shape[:2])]
        shot_name = "snapshot_{epoch:04d}.png"
    rows, total = [], len(entries)
    if folder is not None and args.resume:
        done = np.array([(out / f"{e.name}.png").is_file() for e in entries])
        if jax.process_count() > 1:  # every host must skip the same images
            from jax.experimental import multihost_utils

            done = np.asarray(multihost_utils.broadcast_one_to_all(done))
        names = {e.name for e, d in zip(entries, done) if d}
        if (out / "losses.csv").is_file():
            with (out / "losses.csv").open() as f:
                rows = [r for r in csv.DictReader(f) if r["name"] in names]
        entries = [e for e, d in zip(entries, done) if not d]
    if args.shard == "spatial":  # refuse a height the devices don't divide before any work
        mesh = dev.make_mesh("spatial")
        for e in entries:
            dev.spec((1, 1, *e.size, 3), mesh)
    vgg = load_vgg19(args.weights)
    batches = plan_batches(entries, args.batch_size or default_batch_size())
    main = dev.is_main_process()
    bar = tqdm(total=len(batches) * rc.epochs, unit="epoch", file=sys.stderr,
               dynamic_ncols=True, disable=not main)
    try:
        for chunk, lanes in batches:
            pairs = [prepare_images(rc, e.path, styles, args.max_pixels) for e in chunk]
            pairs += pairs[-1:] * (lanes - len(chunk))  # same count: one compile per size
            last = [time.perf_counter()]

            def on_epoch(epoch, images, losses, chunk=chunk, last=last):
                now = time.perf_counter()
                snap = epoch % rc.snapshot_every == 0 or epoch == rc.epochs
                for e, image, loss in zip(chunk, images, losses):
                    shot = shot_name.format(name=e.name, epoch=epoch) if snap else ""
                    if shot and main:
                        imageio.save_image(out / shot, image)
                    rows.append({"name": e.name, "epoch": epoch,
                                 "iterations": epoch * rc.max_iter, "loss": float(loss),
                                 "seconds": now - last[0], "snapshot": shot})
                if main:
                    _write_log(out, rows)
                bar.set_postfix_str(f"{chunk[0].size[1]}x{chunk[0].size[0]} px, "
                                    f"{len(chunk)} images, mean loss "
                                    f"{np.mean(losses[:len(chunk)]):.4g}")
                bar.update(1)
                last[0] = now

            result = stylize_batch(
                vgg, [c for c, _ in pairs], [s for _, s in pairs], rc.loss, epochs=rc.epochs,
                max_iter=rc.max_iter, optimizer=rc.optimizer, lr=rc.lr, init=init,
                seed=rc.seed, callback=on_epoch, history=rc.history, shard=args.shard,
                precondition=rc.precondition,
                style_blend_weights=getattr(rc, "style_blend_weights", None))
            for i, e in enumerate(chunk):
                if main:
                    imageio.save_image(out / f"{e.name}.png", result.images[i])
                if i in result.failed:
                    _warn(f"the loss of {e.path.name} became {result.losses[-1, i]} in epoch "
                          f"{result.failed[i]}; wrote its last finite image.")
    finally:
        bar.close()
    if main:
        skipped = total - len(entries)
        print(f"wrote {len(entries)} image(s) to {out} in {len(batches)} batch(es) of "
              f"{rc.epochs * rc.max_iter} iterations" +
              (f"; {skipped} already done" if skipped else ""))
    return 0


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
               shard: str = "auto") -> dict:
    """Images per hour that `stylize_batch` sustains for ``batch`` pairs of ``size`` px.

    Runs two epochs of ``iterations`` L-BFGS iterations (line search, johnson preset unless
    ``cfg``) on synthetic images; the first compiles, the second is timed. Returns
    ``{"size", "batch", "iterations", "compile_s", "seconds_per_iteration",
    "images_per_hour", "device"}`` where images_per_hour = batch · 3600 /
    (per_image · seconds_per_iteration): whole images of ``per_image`` iterations each
    (1000 = the johnson preset's 10 epochs of 100).
    """
    from stylejax.losses import preset_config

    cfg = cfg or preset_config("johnson")
    contents = [_synthetic(size, 2 * i) for i in range(batch)]
    styles = [_synthetic(size, 2 * i + 1) for i in range(batch)]
    result = stylize_batch(vgg, contents, styles, cfg, epochs=2, max_iter=iterations,
                           shard=shard)
    per_iteration = result.seconds[1] / iterations
    return {"size": size, "batch": batch, "iterations": iterations,
            "compile_s": result.seconds[0] - result.seconds[1],
            "seconds_per_iteration": per_iteration,
            "images_per_hour": batch * 3600.0 / (per_image * per_iteration),
            "device": f"{len(jax.devices())} x {jax.devices()[0].device_kind}"}

"""``stylize.py --content-dir DIR --style STYLE`` (and one image with ``--shard spatial``):
many images through `stylejax.batch.stylize_batch`, one compiled batch per size."""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

import stylejax.devices as dev
import stylejax.images as imageio
from stylejax.batch import stylize_batch
from stylejax.cli.inputs import prepare_images
from stylejax.cli.options import style_paths
from stylejax.errors import StylejaxError
from stylejax.weights import atomic_write_bytes, load_vgg19


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
    search (see docs/batch.md, "Throughput")."""
    count = len(jax.devices())
    return count if jax.default_backend() == "cpu" else max(8, count)


LOG_FIELDS = ["name", "epoch", "iterations", "loss", "seconds", "snapshot"]


def _write_log(out: Path, rows) -> None:
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
    _check_supported(args, rc)
    folder = getattr(args, "content_dir", None)
    out = imageio.ensure_writable_dir(args.out)
    styles = style_paths(args)
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
                precondition=rc.precondition, execution=rc.execution,
                style_blend_weights=rc.style_blend_weights)
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

"""``stylize.py CONTENT STYLE [flags]``: one image (coarse to fine, or by tiles), or a folder.

Every run consumes the library's one epoch loop (`stylejax.run.stylize_epochs`, or its tiled
form): this module adds the files (`outputs`), the progress bar, Ctrl-C, --resume and the
page of --serve (`serve`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np
from tqdm import tqdm

import stylejax.images as imageio
import stylejax.plan as memory_plan
import stylejax.cli.folder as folder
from stylejax.cli.exits import guarded
from stylejax.cli.inputs import prepare_images, prepare_masks
from stylejax.cli.options import RunConfig, build_parser, run_config, solver_config, style_paths
from stylejax.cli.outputs import Outputs, StopOnSignal, identity
from stylejax.cli.serve import Watch
from stylejax.convert.downloads import cache_dir
from stylejax.cpu.hostmem import keep_step_heap
from stylejax.errors import StylejaxError
from stylejax.presets import network_warning
from stylejax.run import stylize_epochs
from stylejax.tiling import check_tile, default_overlap, tiled_epochs
from stylejax.weights import load_vgg19


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``stylize.py CONTENT STYLE [flags]``; returns the exit status."""
    return guarded(_main, argv, "the snapshots and the last checkpoint are kept (resume "
                                "with the same command and --resume).")


def tune_process(cache: Optional[Path] = None) -> None:
    """The command line's process-wide settings (its `--help` says so): compiled XLA programs
    kept in ``cache`` (default ``$STYLEJAX_CACHE/xla``, that is ``~/.cache/stylejax/xla``)
    so a second run with the same sizes skips the first epoch's compilation (programs that
    compiled in under 0.1 s are not kept; JAX's default, 1 s, left out the targets' and the
    initial state's: 1.3 s of a warm 192 px run); glibc's malloc thresholds fixed
    (`hostmem.keep_step_heap`); and XLA's CPU note that it cannot reuse donated buffers
    silenced (donation pays on GPU/TPU; on the CPU it would print on every compile)."""
    jax.config.update("jax_compilation_cache_dir", str(cache or cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    keep_step_heap()
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


def tiles(args, rc: RunConfig, shape):
    """``(overlap, (th, tw))`` of a ``--tile`` run on an image of ``shape`` (H, W, ...), or
    None without --tile; StylejaxError for a tile too small or a bad overlap."""
    if not getattr(args, "tile", None):
        return None
    overlap = default_overlap(args.tile) if args.tile_overlap is None else args.tile_overlap
    return overlap, check_tile(args.tile, overlap, *shape[:2], rc.loss.layers)


def check_plan(args, rc: RunConfig, shape) -> bool:
    """The memory check, before any work: with ``--plan`` prints the plan and returns True
    (exit 0); otherwise raises StylejaxError if the run will not fit, else returns False.
    ``shape``: the prepared content image's (H, W, ...)."""
    h, w = shape[:2]
    scfg = solver_config(rc)
    tile = (tiles(args, rc, shape) or (None, None))[1]
    if getattr(args, "plan", False):
        table = memory_plan.predict(rc.loss, scfg, h, w, tile, execution=rc.execution)
        print(memory_plan.format_plan(table, memory_plan.free_memory(), h, w, tile))
        return True
    memory_plan.check(rc.loss, scfg, h, w, tile, execution=rc.execution)
    return False


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    tune_process()
    args = folder.resolve_args(args)
    rc = run_config(args)
    if args.serve is None or args.plan:
        return _run(args, rc)
    if folder.wants_batch_path(args):
        raise StylejaxError("--serve watches one image's run: drop it for --content-dir and "
                            "--shard spatial.")
    watch = Watch(args.serve, args.serve_host)  # a port that cannot be bound: before any work
    print(f"watch the run at {watch.url}", file=sys.stderr, flush=True)
    try:
        code = _run(args, rc, watch)
        if code == 0:
            watch.linger()
        return code
    finally:
        watch.close()


def _run(args, rc: RunConfig, watch: Optional[Watch] = None) -> int:
    """The run itself; ``watch``: the page of --serve to keep up to date, if any."""
    if folder.wants_batch_path(args):
        return folder.run_folder(args, rc)
    paths = style_paths(args)
    content, styles = prepare_images(rc, args.content, paths, args.max_pixels)
    content_masks, style_masks = prepare_masks(args, content, styles, args.max_pixels)
    init = rc.init if rc.init in ("content", "noise") else imageio.load_image(rc.init,
                                                                              args.max_pixels)
    if args.tile and (args.resume or rc.scales or args.content_mask or args.style_masks):
        raise StylejaxError("--tile cannot be combined with --resume, --scales or masks: "
                            "drop those flags or --tile.")
    if check_plan(args, rc, content.shape):
        return 0
    vgg = load_vgg19(args.weights)
    warning = network_warning(args.preset, vgg.normalized)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    out = imageio.ensure_writable_dir(args.out)
    mask_paths = list(args.content_mask or []) + [p for p in args.style_masks or []
                                                  if p.lower() != "none"]
    outputs = Outputs(out, rc, identity(rc, args.content, *paths, *mask_paths))
    resume = outputs.resume() if args.resume else None
    common = dict(epochs=rc.epochs, init=init, seed=rc.seed,
                  style_blend_weights=rc.style_blend_weights,
                  preserve_colors=rc.preserve_colors, execution=rc.execution)
    if args.tile:
        overlap, (th, tw) = tiles(args, rc, content.shape)
        n = math.ceil(max(content.shape[0] - overlap, 1) / max(th - overlap, 1)) * \
            math.ceil(max(content.shape[1] - overlap, 1) / max(tw - overlap, 1))
        print(f"tiling: {tw}x{th} px tiles, overlap {overlap} px, about {n} tiles an epoch",
              file=sys.stderr)
        steps = tiled_epochs(vgg, content, styles, rc.loss, solver_config(rc), tile=args.tile,
                             overlap=overlap, **common)
        scales = 1
    else:
        steps = stylize_epochs(vgg, content, styles, rc.loss, solver_config(rc),
                               scales=rc.scales, edge=rc.edge, content_masks=content_masks,
                               style_masks=style_masks, resume=resume, **common)
        scales = len(rc.scales or [None])
    return _consume(steps, outputs, rc, content, scales, resume, checkpoints=not args.tile,
                    watch=watch)


def _consume(steps, outputs: Outputs, rc: RunConfig, content, scales: int, resume,
             checkpoints: bool, watch: Optional[Watch] = None) -> int:
    """Runs the loop ``steps``, writing each epoch's files (and showing them on ``watch``'s
    page); returns the exit status."""
    total = rc.epochs * scales
    done = resume[0] if resume else 0
    image = np.asarray(resume[1]["image"]) if resume and done >= total else content[None]
    bar = tqdm(total=total, initial=min(done, total), unit="epoch", file=sys.stderr,
               dynamic_ncols=True)
    stopped, clock = None, time.perf_counter()
    if watch:
        watch.start(done, total, [e["loss"] for e in outputs.log], outputs.curve_png)
    try:
        with StopOnSignal() as stop:
            for step in steps:
                now = time.perf_counter()
                image, done = step.image, step.epoch
                snapshot = outputs.epoch(step.epoch, image, step.loss, now - clock,
                                         last=step.last_of_scale)
                h, w = step.size
                bar.set_postfix_str(f"loss {step.loss:.4g}, {rc.max_iter / (now - clock):.2f} "
                                    "it/s" + (f", {w}x{h} px" if step.scales > 1 else ""))
                bar.update(1)
                if watch:
                    watch.epoch(step, rc.max_iter / (now - clock),
                                [e["loss"] for e in outputs.log], outputs.curve_png)
                clock = now
                # Read the flag once, after the bookkeeping: a signal landing between a
                # checkpoint's test and the break would stop without a checkpoint.
                stopped = stop.requested
                if checkpoints and (snapshot or stopped):
                    outputs.checkpoint(step.epoch, step.state)
                if stopped:
                    break
    except StylejaxError:
        outputs.finish(content, image, "last.png")
        raise
    finally:
        bar.close()
    out = outputs.out
    if stopped:
        outputs.finish(content, image, "last.png")
        print(f"error: stopped by {stopped} after epoch {done}; wrote {out / 'last.png'} "
              + ("and a checkpoint: run the same command with --resume to continue."
                 if checkpoints else "(tiled runs keep no checkpoint)."), file=sys.stderr)
        return 130
    outputs.finish(content, image)
    if watch:
        watch.finish(image)
    loss = f"loss {outputs.log[-1]['loss']:.6g} after " if outputs.log else ""
    print(f"wrote {out / 'final.png'} ({loss}{done * rc.max_iter} iterations"
          + (f" over {scales} scales" if scales > 1 else "") + ")")
    return 0

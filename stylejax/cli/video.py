"""``stylize_video.py INPUT STYLE --out DIR [flags]``: a video, every frame held to its
neighbours by the temporal loss (Ruder et al. 2016/2018; `stylejax.video`).

INPUT is a video file (anything FFmpeg reads through PyAV: mp4, mov, webm, gif, ...) or a
folder of frames (sorted by name). Writes DIR/frames/00001.png, ... (as each frame finishes,
or after each pass in multipass mode), DIR/losses.csv and DIR/losses.json (a row per frame
and pass), DIR/flow/*.npz (the optical flows, reused by a later run on the same frames),
DIR/progress.json and DIR/state/ (what --resume continues from) and, at the end,
DIR/<stem>.mp4 (H.264, yuv420p, the input's frame rate, its audio with --keep-audio). Every
file is written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

import stylejax.colour as colour
import stylejax.images as imageio
import stylejax.multipass as multipass
import stylejax.plan as memory_plan
from stylejax.cli import media
from stylejax.cli.exits import guarded
from stylejax.cli.options import _floats, _ints, _layers, _Parser, run_config, solver_config
from stylejax.cli.outputs import StopOnSignal
from stylejax.cli.video_files import FlowCache, Progress, identity
from stylejax.cli.stylize import tune_process
from stylejax.clip import FrameFlows, as_frames, check_offsets
from stylejax.errors import StylejaxError
from stylejax.execution import CONVS, DTYPES, Execution
from stylejax.presets import PRESETS, network_warning
from stylejax.run import check_stages, stage_sizes
from stylejax.solvers import OPTIMIZERS, SolverConfig
from stylejax.video import MODES, colour_clip, default_mode, shown_frames, video_epochs
from stylejax.weights import load_vgg19

try:  # the `video` extra: OpenCV
    from stylejax import flow as optflow
except ImportError:
    optflow = None

# artistic-videos' default temporal weight, 1e3 on the 0-255 image's mean squared difference,
# is 1e3 · 255² on our [0, 1] image; chosen for the johnson preset's loss scale.
DEFAULT_TEMPORAL_WEIGHT = 1e3 * 255.0 ** 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize_video.py", description=(
        "Neural style transfer for videos (Ruder et al. 2016/2018): every frame is held to "
        "its neighbours, warped by the optical flow, by a temporal loss. sequential: frame "
        "after frame, each starting from the previous one warped; multipass: all frames "
        "together, pass after pass. Keeps compiled programs in a cache and sets malloc "
        "thresholds for its own process, as stylize.py does."))
    p.add_argument("input", help="a video file (mp4, mov, webm, gif, ...) or a folder of "
                                 "frames (sorted by name; one size)")
    p.add_argument("style", nargs="+", help="style image(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=MODES, help="sequential (default on CPU) or multipass "
                                                 "(default on GPU/TPU)")
    p.add_argument("--temporal-weight", type=float, default=DEFAULT_TEMPORAL_WEIGHT,
                   help="weight of the temporal loss (default 1e3·255², artistic-videos' "
                        "1e3 on our [0, 1] pixels; 0: no temporal term)")
    p.add_argument("--long-term", type=_ints, default=(1,), metavar="J,J,...",
                   help="hold each frame to the frames this many apart (default 1: the "
                        "neighbour; the paper's long-term choice: 1,2,4)")
    p.add_argument("--passes", type=int, default=multipass.PASSES,
                   help=f"multipass: passes over the clip (default {multipass.PASSES}), "
                        "each --max-iter iterations")
    p.add_argument("--temporal-from", type=int, metavar="PASS",
                   help="multipass: first pass with the temporal loss (default: the second "
                        "half of the passes, the paper's 8 of 15; pass 1 has no neighbours' "
                        "results yet, so 1 acts as 2)")
    p.add_argument("--blend", type=float, default=1.0,
                   help="multipass: weight δ of the warped neighbour in each pass's start "
                        "(default 1)")
    p.add_argument("--chunk", type=int, metavar="N",
                   help="multipass: frames per program (default: as many as fit in memory, "
                        f"at most {multipass.MAX_CHUNK})")
    p.add_argument("--shard", choices=("auto", "batch", "none"), default="auto",
                   help="multipass: spread each chunk's frames over the devices (auto: "
                        "when there are several)")
    p.add_argument("--flow", choices=("dis-medium", "dis-fine", "farneback"),
                   default="dis-medium", help="optical flow (OpenCV; default dis-medium)")
    p.add_argument("--fps", type=float, help="frame rate of the output (default: the input "
                                             f"video's; {media.DEFAULT_FPS} for a folder of "
                                             "frames, whose --start/--end it also times)")
    p.add_argument("--start", type=float, metavar="S", help="first second to stylize")
    p.add_argument("--end", type=float, metavar="S", help="second to stop at (exclusive)")
    p.add_argument("--frames", type=int, metavar="N", help="at most N frames")
    p.add_argument("--keep-audio", action="store_true",
                   help="copy the input's audio (the stylized span) into the video")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last finished frame "
                        "(sequential) or pass (multipass); same command otherwise")
    p.add_argument("--weights", help="converted VGG-19 (default: $STYLEJAX_WEIGHTS or "
                                     "weights/vgg19.msgpack)")
    p.add_argument("--preset", default="johnson", help=f"one of {', '.join(PRESETS)} "
                                                       "(default: johnson)")
    p.add_argument("--size", type=int, help="frame size in px (long side; seed: short side)")
    p.add_argument("--epochs", type=int, help="sequential: epochs (compiled solver calls) "
                                              "per frame")
    p.add_argument("--first-epochs", type=int, metavar="N",
                   help="sequential: epochs of the first frame, which starts from scratch "
                        "(default: --epochs; the paper gives it twice the others')")
    p.add_argument("--max-iter", type=int, help="solver iterations per epoch (sequential) "
                                                "or per pass (multipass)")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=SolverConfig.kind,
                   help="sequential: any; multipass: lbfgs")
    p.add_argument("--lbfgs-history", type=int, default=SolverConfig.history)
    p.add_argument("--init", choices=("content", "noise"), default="content",
                   help="how the first frame (sequential) or pass (multipass) starts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--content-weight", type=float)
    p.add_argument("--style-weight", type=float)
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--pooling", choices=("max", "avg"))
    p.add_argument("--content-layers", type=_layers)
    p.add_argument("--style-layers", type=_layers)
    p.add_argument("--style-layer-weights", type=_floats)
    p.add_argument("--style-blend-weights", type=_floats, nargs="+", metavar="W")
    p.add_argument("--style-scale", type=float, default=1.0)
    p.add_argument("--preserve-colors", choices=("none",) + colour.MODES, default="none",
                   help="luminance: transfer on the frames' luminance and keep their chroma; "
                        "histogram: match the styles' colour statistics to the clip's")
    p.add_argument("--precision", choices=("f32", "bf16") + DTYPES, default=Execution.dtype)
    p.add_argument("--conv", choices=CONVS, default=Execution.conv)
    p.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS)
    # stylize.py's flags that a video run does not take: fixed here so run_config reads them.
    p.set_defaults(style_images=None, snapshot_every=None, scales=None, precondition=0.0,
                   style_masks=None, content_mask=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``stylize_video.py INPUT STYLE --out DIR [flags]``; returns the exit status."""
    return guarded(_main, argv, "the frames written so far are kept (run the same command "
                                "with --resume to continue from the last finished frame or "
                                "pass, if any).")


def _check(args) -> None:
    checks = [(args.frames is None or args.frames >= 1, f"--frames must be >= 1, got {args.frames}"),
              (args.fps is None or args.fps > 0, f"--fps must be > 0, got {args.fps}"),
              (args.temporal_weight >= 0, f"--temporal-weight must be >= 0, got "
                                          f"{args.temporal_weight}"),
              (args.passes >= 1, f"--passes must be >= 1, got {args.passes}"),
              (args.temporal_from is None or 1 <= args.temporal_from <= args.passes,
               f"--temporal-from must be a pass, 1 to --passes ({args.passes}), got "
               f"{args.temporal_from}"),
              (args.blend >= 0, f"--blend must be >= 0, got {args.blend}"),
              (args.chunk is None or args.chunk >= 1, f"--chunk must be >= 1, got {args.chunk}"),
              (args.first_epochs is None or args.first_epochs >= 1,
               f"--first-epochs must be >= 1, got {args.first_epochs}")]
    for ok, message in checks:
        if not ok:
            raise StylejaxError(message + ".")
    check_offsets(args.long_term)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    rc = run_config(args)
    media.need_extra(optflow, "Optical flow")
    mode = args.mode or default_mode()
    if mode == "multipass" and rc.optimizer != "lbfgs":
        raise StylejaxError("--mode multipass runs L-BFGS: drop --optimizer, or use --mode "
                            "sequential.")
    tune_process()
    # Everything is read and checked before anything is written.
    size = []  # the output size, fixed by the first frame; each frame is resized as read

    def prepare(image):
        size[:] = size or imageio.fit_size(*image.shape[:2], rc.size, rc.edge)
        return imageio.resize(image, *size)

    clip = media.read_input(args.input, args.frames, args.max_pixels, args.start, args.end,
                            args.fps or media.DEFAULT_FPS, prepare)
    frames = as_frames(clip.frames)
    clip.frames = []  # one copy of the frames, not two
    h, w = frames.shape[1:3]
    styles = [imageio.load_image(p, args.max_pixels) for p in args.style]
    styles = [imageio.resize(s, h, w) if rc.style_to_content_size else imageio.resize(
        s, *imageio.fit_size(*s.shape[:2], max(1, round(max(h, w) * rc.style_scale)), "long"))
        for s in styles]
    check_stages(frames.shape[1:], [s.shape for s in styles], stage_sizes(h, w), rc.loss.layers,
                 None, " (raise --size or --style-scale)")
    originals = frames  # the flow and the colours come from these
    frames, styles = colour_clip(rc.preserve_colors, frames, styles)
    scfg = solver_config(rc)
    memory_plan.check(rc.loss, scfg, h, w, execution=rc.execution)  # one frame
    fps = Fraction(args.fps).limit_denominator(1001) if args.fps else clip.fps
    if fps is None:
        fps = Fraction(media.DEFAULT_FPS)
        print(f"note: no frame rate given; the video is written at {media.DEFAULT_FPS} fps "
              "(set --fps).", file=sys.stderr)
    codec = media.encoder()
    if codec is None:
        print("note: no H.264 encoder (PyAV with libx264) here: writing PNG frames only.",
              file=sys.stderr)
    if args.keep_audio and clip.source is None:
        print("note: a folder of frames has no audio to keep.", file=sys.stderr)
    vgg = load_vgg19(args.weights)
    warning = network_warning(args.preset, vgg.normalized)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    total = len(frames) if mode == "sequential" else args.passes
    progress = Progress(Path(args.out), {}, mode, frames.shape, total, lambda k, image: (
        shown_frames(rc.preserve_colors, image, np.broadcast_to(originals[k], image.shape))))
    chunk = None
    if mode == "multipass":  # resolved here: it changes the result, so --resume must keep it
        chunk = args.chunk or (progress.recorded("chunk") if args.resume else None)
        chunk, _ = multipass.chunk_plan(rc.loss, scfg, h, w, len(frames),
                                        len(args.long_term), rc.execution, chunk, args.shard)
    progress.identity = identity(args, rc, mode, frames, chunk)
    done, results = progress.resume() if args.resume else (0, None)
    out = imageio.ensure_writable_dir(args.out)
    cfg = dataclasses.replace(rc.loss, temporal_weight=args.temporal_weight)
    flows = FrameFlows(originals, FlowCache(out / "flow", args.flow, optflow.optical_flow),
                       args.long_term)
    clock = time.perf_counter()
    finished = done >= total
    try:
        if not finished:
            stopped, results = _stylize(mode, args, rc, scfg, vgg, frames, styles, cfg, flows,
                                        progress, done, results, chunk)
            if stopped:
                print(f"error: stopped by {stopped} after {_unit(mode, progress.done)}; "
                      f"the frames so far are in {out / 'frames'}: run the same command with "
                      "--resume to continue.", file=sys.stderr)
                return 130
    finally:
        flows.close()
    seconds = time.perf_counter() - clock
    if flows.seconds:
        print(f"optical flow: {flows.seconds:.1f} s on a worker thread, {flows.waited:.1f} s "
              f"of it waited for ({100 * flows.waited / max(seconds, 1e-9):.0f}% of the "
              f"{seconds:.1f} s run)", file=sys.stderr)
    if codec is None:
        progress.clean()
        print(f"wrote {len(frames)} frames to {out / 'frames'} (no video: no H.264 encoder)")
        return 0
    video = out / f"{clip.stem}.mp4"
    shown = results if finished else np.stack([progress.shown(k, r) for k, r in
                                               enumerate(results)])
    audio = media.write_video(video, shown, fps, codec,
                              clip.source if args.keep_audio else None, clip.start)
    progress.clean()
    print(f"wrote {video} ({len(frames)} frames, {w}x{h} px, {float(fps):g} fps"
          + (f", audio {audio}" if args.keep_audio and clip.source is not None else "")
          + f") and {out / 'frames'}")
    return 0


def _unit(mode: str, n: int) -> str:
    what = "frame" if mode == "sequential" else "pass"
    return f"{n} finished {what}{'' if n == 1 else ('s' if what == 'frame' else 'es')}"


def _stylize(mode, args, rc, scfg, vgg, frames, styles, cfg, flows, progress, done, results,
             chunk):
    """Runs the mode's loop from ``done``, writing as frames or passes finish; returns
    (the signal that stopped it or None, the results [T, H, W, 3] so far)."""
    t = len(frames)
    common = dict(init=rc.init, seed=rc.seed, style_blend_weights=rc.style_blend_weights,
                  execution=rc.execution)
    out = np.zeros_like(frames)
    if results is not None:
        out[:len(results)] = results
    if mode == "sequential":
        steps = video_epochs(vgg, frames, styles, cfg, scfg, epochs=rc.epochs, flows=flows,
                             resume=results, first_epochs=args.first_epochs, **common)
        bar = tqdm(total=t, initial=done, unit="frame", file=sys.stderr, dynamic_ncols=True)
        finished = _finished_frames(steps, progress, bar, out)
    else:
        steps = multipass.multipass(
            vgg, frames, styles, cfg, scfg, passes=args.passes, flows=flows,
            temporal_from=args.temporal_from, blend=args.blend, chunk=chunk,
            shard=args.shard, resume=(done, results) if done else None, **common)
        bar = tqdm(total=t * args.passes, initial=done * t, unit="frame", file=sys.stderr,
                   dynamic_ncols=True)
        finished = _finished_passes(steps, progress, bar, out)
    try:
        with StopOnSignal() as stop:
            for _ in finished:  # each a frame or pass written
                if stop.requested:  # read after the bookkeeping: the record is complete
                    return stop.requested, out
    finally:
        bar.close()
    return None, out


def _finished_frames(steps, progress, bar, out):
    """Sequential: writes each frame as it finishes (into ``out`` too); yields after each."""
    clock = time.perf_counter()
    for step in steps:
        bar.set_postfix_str(f"epoch {step.epoch}, loss {step.loss:.4g}")
        if not step.last_of_scale:
            continue
        now = time.perf_counter()
        out[step.frame] = step.image[0]
        progress.frame(step.frame, step.image[0], [{
            "frame": step.frame + 1, "pass": "", "file": progress.frame_file(step.frame),
            "loss": step.loss, "seconds": now - clock, "consistent": step.weights}])
        bar.update(1)
        clock = now
        yield


def _finished_passes(steps, progress, bar, out):
    """Multipass: logs each chunk, writes every frame when a pass finishes (into ``out``
    too); yields after each pass."""
    rows, clock = [], time.perf_counter()
    for step in steps:
        now = time.perf_counter()
        bar.set_postfix_str(f"pass {step.number}/{step.passes} "
                            f"{'forward' if step.direction > 0 else 'backward'}"
                            f"{', temporal' if step.temporal else ''}, loss "
                            f"{np.nanmean(step.losses):.4g}")
        bar.update(len(step.frames))
        rows += [{"frame": k + 1, "pass": step.number, "file": progress.frame_file(k),
                  "loss": float(step.losses[k]), "seconds": (now - clock) / len(step.frames),
                  "consistent": ""} for k in step.frames]
        clock = now
        if step.last_of_pass:
            out[:] = step.images
            progress.finished_pass(step.number, step.images,
                                   sorted(rows, key=lambda r: r["frame"]))
            rows = []
            yield

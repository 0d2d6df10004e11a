"""``stylize_video.py INPUT STYLE --out DIR [flags]``: a video, frame by frame, each frame held
to the previous one by the temporal loss (Ruder et al. 2016; `stylejax.video`).

INPUT is a video file (anything FFmpeg reads through PyAV: mp4, mov, webm, gif, ...) or a
folder of frames (sorted by name). Writes DIR/frames/00001.png, ... as each frame finishes,
DIR/losses.csv and DIR/losses.json (one row per frame), DIR/flow/*.npz (the optical flows,
reused by a later run on the same frames) and, at the end, DIR/<stem>.mp4 (H.264, yuv420p,
the input's frame rate). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

import stylejax.images as imageio
from stylejax.cli.exits import guarded
from stylejax.cli.options import _floats, _layers, _Parser, run_config, solver_config
from stylejax.cli.stylize import tune_process
from stylejax.errors import StylejaxError
from stylejax.execution import CONVS, DTYPES, Execution
from stylejax.presets import PRESETS, network_warning
from stylejax.run import check_stages, stage_sizes
from stylejax.solvers import OPTIMIZERS, SolverConfig
from stylejax.video import as_frames, video_epochs
from stylejax.weights import atomic_write_bytes, load_vgg19

try:  # the `video` extra: PyAV (FFmpeg) and OpenCV
    import av
except ImportError:
    av = None
try:
    from stylejax import flow as optflow
except ImportError:
    optflow = None

# artistic-videos' default temporal weight, 1e3 on the 0-255 image's mean squared difference,
# is 1e3 · 255² on our [0, 1] image; chosen for the johnson preset's loss scale.
DEFAULT_TEMPORAL_WEIGHT = 1e3 * 255.0 ** 2
DEFAULT_FPS = 25
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif")
ENCODERS = ("libx264", "h264", "libopenh264")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize_video.py", description=(
        "Neural style transfer for videos (Ruder et al. 2016): each frame is stylized in "
        "turn, starting from the previous result warped by the optical flow, with a temporal "
        "loss that keeps consecutive frames consistent. Keeps compiled programs in a cache "
        "and sets malloc thresholds for its own process, as stylize.py does."))
    p.add_argument("input", help="a video file (mp4, mov, webm, gif, ...) or a folder of "
                                 "frames (sorted by name; one size)")
    p.add_argument("style", nargs="+", help="style image(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--temporal-weight", type=float, default=DEFAULT_TEMPORAL_WEIGHT,
                   help="weight of the temporal loss (default 1e3·255², artistic-videos' "
                        "1e3 on our [0, 1] pixels; 0: no temporal term)")
    p.add_argument("--flow", choices=("dis-medium", "dis-fine", "farneback"),
                   default="dis-medium", help="optical flow (OpenCV; default dis-medium)")
    p.add_argument("--fps", type=float, help=f"frame rate of the output video for a folder "
                                             f"of frames (default {DEFAULT_FPS}); a video "
                                             "keeps its own")
    p.add_argument("--frames", type=int, metavar="N", help="only the first N frames")
    p.add_argument("--weights", help="converted VGG-19 (default: $STYLEJAX_WEIGHTS or "
                                     "weights/vgg19.msgpack)")
    p.add_argument("--preset", default="johnson", help=f"one of {', '.join(PRESETS)} "
                                                       "(default: johnson)")
    p.add_argument("--size", type=int, help="frame size in px (long side; seed: short side)")
    p.add_argument("--epochs", type=int, help="epochs (compiled solver calls) per frame")
    p.add_argument("--max-iter", type=int, help="solver iterations per epoch")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=SolverConfig.kind)
    p.add_argument("--lbfgs-history", type=int, default=SolverConfig.history)
    p.add_argument("--init", choices=("content", "noise"), default="content",
                   help="how the first frame starts (later frames: the previous one warped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--content-weight", type=float)
    p.add_argument("--style-weight", type=float)
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--content-layers", type=_layers)
    p.add_argument("--style-layers", type=_layers)
    p.add_argument("--style-layer-weights", type=_floats)
    p.add_argument("--style-blend-weights", type=_floats, nargs="+", metavar="W")
    p.add_argument("--style-scale", type=float, default=1.0)
    p.add_argument("--precision", choices=("f32", "bf16") + DTYPES, default=Execution.dtype)
    p.add_argument("--conv", choices=CONVS, default=Execution.conv)
    p.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS)
    # stylize.py's flags that a video run does not take: fixed here so run_config reads them.
    p.set_defaults(style_images=None, pooling=None, snapshot_every=None,
                   preserve_colors="none", scales=None, precondition=0.0, style_masks=None,
                   content_mask=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``stylize_video.py INPUT STYLE --out DIR [flags]``; returns the exit status."""
    return guarded(_main, argv, "the frames written so far are kept.")


def _need(module, what: str):
    if module is None:
        raise StylejaxError(f"{what} needs the video extra: pip install 'stylejax[video]' "
                            "(opencv-python-headless and av).")
    return module


def read_video(path: Path, limit: Optional[int], max_pixels: int):
    """(frames [T, H, W, 3] float32 in [0, 1], fps as a Fraction or None) of a video file."""
    _need(av, "Reading a video file")
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:
                    raise StylejaxError(f"{path} has {frame.width}x{frame.height} px frames, "
                                        f"more than --max-pixels {max_pixels}.")
                frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0)
                if limit and len(frames) >= limit:
                    break
    except (av.FFmpegError, IndexError, OSError) as e:
        raise StylejaxError(f"Cannot read the video {path}: {e}.") from None
    if not frames:
        raise StylejaxError(f"{path} holds no video frames.")
    return frames, (Fraction(fps).limit_denominator(1001) if fps else None)


def read_folder(path: Path, limit: Optional[int], max_pixels: int):
    """The frames of a folder of images, sorted by name; refuses mixed sizes."""
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in imageio.IMAGE_SUFFIXES)
    if not files:
        raise StylejaxError(f"{path} holds no images ({', '.join(imageio.IMAGE_SUFFIXES)}): "
                            "put the video's frames there.")
    files = files[:limit] if limit else files
    frames = [imageio.load_image(f, max_pixels) for f in files]
    for f, img in zip(files, frames):
        if img.shape != frames[0].shape:
            raise StylejaxError(
                f"Frame {f.name} is {img.shape[1]}x{img.shape[0]} px but {files[0].name} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} px: every frame must have one "
                "size.")
    return frames


def read_input(path, limit: Optional[int], max_pixels: int):
    """(frames list of [H, W, 3], fps Fraction or None, stem) from a video file or a folder."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path, limit, max_pixels), None, path.resolve().name
    if not path.is_file():
        raise StylejaxError(f"{path} does not exist: give a video file or a folder of frames.")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise StylejaxError(f"{path} is not a video ({', '.join(VIDEO_SUFFIXES)}) or a "
                            "folder of frames.")
    frames, fps = read_video(path, limit, max_pixels)
    return frames, fps, path.stem


def encoder() -> Optional[str]:
    """The first H.264 encoder PyAV has, or None."""
    if av is None:
        return None
    for name in ENCODERS:
        try:
            av.Codec(name, "w")
            return name
        except (ValueError, av.FFmpegError):
            continue
    return None


def write_video(path: Path, frames, fps: Fraction, codec: str) -> None:
    """``frames`` [T, H, W, 3] in [0, 1] as H.264 yuv420p at ``fps``, atomically; an odd
    width or height loses its last column or row (yuv420p needs even sizes)."""
    t, h, w = frames.shape[:3]
    h2, w2 = h - h % 2, w - w % 2
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            stream.options = {"crf": "18"} if codec == "libx264" else {}
            for image in frames:
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(imageio.to_uint8(image[:h2, :w2])), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


class FlowCache:
    """``flow(a, b)`` by ``method``, each result kept as ``DIR/flow/<hash>.npz`` (the hash of
    the two frames and the method), so a second run on the same frames computes none."""

    def __init__(self, folder: Path, method: str):
        self.folder, self.method = folder, method
        self.computed = 0

    def __call__(self, a, b):
        h = hashlib.sha256(self.method.encode())
        for img in (a, b):
            h.update(np.ascontiguousarray(img, np.float32).tobytes())
        path = self.folder / f"{h.hexdigest()[:24]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return data["flow"]
        flow = optflow.optical_flow(a, b, self.method)
        buf = io.BytesIO()
        np.savez(buf, flow=flow)
        atomic_write_bytes(path, buf.getvalue())
        self.computed += 1
        return flow


def write_log(out: Path, rows: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["frame", "file", "loss", "seconds", "consistent"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "losses.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "losses.json", json.dumps(rows, indent=1).encode())


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.frames is not None and args.frames < 1:
        raise StylejaxError(f"--frames must be >= 1, got {args.frames}.")
    if args.fps is not None and not args.fps > 0:
        raise StylejaxError(f"--fps must be > 0, got {args.fps}.")
    if not args.temporal_weight >= 0:
        raise StylejaxError(f"--temporal-weight must be >= 0, got {args.temporal_weight}.")
    rc = run_config(args)
    _need(optflow, "Optical flow")
    tune_process()
    # Everything is read and checked before anything is written.
    raw, fps, stem = read_input(args.input, args.frames, args.max_pixels)
    h, w = imageio.fit_size(*raw[0].shape[:2], rc.size, rc.edge)
    frames = as_frames([imageio.resize(f, h, w) for f in raw])
    del raw
    styles = [imageio.load_image(p, args.max_pixels) for p in args.style]
    styles = [imageio.resize(s, h, w) if rc.style_to_content_size else imageio.resize(
        s, *imageio.fit_size(*s.shape[:2], max(1, round(max(h, w) * rc.style_scale)), "long"))
        for s in styles]
    check_stages(frames.shape[1:], [s.shape for s in styles], stage_sizes(h, w), rc.loss.layers,
                 None, " (raise --size or --style-scale)")
    fps = Fraction(args.fps).limit_denominator(1001) if args.fps else fps
    if fps is None:
        fps = Fraction(DEFAULT_FPS)
        print(f"note: no frame rate given; the video is written at {DEFAULT_FPS} fps "
              "(set --fps).", file=sys.stderr)
    codec = encoder()
    if codec is None:
        print("note: no H.264 encoder (PyAV with libx264) here: writing PNG frames only.",
              file=sys.stderr)
    vgg = load_vgg19(args.weights)
    warning = network_warning(args.preset, vgg.normalized)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    out = imageio.ensure_writable_dir(args.out)
    cfg = dataclasses.replace(rc.loss, temporal_weight=args.temporal_weight)
    flows = FlowCache(out / "flow", args.flow)
    steps = video_epochs(vgg, frames, styles, cfg, solver_config(rc), epochs=rc.epochs,
                         flow=flows, init=rc.init, seed=rc.seed,
                         style_blend_weights=rc.style_blend_weights, execution=rc.execution)
    results = np.zeros_like(frames)
    rows = []
    bar = tqdm(total=len(frames), unit="frame", file=sys.stderr, dynamic_ncols=True)
    clock = time.perf_counter()
    try:
        for step in steps:
            bar.set_postfix_str(f"epoch {step.epoch}/{rc.epochs}, loss {step.loss:.4g}")
            if not step.last_of_scale:
                continue
            name = f"{step.frame + 1:05d}.png"
            results[step.frame] = step.image[0]
            imageio.save_image(out / "frames" / name, step.image)
            now = time.perf_counter()
            rows.append({"frame": step.frame + 1, "file": f"frames/{name}", "loss": step.loss,
                         "seconds": now - clock, "consistent": step.weights})
            clock = now
            write_log(out, rows)
            bar.update(1)
    finally:
        bar.close()
    if codec is None:
        print(f"wrote {len(frames)} frames to {out / 'frames'} (no video: no H.264 encoder)")
        return 0
    video = out / f"{stem}.mp4"
    write_video(video, results, fps, codec)
    print(f"wrote {video} ({len(frames)} frames, {w}x{h} px, {float(fps):g} fps) and "
          f"{out / 'frames'}")
    return 0

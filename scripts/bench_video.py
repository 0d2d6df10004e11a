#!/usr/bin/env python
"""Benchmark: video frames per hour, sequential against multipass, and the optical flow's share.

    python scripts/bench_video.py [--size 256] [--frames 6] [--iterations 40] [--passes 4]
                                  [--json bench_video.json]

A synthetic clip (a blurred-noise texture seen through a window moving 2 px right and 1 px
down a frame, ``--size`` px square, ``--frames`` frames) and a synthetic style; random VGG-19
weights (timings do not depend on their values); the johnson preset. Both modes get the same
``--iterations`` L-BFGS iterations per frame: sequential as one epoch of that many, multipass
as ``--passes`` passes of iterations/passes (temporal from the second half of the passes).

Rows:
- ``flow alone``: every flow the run needs (DIS medium, both directions, neighbours), one
  after another, with nothing else running.
- ``sequential, flows given``: the flows computed before (the time the stylization alone
  takes); ``sequential, flow ahead``: the library's default, flows computed on a worker
  thread while the frames are stylized. Per steady frame, given + flow alone − ahead is what
  the overlap saves.
- ``multipass``: all frames of the clip one program per pass (one chunk on a CPU).

For each: wall seconds (the first frame or pass includes compiling), seconds per frame in
the steady state (compilation excluded: frames 2.. or passes 2..), frames per hour at that
rate, and the flow's seconds and the part of them the run waited for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _bootstrap  # puts this checkout first on sys.path

ROOT = Path(_bootstrap.root)
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

import stylejax  # noqa: E402
from stylejax import flow as optflow  # noqa: E402
from stylejax.cli.stylize import tune_process  # noqa: E402
from stylejax.weights import CAFFE, Vgg19  # noqa: E402


def make_vgg(seed: int = 0) -> Vgg19:
    from fixtures import random_vgg_params

    params = jax.tree.map(jax.numpy.asarray, random_vgg_params(seed))
    return Vgg19(params=params, preprocess=CAFFE, source="bench:random")


def synthetic_clip(frames: int, size: int, shift=(2, 1), seed: int = 0) -> np.ndarray:
    """[frames, size, size, 3] float32: a blurred-noise texture seen through a moving window."""
    rng = np.random.default_rng(seed)
    m = size + frames * max(shift) + 8
    big = gaussian_filter(rng.uniform(0, 1, (m, m, 3)), (size / 40, size / 40, 0))
    big = (big - big.min()) / (big.max() - big.min())
    dx, dy = shift
    return np.stack([big[4 + k * dy:4 + k * dy + size, 4 + k * dx:4 + k * dx + size]
                     for k in range(frames)]).astype(np.float32)


def row(name: str, result, frames: int, steady_units: list, units_per_frame: float) -> dict:
    """A table row: wall time, steady seconds per frame (the mean steady unit, a frame or a
    pass, times the units a whole frame takes: 1, or passes / frames), frames/hour, flow."""
    wall = float(sum(result.seconds))
    steady = float(np.mean(steady_units)) * units_per_frame if steady_units else wall / frames
    return {"mode": name, "wall_s": wall, "steady_s_per_frame": steady,
            "frames_per_hour": 3600.0 / steady, "flow_s": result.flow_seconds,
            "flow_waited_s": result.flow_waited}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--iterations", type=int, default=40, help="L-BFGS iterations per frame")
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.iterations % args.passes or args.frames < 2:
        p.error("--iterations must be a multiple of --passes, and --frames >= 2")
    tune_process()
    vgg = make_vgg()
    clip = synthetic_clip(args.frames, args.size)
    style = synthetic_clip(1, args.size, seed=7)[0]
    cfg = stylejax.preset_config("johnson")
    t = args.frames

    start = time.perf_counter()
    flows = optflow.video_flows(clip)
    flow_alone = time.perf_counter() - start
    rows = [{"mode": "flow alone", "wall_s": flow_alone, "steady_s_per_frame": flow_alone / t,
             "frames_per_hour": 3600.0 * t / flow_alone, "flow_s": flow_alone,
             "flow_waited_s": 0.0}]
    seq = dict(mode="sequential", epochs=1, max_iter=args.iterations)
    result = stylejax.stylize_video(vgg, clip, style, cfg, flow=flows, **seq)
    rows.append(row("sequential, flows given", result, t, result.seconds[1:], 1))
    result = stylejax.stylize_video(vgg, clip, style, cfg, flow=optflow.flow_function(), **seq)
    rows.append(row("sequential, flow ahead", result, t, result.seconds[1:], 1))
    result = stylejax.stylize_video(vgg, clip, style, cfg, flow=optflow.flow_function(),
                                    mode="multipass", passes=args.passes,
                                    max_iter=args.iterations // args.passes)
    rows.append(row("multipass", result, t, result.seconds[1:], args.passes / t))

    device = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    print(f"video at {args.size} px, {t} frames, {args.iterations} iterations a frame "
          f"(multipass: {args.passes} passes), {device}")
    print(f"{'mode':<26}{'wall s':>9}{'s/frame':>10}{'frames/h':>10}{'flow s':>9}"
          f"{'waited s':>10}")
    for r in rows:
        print(f"{r['mode']:<26}{r['wall_s']:>9.1f}{r['steady_s_per_frame']:>10.2f}"
              f"{r['frames_per_hour']:>10.0f}{r['flow_s']:>9.2f}{r['flow_waited_s']:>10.2f}")
    # Per frame in the steady state (frame 1 compiles): a later frame needs two flows.
    given, ahead = rows[1]["steady_s_per_frame"], rows[2]["steady_s_per_frame"]
    flow_per_frame = flow_alone / (t - 1)
    summary = {"flow_share_serial": flow_per_frame / (given + flow_per_frame),
               "overlap_saved_s_per_frame": given + flow_per_frame - ahead,
               "flow_s_per_frame": flow_per_frame,
               "multipass_vs_sequential": rows[3]["frames_per_hour"]
               / rows[1]["frames_per_hour"]}
    print(f"flow per frame {flow_per_frame:.3f} s: {summary['flow_share_serial']:.1%} of a "
          f"frame's time if computed before it; computed ahead, the frame took "
          f"{ahead:.3f} s against {given:.3f} s with the flows given (saved "
          f"{summary['overlap_saved_s_per_frame']:.3f} s a frame); multipass / sequential "
          f"frames per hour: {summary['multipass_vs_sequential']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "frames": t,
                                               "iterations": args.iterations,
                                               "passes": args.passes, "device": device,
                                               "rows": rows, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

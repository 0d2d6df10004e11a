#!/usr/bin/env python
"""Throughput of batched stylization: images per hour at batch 1, 4 and 8.

    python scripts/bench_throughput.py [--size 256] [--batches 1,4,8] [--iterations 10]
        [--precision f32|bf16] [--json FILE]

Prints one line, e.g. ``throughput 256 px (1 x cpu, f32): batch 1: 12 images/h, ...``, where
an image is 1000 L-BFGS iterations (the johnson preset: 10 epochs of 100) and the rate is
extrapolated from one timed epoch of --iterations after a compiling one (see
`stylejax.batch.throughput`). Random He-initialised weights (timings do not depend on their
values), synthetic images. `scripts/bench.py` can call `throughput_line(vgg, ...)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _bootstrap  # puts this checkout first on sys.path

ROOT = Path(_bootstrap.root)
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import stylejax  # noqa: E402
from stylejax.batch import _synthetic, stylize_batch, throughput  # noqa: E402
from stylejax.cpu.hostmem import keep_step_heap  # noqa: E402
from stylejax.execution import Execution  # noqa: E402
from stylejax.weights import CAFFE, Vgg19  # noqa: E402


def random_vgg(seed: int = 0) -> Vgg19:
    from fixtures import random_vgg_params

    params = jax.tree.map(jnp.asarray, random_vgg_params(seed))
    return Vgg19(params=params, preprocess=CAFFE, source="bench:random")


def batch_throughput(vgg, size, batch, iterations, cfg, execution):
    """`stylejax.batch.throughput` under ``execution``. That function takes no `Execution`
    (it runs the default one), so another one, bfloat16's, runs here as it does: two epochs
    of ``stylize_batch`` on the same synthetic pairs, the second timed."""
    if execution == Execution():
        return throughput(vgg, size, batch, iterations, cfg=cfg)
    contents = [_synthetic(size, 2 * i) for i in range(batch)]
    styles = [_synthetic(size, 2 * i + 1) for i in range(batch)]
    result = stylize_batch(vgg, contents, styles, cfg, epochs=2, max_iter=iterations,
                           execution=execution)
    per_iteration = result.seconds[1] / iterations
    return {"size": size, "batch": batch, "iterations": iterations,
            "compile_s": result.seconds[0] - result.seconds[1],
            "seconds_per_iteration": per_iteration,
            "images_per_hour": batch * 3600.0 / (1000 * per_iteration),
            "device": f"{len(jax.devices())} x {jax.devices()[0].device_kind}"}


def throughput_line(vgg, size=256, batches=(1, 4, 8), iterations=10, dtype="float32"):
    """(one printable line, the list of `throughput` dicts) for each batch size."""
    cfg, execution = stylejax.preset_config("johnson"), Execution(dtype=dtype)
    rows = [batch_throughput(vgg, size, b, iterations, cfg, execution) for b in batches]
    precision = "bf16" if dtype == "bfloat16" else "f32"
    line = f"throughput {size} px ({rows[0]['device']}, {precision}, 1000 iterations an image): " \
        + ", ".join(f"batch {r['batch']}: {r['images_per_hour']:.3g} images/h "
                    f"({r['seconds_per_iteration'] * 1e3:.3g} ms/it, compile "
                    f"{r['compile_s']:.1f} s)" for r in rows)
    return line, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--precision", choices=("f32", "bf16"), default="f32")
    p.add_argument("--json", help="also write the measurements here")
    args = p.parse_args(argv)
    keep_step_heap()  # glibc's heap thresholds as the CLI's process sets them
    batches = tuple(int(b) for b in args.batches.split(","))
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    line, rows = throughput_line(random_vgg(), args.size, batches, args.iterations, dtype)
    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

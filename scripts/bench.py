#!/usr/bin/env python
"""Benchmark: stylejax against a PyTorch implementation of the same loss, in one process.

    python scripts/bench.py [--sizes 256,512] [--converge-size 192] [--json bench.json]

Prints a table (and writes JSON with --json) of: value+grad time at each size against
PyTorch (same formulas, same random weights, float32, same thread count, interleaved,
best of N; ours with the kernels in Winograd's domain, as every solver epoch has them); the
FLOP/s our step achieves against a large XLA f32 matmul on the same device; compile time of
the first epoch and steady time per L-BFGS iteration; time for each of our optimizers to reach
the loss torch.optim.LBFGS reaches in 200 iterations, each run compiling its own programs
(and the default's start-up once more with them in the compilation cache, as the CLI's second
run finds them), the library's defaults (pixel space) and L-BFGS with `--precondition auto`
beside them; and peak memory (RSS on CPU, device statistics on GPU) of each side, each
measured in a fresh subprocess. Weights are random (He-initialised): timings do not depend on
their values. torch is a benchmark-only dependency. Images: tubingen.jpg and starry_night.jpg
from $STYLEJAX_BENCH_IMAGES or ../shared/images, else synthetic.

By default only the convolution `--conv auto` picks here is timed (the default `Execution()`),
so that the whole run fits in 10 minutes on a 2-core CPU (about 8 there, up to a minute more
with the preconditioned row; the time-to-loss race runs at 192 px for the same reason).
`--convs winograd,direct --coarse-iters 100` adds the direct convolution to every section and
a coarse-to-fine start (about 7 minutes more); `--converge-size 256` adds about 5;
`--precondition 0` leaves out the preconditioned row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bootstrap  # puts this checkout first on sys.path

ROOT = Path(_bootstrap.root)
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import stylejax  # noqa: E402
from stylejax import images as imageio  # noqa: E402
from stylejax.cli.stylize import tune_process  # noqa: E402
from stylejax.cpu.kernels import prepare_kernels  # noqa: E402
from stylejax.cpu.hostmem import compile_released, forget_compiled, keep_step_heap  # noqa: E402
from stylejax.errors import StylejaxError  # noqa: E402
from stylejax.execution import Execution, resolve_conv  # noqa: E402
from stylejax.layers import LAYERS  # noqa: E402
from stylejax.run import compiled_epoch, state_maker  # noqa: E402
from stylejax.solvers import SolverConfig, parse_precondition  # noqa: E402
from stylejax.weights import CAFFE, CONV_SPECS, Vgg19  # noqa: E402

SHARED = Path(os.environ.get("STYLEJAX_BENCH_IMAGES", ROOT.parent / "shared" / "images"))


def bench_config():
    """johnson preset: style relu1_1..relu5_1, content relu4_2, TV on."""
    return stylejax.preset_config("johnson")


def bench_execution(conv="auto", dtype="float32"):
    """The `Execution` running convolution ``conv`` ("auto", "direct" or "winograd") in
    ``dtype``. In float32, where ``conv`` is what "auto" resolves to here, the default
    ``Execution()`` itself, so the default's rows run exactly what the library compiles by
    default. Other precisions keep the algorithm named: `hostmem.compile_released` picks its
    compiler options from ``conv`` alone, and "auto" would get float32's (Winograd's) for a
    bfloat16 program, which runs direct."""
    if dtype == "float32" and conv == resolve_conv("auto"):
        conv = "auto"
    return Execution(conv=conv, dtype=dtype)


def initial_state(scfg, vgg, x0, targets, cfg, execution):
    """The solver's first state at ``x0`` [1, H, W, 3], made as the CLI's epoch loop makes it
    (`run.state_maker`: for L-BFGS a fresh state, no evaluation to compile)."""
    return state_maker(scfg, vgg, x0, targets, cfg, execution)(vgg, x0, targets)


def make_vgg(seed=0):
    from fixtures import random_vgg_params

    params = jax.tree.map(jnp.asarray, random_vgg_params(seed))
    return Vgg19(params=params, preprocess=CAFFE, source="bench:random"), random_vgg_params(seed)


def bench_images(size):
    """(content, style) float [size, size, 3]: the paper's pair when present, else synthetic."""
    paths = SHARED / "tubingen.jpg", SHARED / "starry_night.jpg"
    if all(p.exists() for p in paths):
        return tuple(imageio.resize(imageio.load_image(p), size, size) for p in paths)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    content = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y) for c in range(3)], -1)
    style = np.clip(rng.random((size, size, 3)) * 0.3 + 0.35 + 0.3 * np.sin(20 * x)[..., None],
                    0, 1)
    return content.astype(np.float32), style.astype(np.float32)


def conv_flops(height, width, layers):
    """FLOPs (multiply + add = 2) of the 3x3 convolutions VGG-19 evaluates for ``layers`` on
    one [height, width] image: the forward pass and, again, the input gradient."""
    deepest = max(LAYERS.index(name) for name in layers)
    total, h, w, block = 0, height, width, 1
    for name, cin, cout in CONV_SPECS:
        if LAYERS.index(name) > deepest:
            break
        b = int(name[4])
        for _ in range(b - block):
            h, w = h // 2, w // 2
        block = b
        total += 2 * 9 * cin * cout * h * w
    return 2 * total  # forward + input gradient (the kernel gradient is not needed)


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(n=4096, repeats=5):
    """Measured f32 FLOP/s of an n x n x n matmul through XLA on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    return 2 * n ** 3 / best_time(lambda: mm(a, b).block_until_ready(), repeats)


def torch_setup(np_params, content, style, cfg, dtype_name="float32"):
    import torch

    from torch_reference import TorchLoss, nhwc_to_torch, torch_layers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    layers = [(n, w.to(dev), b.to(dev)) for n, w, b in torch_layers(np_params, dtype)]
    loss = TorchLoss(layers, nhwc_to_torch(content[None], dtype).to(dev),
                     nhwc_to_torch(style[None], dtype).to(dev), cfg)
    x0 = nhwc_to_torch(content[None], dtype).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return torch, loss, x0, sync


def value_and_grad_race(vgg, np_params, size, repeats, dtype="float32", conv="auto"):
    """Best-of-N value+grad time of both implementations, interleaved. ``dtype`` is our VGG
    activation precision, ``conv`` our convolution algorithm (`bench_execution`); the
    PyTorch side stays float32 (its default convolutions)."""
    cfg, execution = bench_config(), bench_execution(conv, dtype)
    content, style = bench_images(size)
    targets = stylejax.make_targets(vgg, content, style, cfg, execution=execution)
    # The loss as the solver evaluates it: the kernels prepared once per run (Winograd's
    # domain, the direct layers' flip), compiled with the epochs' options.
    x = jnp.asarray(content[None])
    vgg = prepare_kernels(vgg, cfg.layers, execution, x.shape)
    vg = compile_released(jax.jit(jax.value_and_grad(stylejax.loss_fn, argnums=1),
                                  static_argnames=("cfg", "execution")),
                          vgg, x, targets, cfg=cfg, execution=execution)
    jax.block_until_ready(vg(vgg, x, targets))
    torch, tloss, x0, sync = torch_setup(np_params, content, style, cfg)
    xt = x0.clone().requires_grad_(True)

    def torch_step():
        xt.grad = None
        tloss(xt).backward()
        sync()

    torch_step()
    ours = theirs = float("inf")
    for _ in range(repeats):
        ours = min(ours, best_time(lambda: jax.block_until_ready(vg(vgg, x, targets)), 1))
        theirs = min(theirs, best_time(torch_step, 1))
    flops = conv_flops(size, size, cfg.layers)
    return {"size": size, "precision": dtype, "conv": execution.resolved_conv(),
            "stylejax_s": ours, "torch_s": theirs, "ratio": ours / theirs,
            "conv_gflop": flops / 1e9, "stylejax_gflops": flops / ours / 1e9,
            "torch_gflops": flops / theirs / 1e9}


def epoch_timing(vgg, size, iterations, conv="auto"):
    """Seconds from the targets to a compiled first epoch (the first state, kernel forms,
    tracing, compiling: as the CLI starts), then steady seconds per L-BFGS iteration (the
    library's default L-BFGS)."""
    cfg, execution = bench_config(), bench_execution(conv)
    content, style = bench_images(size)
    targets = stylejax.make_targets(vgg, content, style, cfg, execution=execution)
    scfg = SolverConfig("lbfgs", iterations=iterations)
    start = time.perf_counter()
    state = initial_state(scfg, vgg, jnp.asarray(content[None]), targets, cfg, execution)
    epoch = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
    compile_s = time.perf_counter() - start
    state = epoch(state)
    float(state.value)
    start = time.perf_counter()
    state = epoch(state)
    float(state.value)
    per_iter = (time.perf_counter() - start) / iterations
    return {"size": size, "conv": execution.resolved_conv(), "compile_s": compile_s,
            "per_iteration_s": per_iter,
            "compile_share_of_1000_iterations": compile_s / (compile_s + 1000 * per_iter)}


def torch_lbfgs(np_params, content, style, iterations):
    cfg = bench_config()
    torch, tloss, x0, sync = torch_setup(np_params, content, style, cfg)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=iterations, history_size=100,
                            line_search_fn="strong_wolfe", tolerance_grad=0,
                            tolerance_change=0)
    evals = [0]

    def closure():
        opt.zero_grad()
        loss = tloss(x)
        loss.backward()
        evals[0] += 1
        return loss

    start = time.perf_counter()
    opt.step(closure)
    sync()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        loss = float(tloss(x))
    return {"seconds": seconds, "loss": loss, "evaluations": evals[0]}


def time_to_loss(vgg, content, style, target, kind, budget_s, iterations=10, coarse=0,
                 conv="auto", precondition=0.0):
    """Runs our ``kind`` optimizer in epochs of ``iterations`` until the loss <= target, or
    until ``budget_s`` seconds of solving (start-up left out) have passed after an epoch.

    ``coarse`` > 0 first runs that many iterations at half the size and starts the full size
    from the result, upsampled (the CLI's ``--scales``, coarse to fine). ``seconds`` counts
    everything from the first call (targets, compilation, both sizes); ``solve_s`` leaves out
    the one-off compilations (``compile_s``; ``start_up_pieces_s`` splits it as
    `_compiled_epoch` does, both sizes summed). ``trace``: [iterations done, loss] after each
    full-size epoch. ``conv``: our convolution algorithm (`bench_execution`);
    ``precondition``: `SolverConfig.precondition` (0, the library's default: pixel space).
    """
    cfg, execution = bench_config(), bench_execution(conv)
    scfg = _solver_config(kind, iterations, precondition)
    start, compile_s, x0 = time.perf_counter(), 0.0, content
    if coarse:
        h, w = content.shape[0] // 2, content.shape[1] // 2
        small = [imageio.resize(a, h, w) for a in (content, style)]
        state, epoch, seconds, coarse_pieces = _compiled_epoch(vgg, *small, small[0], cfg, scfg,
                                                               execution)
        compile_s += seconds
        for _ in range(coarse // iterations):
            state = epoch(state)
        x0 = imageio.resize(np.asarray(state.image)[0], *content.shape[:2])
    state, epoch, seconds, pieces = _compiled_epoch(vgg, content, style, x0, cfg, scfg,
                                                    execution)
    compile_s += seconds
    if coarse:
        pieces = {k: v + coarse_pieces[k] for k, v in pieces.items()}  # both sizes
    loss, done = float(state.value), 0  # +inf from an L-BFGS fresh state: not evaluated yet
    trace = []
    while loss > target and (not np.isfinite(loss)
                             or time.perf_counter() - start - compile_s < budget_s):
        state = epoch(state)
        loss, done = float(state.value), done + iterations
        trace.append([done, loss])
    total = time.perf_counter() - start
    name = kind if not scfg.precondition else f"{kind}, precondition {scfg.precondition}"
    if coarse:
        name += f", {coarse} at half size first"
    name += f", {execution.resolved_conv()}"
    return {"optimizer": name, "conv": execution.resolved_conv(),
            "precondition": scfg.precondition, "seconds": total, "solve_s": total - compile_s,
            "compile_s": compile_s, "start_up_pieces_s": pieces, "reached": loss <= target,
            "loss": loss, "iterations": done, "coarse_iterations": coarse, "trace": trace}


def _solver_config(kind, iterations, precondition=0.0):
    """The library's defaults but for the epoch length, Adam's rate and ``precondition``."""
    return SolverConfig(kind, iterations=iterations, lr=0.02 if kind == "adam" else 0.0,
                        precondition=precondition)


def start_up_s(vgg, content, style, kind, iterations=10, conv="auto", precondition=0.0):
    """Seconds from the first call to a compiled first epoch (targets, first state, tracing,
    compiling or loading from the compilation cache): `time_to_loss`'s ``compile_s``; and
    those seconds by piece (its ``start_up_pieces_s``)."""
    cfg, scfg = bench_config(), _solver_config(kind, iterations, precondition)
    return _compiled_epoch(vgg, content, style, content, cfg, scfg, bench_execution(conv))[2:]


# JAX's own timings of the solver epoch's start (`jax.monitoring`), by piece.
_EPOCH_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "tracing",
                 "/jax/core/compile/jaxpr_to_mlir_module_duration": "lowering",
                 # XLA's compile, or the compilation cache's load where it has the program
                 "/jax/core/compile/backend_compile_duration": "compiling"}


class StartUpPieces:
    """Collects, while active, JAX's durations in seconds: tracing and lowering the solver
    epoch (`solvers.run_epoch`), and every XLA compile (or load from the compilation cache):
    the epoch's and the kernel forms' (`cpu.prepare_kernels`), whose tracing and lowering are
    left to the caller's rest."""

    def __init__(self):
        self.seconds = dict.fromkeys(_EPOCH_EVENTS.values(), 0.0)

    def _record(self, event, duration, fun_name=None, **_):
        piece = _EPOCH_EVENTS.get(event)
        if piece and (piece == "compiling" or fun_name in ("run_epoch", "jit(run_epoch)")):
            self.seconds[piece] += duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._record)


def _compiled_epoch(vgg, content, style, x0, cfg, scfg, execution):
    """(initial state, compiled epoch: state -> state, seconds for targets and compiling,
    those seconds by piece: the targets, the first state, the epoch's tracing and lowering,
    XLA's compiling (or loading from the compilation cache) of the epoch and of the kernels'
    forms (`StartUpPieces`), and the rest: tracing, lowering and running those forms, the
    compile's Python side). It waits for the targets and the first state, so each piece is
    timed alone; the CLI doesn't, so its start-up may overlap them by a few milliseconds."""
    start = time.perf_counter()
    targets = stylejax.make_targets(vgg, content, style, cfg, execution=execution)
    jax.block_until_ready(targets)
    made = time.perf_counter()
    state = initial_state(scfg, vgg, jnp.asarray(x0[None]), targets, cfg, execution)
    jax.block_until_ready(state)
    first = time.perf_counter()
    with StartUpPieces() as epoch_pieces:
        epoch = compiled_epoch(vgg, targets, cfg, scfg, state, execution)
    end = time.perf_counter()
    pieces = {"targets": made - start, "first state": first - made, **epoch_pieces.seconds}
    pieces["rest"] = end - start - sum(pieces.values())
    return state, epoch, end - start, pieces


def peak_memory(side, size, conv="auto"):
    """Peak memory of a value+grad at ``size`` in a fresh process ("jax" or "torch")."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_memory.py"), side,
                          str(size), conv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_converge(r, ref):
    """Adds the ratio to torch to the time-to-loss row ``r`` and prints it."""
    r["ratio"] = r["seconds"] / ref["seconds"]
    status = "reached" if r["reached"] else "NOT reached"
    print(f"  {r['optimizer']:42s} {r['seconds']:6.1f} s ({r['ratio']:.2f}x; without the "
          f"{r['compile_s']:.1f} s start-up {r['solve_s']:.1f} s, "
          f"{r['solve_s'] / ref['seconds']:.2f}x), {status} after {r['iterations']} "
          f"iterations, loss {r['loss']:.6g}", flush=True)
    if r["optimizer"].startswith("lbfgs"):
        print("    start-up: " + ", ".join(f"{k} {v:.2f} s"
                                           for k, v in r["start_up_pieces_s"].items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--precision", default="float32",
                   help="comma-separated VGG precisions for the race: float32,bfloat16")
    p.add_argument("--convs", default="auto",
                   help="our convolution algorithms to time, e.g. winograd,direct (float32 "
                        "only for winograd); the one --conv auto picks here is starred")
    p.add_argument("--converge-size", type=int, default=192)
    p.add_argument("--converge-iters", type=int, default=200)
    p.add_argument("--optimizers", default="lbfgs,adam",
                   help="comma-separated: lbfgs,optax-lbfgs,adam (optax-lbfgs adds ~100 s); the "
                        "default L-BFGS always runs, last")
    p.add_argument("--precondition", default="auto",
                   help="also time L-BFGS with this preconditioning (auto, or a wavelength in "
                        "px; the library's default is off); 0 leaves that row out")
    p.add_argument("--coarse-iters", type=int, default=0,
                   help="also time the default optimizer after this many iterations at half "
                        "the size (coarse to fine, as --scales does); 0 leaves it out")
    p.add_argument("--batches", help="batch sizes of the 256 px throughput line (default "
                                     "1,4,8; on CPU the line runs only when this is given, "
                                     "e.g. 1,4: a batch of 8 takes hours there)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: "
                                              "race,peak,epoch,converge,throughput,memory")
    p.add_argument("--json")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    convs = list(dict.fromkeys(resolve_conv(c) for c in args.convs.split(",")))
    default_conv = resolve_conv("auto")
    try:
        precondition = parse_precondition(args.precondition)
    except StylejaxError as e:
        p.error(str(e))
    star = {c: c + ("*" if c == default_conv else "") for c in convs}
    import torch

    torch.set_num_threads(os.cpu_count() if jax.default_backend() == "cpu" else 1)
    skip = set(args.skip.split(","))
    report = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "jax": jax.__version__, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(),
              "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(f"device: {report['device']} ({report['backend']}), jax {jax.__version__}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads", flush=True)
    vgg, np_params = make_vgg()
    # The CLI's process-wide settings (`tune_process`), for the whole process from the start,
    # so no section depends on the order: glibc's heap thresholds (torch's steps barely
    # page-fault either way: 5,000-9,000 faults per ten 192 px value+grads, 0.01 s of kernel
    # time) and the persistent compilation cache, here in a folder of the bench's own that
    # starts empty: every run below compiles cold except the start-up marked "programs
    # cached". Nothing is written to it (so nothing is found) until the default's
    # time-to-loss run.
    cache = tempfile.TemporaryDirectory(prefix="stylejax-bench-xla-")
    tune_process(Path(cache.name))
    report["step_heap_kept"] = keep_step_heap()  # tune_process's (the call is made once)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))

    if "race" not in skip:
        report["value_and_grad"] = []
        print("\nvalue+grad (johnson, relu1_1..relu5_1 + relu4_2, TV), best of "
              f"{args.repeats}, interleaved (torch in float32):\n"
              "  size precision conv        stylejax      torch   ratio   GFLOP/s ours/torch")
        for size, dtype, conv in itertools.product(sizes, args.precision.split(","), convs):
            if conv == "winograd" and dtype != "float32":
                continue  # Winograd runs in float32 only
            r = value_and_grad_race(vgg, np_params, size, args.repeats, dtype, conv)
            report["value_and_grad"].append(r)
            print(f"  {size:4d} {dtype:9s} {star[conv]:9s} {r['stylejax_s'] * 1e3:8.1f} ms "
                  f"{r['torch_s'] * 1e3:8.1f} ms  {r['ratio']:5.2f}x  "
                  f"{r['stylejax_gflops']:6.1f} / {r['torch_gflops']:.1f}", flush=True)
        print(f"  (* the default here: --conv auto is {default_conv} on "
              f"{jax.default_backend()})")
    if "peak" not in skip:
        peak = matmul_peak()
        report["matmul_peak_gflops"] = peak / 1e9
        print(f"\nXLA f32 matmul peak (4096^3): {peak / 1e9:.1f} GFLOP/s (Winograd rows count "
              "the direct convolution's FLOPs: over 100% means fewer FLOPs done)", flush=True)
        for r in report.get("value_and_grad", []):
            r["fraction_of_peak"] = r["stylejax_gflops"] * 1e9 / peak
            print(f"  step at {r['size']} px ({r['precision']}, {star[r['conv']]}): "
                  f"{100 * r['fraction_of_peak']:.0f}% of that peak")
    if "epoch" not in skip:
        size = max(sizes)
        report["epoch"] = []
        for conv in convs:
            r = epoch_timing(vgg, size, 5, conv)
            report["epoch"].append(r)
            print(f"\nL-BFGS epoch at {size} px ({star[conv]}): compile {r['compile_s']:.1f} s, "
                  f"steady {r['per_iteration_s'] * 1e3:.0f} ms/iteration; compile is "
                  f"{100 * r['compile_share_of_1000_iterations']:.1f}% of a 1000-iteration "
                  "run", flush=True)
    if "converge" not in skip:
        content, style = bench_images(args.converge_size)
        ref = torch_lbfgs(np_params, content, style, args.converge_iters)
        report["converge"] = {"size": args.converge_size, "torch": ref, "ours": []}
        print(f"\ntime to torch L-BFGS's {args.converge_iters}-iteration loss at "
              f"{args.converge_size} px: torch {ref['seconds']:.1f} s to {ref['loss']:.6g} "
              f"({ref['evaluations']} evaluations)", flush=True)
        # Every optimizer with the first convolution (the default one if raced), the library's
        # defaults otherwise (pixel space); L-BFGS with each other convolution, and with
        # --precondition, too. Every run starts with empty in-memory caches and compiles its
        # own programs (the coarse start's full-size epoch is the default run's program).
        first = default_conv if default_conv in convs else convs[0]
        runs = [(kind, 0, first, 0) for kind in args.optimizers.split(",") if kind != "lbfgs"]
        runs += [("lbfgs", 0, c, 0) for c in convs if c != first]
        runs += [("lbfgs", 0, first, precondition)] if precondition else []
        runs += [("lbfgs", args.coarse_iters, first, 0)] if args.coarse_iters else []
        # The default last, cold, with the CLI's compilation cache filling; then its start-up
        # once more, with in-memory caches emptied, finding its programs there as the CLI's
        # second run at one size does. That run's solve is the same program taking the same
        # iterations, so its time is this start-up plus the cold run's solve.
        runs.append(("lbfgs", 0, first, 0))
        for i, (kind, coarse, conv, wavelength) in enumerate(runs):
            if i == len(runs) - 1:
                tune_process(Path(cache.name))  # as the CLI sets it
            jax.clear_caches()  # each run compiles its own programs
            forget_compiled()
            r = time_to_loss(vgg, content, style, ref["loss"], kind, 2 * ref["seconds"],
                             coarse=coarse, conv=conv, precondition=wavelength)
            r["compilation_cache"] = "cold"
            report["converge"]["ours"].append(r)
            _print_converge(r, ref)
        jax.clear_caches()
        forget_compiled()
        start_up, pieces = start_up_s(vgg, content, style, "lbfgs", conv=first)
        r = dict(r, optimizer=r["optimizer"] + ", programs cached", compile_s=start_up,
                 start_up_pieces_s=pieces, seconds=start_up + r["solve_s"],
                 compilation_cache="warm")
        report["converge"]["ours"].append(r)
        _print_converge(r, ref)
    if "throughput" not in skip and (args.batches or jax.default_backend() != "cpu"):
        from bench_throughput import throughput_line

        batches = [int(b) for b in (args.batches or "1,4,8").split(",")]
        line, rows = throughput_line(vgg, 256, batches, iterations=3)
        report["throughput"] = rows
        print(f"\n{line}", flush=True)
    if "memory" not in skip:
        size = max(sizes)
        report["memory"] = [peak_memory("jax", size, conv) for conv in convs]
        report["memory"].append(peak_memory("torch", size))
        print(f"\npeak memory, value+grad at {size} px, each in a fresh process:")
        for m in report["memory"]:
            dev = f", device {m['device_peak_mb']:.0f} MB" if m["device_peak_mb"] else ""
            side = f"{m['side']} ({star[m['conv']]})" if m["side"] == "jax" else m["side"]
            print(f"  {side:16s} RSS {m['peak_rss_mb']:.0f} MB{dev}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

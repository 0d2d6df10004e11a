"""The memory plan: a run's predicted peak memory, from shapes alone, before any work.

    table = predict(cfg, scfg, height, width)     # {component: bytes, ..., "total": bytes}
    free = free_memory()                          # bytes the device can still give

The model (bytes; E = 4 for float32 activations, 2 for bfloat16; image = H*W*3*4):

- ``params``: the VGG-19 convolutions up to the deepest layer, float32 (plus an E-byte cast
  of each when E != 4).
- ``activations``: what the backward pass keeps, per layer up to the deepest: each ReLU's
  output (h*w*C * E; a convolution's own output only where the loss reads it, as the others
  are fused with their ReLU), each pooling's output (h*w*C * E), plus the gradient being
  propagated (2 buffers the size of the largest layer, float32).
- ``targets``: content features (h*w*C * 4 per content layer) and Gram matrices (two C*C*4 per
  style layer: the target and the current image's).
- ``solver``: L-BFGS keeps 2 * history image-sized vectors (s and y); its state and zoom line
  search hold ``LINE_SEARCH_IMAGES`` more image-sized temporaries. Adam: ``ADAM_IMAGES``.
  (This term used to count twice on CPU, read as "no donation"; it was jaxopt's stock line
  search, whose program made XLA copy both histories inside the loop. `linesearch` removed
  it: 512 px peak 1,805-1,850 -> 1,234-1,243 MiB.)
- ``winograd`` (where the run uses Winograd: ``conv="winograd"``, or "auto" on CPU): each
  Winograd layer's transformed kernel (36 * Cin * Cout * 4; made once per run and kept
  while it runs), and the largest one holds two tile buffers at once (2 * 36 * tiles *
  max(Cin, Cout) * 4, tiles = ceil(h/4) * ceil(w/4)); measured over the direct convolution:
  512 px +319-353 MiB of peak RSS, this term 341 MiB; 256 px +12-33 MiB, this term 197 MiB.
- ``flipped kernels``: the flipped copy of each direct layer's kernel that the input
  gradient convolves with (9 * Cin * Cout * 4; made once per run, `cpu.kernels.prepare_kernels`).
- ``runtime``: a fixed ``RUNTIME_OVERHEAD[kind]`` (XLA's runtime and the compiled program;
  the compiler's scratch heap is released before the run, and the steps' scratch kept between
  calls, `hostmem`: 20-40 MB more at 512 px, inside the fit's errors). Fitted on CPU to the
  peak RSS growth of runs minus the terms above: L-BFGS at 128-512 px, direct and Winograd
  (errors -17% to +20%), Adam at 256 and 512 px.
- with tiling, everything above is for one tile, and ``host tiling buffers`` adds the full-size
  image, content, blend sum (3 * image) and weights (H*W*4) kept in host memory; the peak is
  the larger of the tiles' phase and the one-off style pass over the full-size style image
  (``STYLE_PASS_LAYERS`` times its largest activation).

Measured on CPU (jax 0.10, XLA CPU, 2 cores) against the peak RSS growth over the process
after imports and weight loading: see tests/test_plan.py and docs/tiling.md.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

from stylejax.cpu.kernels import runs_winograd
from stylejax.errors import StylejaxError
from stylejax.execution import Execution, as_execution
from stylejax.layers import LAYERS
from stylejax.losses import LossConfig
from stylejax.solvers import SolverConfig
from stylejax.weights import CONV_SPECS

RUNTIME_OVERHEAD = {"lbfgs": 220 * 2**20, "optax-lbfgs": 220 * 2**20, "adam": 150 * 2**20}
"""Fixed bytes for XLA's runtime and the compiled program per solver kind (fitted, see the
docstring; optax-lbfgs is assumed equal to lbfgs, not measured)."""
LINE_SEARCH_IMAGES = 12
"""Image-sized temporaries of jaxopt's L-BFGS state and zoom line search."""
STYLE_PASS_LAYERS = 5
"""Activations of the largest VGG layer alive at once in the forward pass over a full-size
style image (tiled runs; fitted to one measured 2048 px run)."""
ADAM_IMAGES = 6
"""Image-sized buffers of Adam: moments, update, gradient and temporaries."""
PRECONDITION_IMAGES = 2
"""Image-sized buffers the change of variables adds (`stylejax.precondition`): the variables
beside the image, and a spectrum of them (not measured: small beside the L-BFGS history)."""

_CHANNELS = {name: cout for name, _, cout in CONV_SPECS}
_INPUTS = {name: cin for name, cin, _ in CONV_SPECS}


def _uses_winograd(cfg: LossConfig, name: str, h: int, w: int) -> bool:
    """Whether conv layer ``name``, on [h, w] maps, runs as Winograd in a Winograd run."""
    return runs_winograd(name, cfg.layers, Execution("winograd"), (1, h, w, _INPUTS[name]))


def _winograd_bytes(cfg: LossConfig, shapes) -> int:
    """The ``winograd`` term (see the module docstring) of a Winograd run."""
    kept, tiles = 0, 0
    for name, h, w, cout in shapes:
        cin = _INPUTS.get(name)
        if cin and _uses_winograd(cfg, name, h, w):
            kept += 36 * cin * cout * 4
            tiles = max(tiles, 2 * 36 * -(-h // 4) * -(-w // 4) * max(cin, cout) * 4)
    return kept + tiles


def _layer_shapes(height: int, width: int, deepest: str):
    """[(name, h, w, C)] for every layer up to ``deepest``."""
    out, h, w, c = [], height, width, 3
    for name in LAYERS[: LAYERS.index(deepest) + 1]:
        if name.startswith("conv"):
            c = _CHANNELS[name]
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
        out.append((name, h, w, c))
    return out


def predict(cfg: LossConfig, scfg: SolverConfig, height: int, width: int,
            tile: Optional[tuple] = None, platform: Optional[str] = None,
            execution: Optional[Execution] = None) -> dict:
    """Predicted peak memory of a run at ``height`` x ``width`` px, in bytes per component.

    ``tile``: (th, tw) of a tiled run (the device holds one tile at a time); ``platform``:
    "cpu", "gpu" or "tpu" (None: jax's default backend); ``execution``: the convolution
    algorithm and activation dtype (None: the default `Execution`). Returns
    ``{"params", "activations", "targets", "solver", "runtime", ["host tiling buffers"],
    "flipped kernels", ["winograd"], "total"}``.
    """
    full_h, full_w = height, width
    if tile is not None:
        height, width = min(tile[0], height), min(tile[1], width)
    execution = as_execution(execution)
    e = 2 if execution.dtype == "bfloat16" else 4
    deepest = max(cfg.layers, key=LAYERS.index)
    shapes = _layer_shapes(height, width, deepest)
    convs = [(n, ci, co) for n, ci, co in CONV_SPECS if n in {s[0] for s in shapes}]
    params = sum((9 * ci * co + co) * (4 + (e if e != 4 else 0)) for _, ci, co in convs)
    acts, largest = 0, 0
    for name, h, w, c in shapes:
        largest = max(largest, h * w * c)
        if name.startswith("conv") and name not in cfg.layers:
            continue  # fused with its ReLU (vgg.conv3x3_relu): one buffer for both
        acts += h * w * c * e
    acts += 2 * largest * 4
    by_name = {s[0]: s for s in shapes}
    targets = sum(by_name[n][1] * by_name[n][2] * by_name[n][3] * 4 for n in cfg.content_layers)
    targets += sum(2 * by_name[n][3] ** 2 * 4 for n in cfg.style_layers)
    image = height * width * 3 * 4
    if scfg.kind == "adam":
        solver = ADAM_IMAGES * image
    else:
        solver = (2 * scfg.history + LINE_SEARCH_IMAGES) * image
    if scfg.precondition != 0:  # the variables z beside the image and a spectrum of them
        solver += PRECONDITION_IMAGES * image
        if scfg.dft == "matmul":  # the complex64 DFT matrices of both sides
            solver += 2 * 8 * (height ** 2 + width ** 2)
    platform = platform or jax.default_backend()
    table = {"params": params, "activations": acts, "targets": targets, "solver": solver,
             "runtime": RUNTIME_OVERHEAD[scfg.kind]}
    winograd = execution.resolved_conv(platform) == "winograd"
    table["flipped kernels"] = sum(9 * ci * co * 4 for n, ci, co in convs
                                   if not (winograd and _uses_winograd(cfg, n, *by_name[n][1:3])))
    if winograd and (extra := _winograd_bytes(cfg, shapes)):
        table["winograd"] = extra
    total = sum(table.values())
    if tile is not None and (height, width) != (full_h, full_w):
        table["host tiling buffers"] = 3 * full_h * full_w * 3 * 4 + full_h * full_w * 4
        # Before the tiles run, the style Grams come from one forward pass over the whole
        # style image at the output size: about STYLE_PASS_LAYERS of its largest activation
        # live at once (measured: 2048 px, --tile 512: 5.4 GiB peak RSS). Not at the same time
        # as the tile's solver, so the peak is the larger of the two phases.
        largest_full = max(h * w * c for _, h, w, c in _layer_shapes(full_h, full_w, deepest))
        table["style pass (one-off)"] = STYLE_PASS_LAYERS * largest_full * e
        total = table["host tiling buffers"] + max(
            total, params + RUNTIME_OVERHEAD[scfg.kind] + table["style pass (one-off)"])
    table["total"] = total
    return table


def free_memory(device=None) -> int:
    """Bytes the device can still allocate: on GPU/TPU ``bytes_limit - bytes_in_use`` from
    ``memory_stats()``; on CPU the host's MemAvailable (/proc/meminfo)."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def format_plan(table: dict, free: int, height: int, width: int, tile=None) -> str:
    """The plan as a small text table, one component a line, then the device's free memory."""
    what = f"{width}x{height} px" + (f", tiles of {tile[1]}x{tile[0]} px" if tile else "")
    lines = [f"memory plan for {what}:"]
    lines += [f"  {k:<22}{_mib(v):>14}" for k, v in table.items() if k != "total"]
    lines += [f"  {'predicted peak':<22}{_mib(table['total']):>14}",
              f"  {'free on the device':<22}{_mib(free):>14}",
              "  fits" if table["total"] <= free else "  does NOT fit"]
    return "\n".join(lines)


def refusal(table: dict, free: int, height: int, width: int, scfg: SolverConfig,
            tiled: bool) -> str:
    """The one sentence a run that will not fit stops with."""
    tips = ["a smaller --size"]
    if not tiled:
        tips.append("--tile 512")
    elif height > 256 or width > 256:
        tips.append("a smaller --tile")
    if scfg.kind != "adam":
        tips.append("--optimizer adam")
        if scfg.history > 10:
            tips.append("a shorter --lbfgs-history such as 10")
    return (f"This run needs about {_mib(table['total'])} at {width}x{height} px but only "
            f"{_mib(free)} is free on the device: try {', '.join(tips[:-1])} or {tips[-1]} "
            "(--plan shows the breakdown).")


def check(cfg: LossConfig, scfg: SolverConfig, height: int, width: int, tile=None,
          free: Optional[int] = None, execution: Optional[Execution] = None) -> dict:
    """Predicts the run's peak (`predict`); raises StylejaxError (one sentence, with the
    figures and what to change) if it exceeds ``free`` (default: `free_memory`). Returns
    the table."""
    table = predict(cfg, scfg, height, width, tile, execution=execution)
    free = free_memory() if free is None else free
    if table["total"] > free:
        raise StylejaxError(refusal(table, free, height, width, scfg, tile is not None))
    return table

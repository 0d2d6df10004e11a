"""The `stylize.py` command line: flags, presets merged with them, validation."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import stylejax.colour as colour
import stylejax.images as imageio
from stylejax.cli.serve import DEFAULT_PORT
from stylejax.errors import StylejaxError
from stylejax.execution import AUTO_CPU, CONVS, DTYPES, Execution
from stylejax.losses import LossConfig
from stylejax.presets import PRESETS, preset_config
from stylejax.solvers import OPTIMIZERS, SolverConfig, parse_precondition


def _layers(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers, got {text!r}")


def _port(text: str) -> int:
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 (0: any free one), "
                                         f"got {text!r}")
    return port


def _flat(groups):
    """nargs="+" of comma lists ("3 7" or "3,7") -> one tuple, or None."""
    return None if groups is None else tuple(v for g in groups for v in g)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, exit 2, as argparse does, without the usage dump
        raise StylejaxError(f"{message} (see --help).")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize.py", description=(
        "Neural style transfer (Gatys et al. 2016): repaint CONTENT in the style of STYLE. "
        "A preset sets the defaults; explicit flags override it. For its own process this "
        "command keeps compiled programs in a cache ($STYLEJAX_CACHE/xla, default "
        "~/.cache/stylejax/xla) and, on glibc, fixes malloc's trim/mmap thresholds so the "
        "steps' scratch memory is reused (unless MALLOC_*_ or GLIBC_TUNABLES set them); "
        "the library leaves both alone."))
    p.add_argument("content", nargs="?", help="content image (any format Pillow reads); "
                                               "or a folder of them with --content-dir")
    p.add_argument("style", nargs="*", help="style image(s); or give them with --style")
    p.add_argument("--style", dest="style_images", nargs="+", metavar="STYLE",
                   help="style image(s), instead of after CONTENT")
    p.add_argument("--style-blend-weights", type=_floats, nargs="+", metavar="W",
                   help="one weight per style image, e.g. 3 7 (normalised to sum 1; default "
                        "equal); with --content-mask, the weight of each style's region")
    p.add_argument("--preserve-colors", choices=("none",) + colour.MODES, default="none",
                   help="luminance: transfer on YIQ luminance and keep the content's chroma; "
                        "histogram: match each style's colour mean and covariance to the "
                        "content's first (Gatys et al. 2017)")
    p.add_argument("--scales", type=_ints, nargs="+", metavar="PX",
                   help="coarse to fine, e.g. 256,512,1024: optimise at each size in turn "
                        "(--epochs each), each result upsampled as the next start; the last "
                        "is the output size (replaces --size)")
    p.add_argument("--content-mask", nargs="+", metavar="PATH",
                   help="regions of the content: one grey label image (black = style 1, "
                        "white = the last, evenly spaced greys between) or one mask per "
                        "style (white = 1); region i takes style i")
    p.add_argument("--style-masks", nargs="+", metavar="PATH",
                   help="one mask per style image (white = use this part; 'none' = all of "
                        "it): where each style is sampled")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--weights", help="converted VGG-19 (default: $STYLEJAX_WEIGHTS or "
                                     "weights/vgg19.msgpack)")
    p.add_argument("--preset", default="johnson", help=f"one of {', '.join(PRESETS)} "
                                                       "(default: johnson)")
    p.add_argument("--size", type=int, help="output size in px: the long side (seed preset: "
                                            "the short side); johnson/gatys: 512")
    p.add_argument("--epochs", type=int, help="number of epochs (compiled solver calls)")
    p.add_argument("--max-iter", type=int, help="solver iterations per epoch")
    p.add_argument("--lr", type=float, help="L-BFGS: fixed step (0 = line search); Adam: "
                                            "learning rate")
    p.add_argument("--snapshot-every", type=int, help="write a snapshot every N epochs")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=SolverConfig.kind)
    p.add_argument("--lbfgs-history", type=int, default=SolverConfig.history,
                   help=f"L-BFGS memory (default {SolverConfig.history})")
    p.add_argument("--precondition", default=SolverConfig.precondition, metavar="PX|auto",
                   help="opt-in: optimize a smoothed parametrization of the image, detail "
                        "finer than PX pixels damped early (the same loss, fewer iterations "
                        "to it, but a fixed budget ends on a smoother image); auto = 1/8 of "
                        "the image's shorter side (default: 0, off: the paper's L-BFGS on "
                        "the pixels)")
    p.add_argument("--init", default="content", help="content, noise, or an image path")
    p.add_argument("--seed", type=int, default=0, help="random seed for --init noise")
    p.add_argument("--content-weight", type=float)
    p.add_argument("--style-weight", type=float)
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--pooling", choices=("max", "avg"))
    p.add_argument("--content-layers", type=_layers, help="comma-separated, e.g. relu4_2")
    p.add_argument("--style-layers", type=_layers,
                   help="comma-separated, e.g. relu1_1,relu2_1,relu3_1,relu4_1,relu5_1")
    p.add_argument("--style-layer-weights", type=_floats, help="comma-separated, one per "
                                                               "style layer")
    p.add_argument("--style-scale", type=float, default=1.0,
                   help="style image size relative to the output size (default 1)")
    p.add_argument("--precision", choices=("f32", "bf16") + DTYPES, default=Execution.dtype,
                   help="VGG activations: f32, or bf16 for GPU/TPU (Grams, loss, image and "
                        "L-BFGS memory stay float32)")
    p.add_argument("--conv", choices=CONVS, default=Execution.conv,
                   help="convolution algorithm: winograd (F(4x4,3x3) on the layers with >= 64 "
                        "input and >= 128 output channels and >= 512 output pixels; float32 "
                        "only; faster on CPU), direct, or auto (default: "
                        f"{AUTO_CPU} on CPU, direct on GPU/TPU and in bf16); the same loss "
                        "and gradient to float32 rounding (see stylejax/execution.py)")
    p.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS,
                   help="refuse input images with more pixels than this")
    # Many images and several devices: see stylejax/batch.py and stylejax/devices.py.
    p.add_argument("--content-dir", metavar="DIR",
                   help="stylize every image in DIR (one compiled batch per size): writes "
                        "OUT/<name>.png and OUT/snapshots/<name>_NNNN.png; --resume skips "
                        "images already written")
    p.add_argument("--batch-size", type=int,
                   help="with --content-dir: most images optimised at once (default: 8 on "
                        "GPU/TPU or the device count if larger; on CPU one per device)")
    p.add_argument("--shard", choices=("auto", "batch", "spatial", "none"), default="auto",
                   help="several devices: auto/batch split the images of a batch over them; "
                        "spatial splits each image's rows (one image too large for one "
                        "device); none uses one device")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU pod "
                        "slice; also $STYLEJAX_DISTRIBUTED=1); run the same command on "
                        "every host")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (same flags; --epochs may grow)")
    # Images beyond memory: see stylejax/tiling.py and stylejax/plan.py.
    p.add_argument("--tile", type=int, metavar="PX",
                   help="optimise overlapping PX x PX tiles (grid moved randomly each "
                        "epoch, overlaps blended) instead of the whole image at once")
    p.add_argument("--tile-overlap", type=int, metavar="PX",
                   help="px shared by neighbouring tiles (default: a quarter of --tile, "
                        ">= 16)")
    p.add_argument("--plan", action="store_true",
                   help="print the predicted peak memory and the device's free memory, "
                        "then exit without running")
    p.add_argument("--serve", type=_port, nargs="?", const=DEFAULT_PORT, metavar="PORT",
                   help="watch the run in a browser at http://127.0.0.1:PORT/ (default "
                        f"{DEFAULT_PORT}; 0: any free port): the latest image, the loss curve "
                        "and the progress, live; after the run, until Ctrl-C")
    p.add_argument("--serve-host", default="127.0.0.1", metavar="HOST",
                   help="the address --serve listens on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0: every network interface)")
    return p


@dataclass(frozen=True)
class RunConfig:
    """Everything a command-line run needs, after the preset and the flags are merged."""

    loss: LossConfig
    execution: Execution
    size: int
    edge: str
    epochs: int
    max_iter: int
    lr: float
    snapshot_every: int
    optimizer: str
    history: int
    init: str
    seed: int
    style_scale: float
    style_to_content_size: bool
    style_blend_weights: Optional[tuple] = None
    preserve_colors: Optional[str] = None
    scales: Optional[tuple] = None
    precondition: Union[float, str] = 0.0


def solver_config(rc: RunConfig) -> SolverConfig:
    """The run's solver settings."""
    return SolverConfig(rc.optimizer, iterations=rc.max_iter, lr=rc.lr, history=rc.history,
                        precondition=rc.precondition)


def style_paths(args) -> list:
    """The style image paths: those after CONTENT, or those of --style (not both)."""
    if args.style and args.style_images:
        raise StylejaxError("Give the style images either after CONTENT or with --style, "
                            "not both.")
    paths = list(args.style or args.style_images or [])
    if not paths:
        raise StylejaxError("Give at least one style image: stylize.py CONTENT STYLE "
                            "[STYLE ...] (see --help).")
    return paths


def run_config(args) -> RunConfig:
    """Merges ``args`` over the preset's defaults and validates the result."""
    if args.preset not in PRESETS:
        raise StylejaxError(f"Unknown preset {args.preset!r}: use one of {', '.join(PRESETS)}.")
    preset = PRESETS[args.preset]
    overrides = {k: v for k, v in dict(
        content_weight=args.content_weight, style_weight=args.style_weight,
        tv_weight=args.tv_weight, pooling=args.pooling, content_layers=args.content_layers,
        style_layers=args.style_layers, style_layer_weights=args.style_layer_weights).items()
        if v is not None}
    if args.style_layers is not None and args.style_layer_weights is None:
        overrides["style_layer_weights"] = (1.0,) * len(args.style_layers) \
            if args.preset == "johnson" else None
    dtype = {"f32": "float32", "bf16": "bfloat16"}.get(args.precision, args.precision)
    loss = preset_config(args.preset, **overrides)
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    rc = RunConfig(
        loss=loss, execution=Execution(args.conv, dtype), size=pick(args.size, "size"),
        edge="short" if args.preset == "seed" else "long",
        epochs=pick(args.epochs, "epochs"), max_iter=pick(args.max_iter, "max_iter"),
        lr=pick(args.lr, "lr"), snapshot_every=pick(args.snapshot_every, "snapshot_every"),
        optimizer=args.optimizer, history=args.lbfgs_history, init=args.init, seed=args.seed,
        style_scale=args.style_scale, style_to_content_size=args.preset == "seed",
        style_blend_weights=_flat(args.style_blend_weights),
        preserve_colors=None if args.preserve_colors == "none" else args.preserve_colors,
        scales=_flat(args.scales), precondition=parse_precondition(args.precondition))
    n_styles = len(style_paths(args))
    if rc.style_blend_weights is not None and (
            len(rc.style_blend_weights) != n_styles or min(rc.style_blend_weights) < 0
            or sum(rc.style_blend_weights) <= 0):
        raise StylejaxError(f"--style-blend-weights needs {n_styles} non-negative number(s), "
                            f"one per style image and not all zero, got "
                            f"{' '.join(f'{w:g}' for w in rc.style_blend_weights)}.")
    if rc.scales is not None:
        if min(rc.scales) < 1 or any(b <= a for a, b in zip(rc.scales, rc.scales[1:])):
            raise StylejaxError(f"--scales must be increasing sizes >= 1 px, got "
                                f"{','.join(map(str, rc.scales))}.")
        if args.size is not None and args.size != rc.scales[-1]:
            raise StylejaxError(f"--size {args.size} disagrees with the last of --scales "
                                f"({rc.scales[-1]}), which is the output size: drop --size.")
        rc = dataclasses.replace(rc, size=rc.scales[-1])
    if args.style_masks is not None and len(args.style_masks) != n_styles:
        raise StylejaxError(f"--style-masks needs one mask per style image ({n_styles}), got "
                            f"{len(args.style_masks)} (write 'none' for a style without one).")
    if args.content_mask is not None and len(args.content_mask) not in (1, n_styles):
        raise StylejaxError(f"--content-mask takes one label image or one mask per style "
                            f"image ({n_styles}), got {len(args.content_mask)}.")
    for name in ("size", "epochs", "max_iter", "snapshot_every", "history"):
        if getattr(rc, name) < 1:
            raise StylejaxError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(rc, name)}.")
    if rc.lr < 0 or not rc.style_scale > 0:
        raise StylejaxError("--lr must be >= 0 and --style-scale > 0.")
    return rc



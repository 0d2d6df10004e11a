"""The epoch loop: `stylize()` as a library call, and the `stylize.py` command line.

This is the only module with a loop over epochs, files, the clock and a progress bar; the
loss and the solver it drives are pure and compiled once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from stylejax import images as imageio
from stylejax.errors import StylejaxError
from stylejax.losses import PRESETS, LossConfig, make_targets, preset_config
from stylejax.vgg import min_size
from stylejax.solvers import OPTIMIZERS, SolverConfig, init_state, run_epoch
from stylejax.weights import atomic_write_bytes, load_vgg19

# On CPU, XLA cannot reuse donated buffers and says so on every call; donation still pays
# on GPU/TPU, where the image and the L-BFGS history are replaced each epoch.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


@dataclass
class StylizeResult:
    """``image``: the final [1, H, W, 3] float32 image; ``losses``: the loss after each epoch;
    ``seconds``: wall time of each epoch (the first includes compilation)."""

    image: np.ndarray
    losses: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def initial_image(init, content, seed: int = 0) -> jax.Array:
    """The starting image [1, H, W, 3]: "content", "noise" (uniform white noise in [0, 1],
    as Gatys et al.; ``seed`` picks it) or an array resized to the content's size."""
    content = jnp.asarray(content, jnp.float32).reshape((1,) + tuple(content.shape[-3:]))
    if isinstance(init, str) and init == "content":
        return content
    if isinstance(init, str) and init == "noise":
        return jax.random.uniform(jax.random.key(seed), content.shape, jnp.float32)
    if isinstance(init, str):
        raise StylejaxError(f"Unknown init {init!r}: use content, noise, or an image path.")
    a = np.asarray(init, np.float32).reshape(tuple(np.shape(init)[-3:]))
    return jnp.asarray(imageio.resize(a, *content.shape[1:3]))[None]


def run_epochs(vgg, targets, cfg: LossConfig, scfg: SolverConfig, state, last: int,
               first: int = 1):
    """Runs epochs ``first..last`` from ``state``; yields ``(epoch, state, loss)`` after each.

    The consumer may read or save ``state`` before asking for the next epoch (which donates
    it). Raises StylejaxError when the loss stops being finite.
    """
    for epoch in range(first, last + 1):
        state = run_epoch(state, vgg, targets, cfg=cfg, scfg=scfg)
        loss = float(state.value)  # the one host sync per epoch
        if not math.isfinite(loss):
            raise StylejaxError(
                f"The loss became {loss} in epoch {epoch}; stopped, keeping the last good "
                "image: lower --lr or the loss weights, or use --optimizer optax-lbfgs.")
        yield epoch, state, loss


def stylize(vgg, content, style, cfg: LossConfig, *, epochs: int, max_iter: int,
            optimizer: str = "lbfgs", lr: float = 0.0, init="content", seed: int = 0,
            callback: Optional[Callable] = None, history: int = 100,
            style_blend_weights=None) -> StylizeResult:
    """Optimizes an image so its VGG-19 content matches ``content`` and its style ``style``.

    Args:
      vgg: the bundle from `load_vgg19`.
      content: [H, W, 3] or [1, H, W, 3] RGB in [0, 1]; the output has its size.
      style: one image or a list (any sizes), blended by ``style_blend_weights``.
      cfg: the loss (`LossConfig` or `preset_config(...)`).
      epochs: number of compiled solver calls; max_iter: solver iterations in each.
      optimizer, lr, history: see `SolverConfig`.
      init: "content", "noise" or an image array.
      callback: ``callback(epoch, image, loss)`` after every epoch (epoch from 1; image a
        numpy [1, H, W, 3] copy; loss a float).
    Raises:
      StylejaxError: bad arguments, or a NaN/inf loss (the last good image was already
        passed to ``callback``).
    """
    if epochs < 1:
        raise StylejaxError(f"The number of epochs must be >= 1, got {epochs}.")
    scfg = SolverConfig(optimizer, iterations=max_iter, lr=lr, history=history)
    targets = make_targets(vgg, content, style, cfg, style_blend_weights)
    state = init_state(scfg, vgg, initial_image(init, content, seed), targets, cfg)
    result = StylizeResult(image=np.asarray(state.image))
    start = time.perf_counter()
    for epoch, state, loss in run_epochs(vgg, targets, cfg, scfg, state, epochs):
        result.seconds.append(time.perf_counter() - start)
        result.image = np.asarray(state.image)
        result.losses.append(loss)
        if callback is not None:
            callback(epoch, result.image, loss)
        start = time.perf_counter()
    return result


# ---------------------------------------------------------------- command line


def _layers(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, exit 2, as argparse does, without the usage dump
        raise StylejaxError(f"{message} (see --help).")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize.py", description=(
        "Neural style transfer (Gatys et al. 2016): repaint CONTENT in the style of STYLE. "
        "A preset sets the defaults; explicit flags override it."))
    p.add_argument("content", help="content image (any format Pillow reads)")
    p.add_argument("style", help="style image")
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
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs")
    p.add_argument("--lbfgs-history", type=int, default=100, help="L-BFGS memory (default 100)")
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
    p.add_argument("--precision", choices=("f32", "bf16", "float32", "bfloat16"), default="f32",
                   help="VGG activations: f32, or bf16 for GPU/TPU (Grams, loss, image and "
                        "L-BFGS memory stay float32)")
    p.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS,
                   help="refuse input images with more pixels than this")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (same flags; --epochs may grow)")
    return p


@dataclass(frozen=True)
class RunConfig:
    """Everything a command-line run needs, after the preset and the flags are merged."""

    loss: LossConfig
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
    loss = preset_config(args.preset, dtype=dtype, **overrides)
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    rc = RunConfig(
        loss=loss, size=pick(args.size, "size"),
        edge="short" if args.preset == "seed" else "long",
        epochs=pick(args.epochs, "epochs"), max_iter=pick(args.max_iter, "max_iter"),
        lr=pick(args.lr, "lr"), snapshot_every=pick(args.snapshot_every, "snapshot_every"),
        optimizer=args.optimizer, history=args.lbfgs_history, init=args.init, seed=args.seed,
        style_scale=args.style_scale, style_to_content_size=args.preset == "seed")
    for name in ("size", "epochs", "max_iter", "snapshot_every", "history"):
        if getattr(rc, name) < 1:
            raise StylejaxError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(rc, name)}.")
    if rc.lr < 0 or not rc.style_scale > 0:
        raise StylejaxError("--lr must be >= 0 and --style-scale > 0.")
    return rc


def prepare_images(rc: RunConfig, content_path, style_path, max_pixels):
    """Loads and resizes the content and style images; returns float [H, W, 3] arrays."""
    content = imageio.load_image(content_path, max_pixels)
    style = imageio.load_image(style_path, max_pixels)
    h, w = imageio.fit_size(*content.shape[:2], rc.size, rc.edge)
    content = imageio.resize(content, h, w)
    if rc.style_to_content_size:
        style = imageio.resize(style, h, w)
    else:
        style = imageio.resize(style, *imageio.fit_size(
            *style.shape[:2], max(1, round(max(h, w) * rc.style_scale)), "long"))
    need = min_size(rc.loss.layers)
    for name, image in (("content", content), ("style", style)):
        if min(image.shape[:2]) < need:
            raise StylejaxError(
                f"The {name} image is {image.shape[1]}x{image.shape[0]} px after resizing, too "
                f"small for the chosen layers: they need at least {need} px on each side "
                "(raise --size or --style-scale).")
    return content, style


CHECKPOINT = "checkpoint.msgpack"


def _identity(rc: RunConfig, content_path, style_path) -> dict:
    """What a checkpoint must share with the command that resumes it (epochs may grow)."""
    ident = dataclasses.asdict(rc)
    for key in ("epochs", "snapshot_every"):
        ident.pop(key)
    ident["inputs"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                       for p in (content_path, style_path)]
    return json.loads(json.dumps(ident))  # tuples -> lists, as they come back from JSON


class _Outputs:
    """Snapshots, final image, contact sheet, loss log and checkpoint, all written atomically."""

    def __init__(self, out: Path, rc: RunConfig, identity: dict):
        self.out, self.rc, self.identity = out, rc, identity
        self.log = []

    def epoch(self, epoch, image, loss, seconds):
        snapshot = epoch % self.rc.snapshot_every == 0 or epoch == self.rc.epochs
        self.log.append({"epoch": epoch, "iterations": epoch * self.rc.max_iter,
                         "loss": loss, "seconds": seconds,
                         "snapshot": f"snapshot_{epoch:04d}.png" if snapshot else ""})
        if snapshot:
            imageio.save_image(self.out / self.log[-1]["snapshot"], image)
        self.write_log()
        return snapshot

    def write_log(self):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["epoch", "iterations", "loss", "seconds", "snapshot"])
        writer.writeheader()
        writer.writerows(self.log)
        atomic_write_bytes(self.out / "losses.csv", buf.getvalue().encode())
        atomic_write_bytes(self.out / "losses.json", json.dumps(self.log, indent=1).encode())

    def checkpoint(self, epoch, state):
        record = {"format": "stylejax-checkpoint", "version": 1, "epoch": epoch,
                  "identity": json.dumps(self.identity), "log": json.dumps(self.log),
                  "state": serialization.to_state_dict(state)}
        atomic_write_bytes(self.out / CHECKPOINT, serialization.msgpack_serialize(record))

    def resume(self, template):
        """Reads the checkpoint into a state shaped like ``template``; returns (epoch, state)."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise StylejaxError(f"Nothing to resume: {path} does not exist (run without "
                                "--resume to start afresh).")
        try:
            record = serialization.msgpack_restore(path.read_bytes())
            identity = json.loads(record["identity"])
        except Exception:  # msgpack and json raise several unrelated types for damaged input
            raise StylejaxError(f"{path} is damaged: delete it and start afresh.") from None
        if identity != self.identity:
            changed = sorted(k for k in set(identity) | set(self.identity)
                             if identity.get(k) != self.identity.get(k))
            raise StylejaxError(
                f"The checkpoint in {self.out} was made with other settings or images "
                f"({', '.join(changed)} differ): resume with the original command, or use "
                "another --out.")
        self.log = [e for e in json.loads(record["log"]) if e["epoch"] <= record["epoch"]]
        return record["epoch"], serialization.from_state_dict(template, record["state"])

    def finish(self, content, image, name="final.png"):
        imageio.save_image(self.out / name, image)
        shots = [e for e in self.log if e["snapshot"] and (self.out / e["snapshot"]).is_file()]
        frames = [imageio.load_image(self.out / e["snapshot"]) for e in shots]
        imageio.save_image(self.out / "contact_sheet.png", imageio.contact_sheet(
            [content] + frames, ["content"] + [f"epoch {e['epoch']}  loss {e['loss']:.4g}"
                                               for e in shots]))


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: finish the current epoch, then stop. Second: stop at once."""

    def __init__(self):
        self.requested = None

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``stylize.py CONTENT STYLE [flags]``; returns the exit status."""
    try:
        return _main(argv)
    except StylejaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the snapshots and the last checkpoint are kept (resume "
              "with the same command and --resume).", file=sys.stderr)
        return 130


def _main(argv) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    rc = run_config(args)
    content, style = prepare_images(rc, args.content, args.style, args.max_pixels)
    init = rc.init if rc.init in ("content", "noise") else imageio.load_image(rc.init,
                                                                              args.max_pixels)
    vgg = load_vgg19(args.weights)
    out = imageio.ensure_writable_dir(args.out)
    outputs = _Outputs(out, rc, _identity(rc, args.content, args.style))
    scfg = SolverConfig(rc.optimizer, iterations=rc.max_iter, lr=rc.lr, history=rc.history)
    targets = make_targets(vgg, content, style, rc.loss)
    state = init_state(scfg, vgg, initial_image(init, content, rc.seed), targets, rc.loss)
    done = 0
    if args.resume:
        done, state = outputs.resume(state)
    image = np.asarray(state.image)
    bar = tqdm(total=rc.epochs, initial=done, unit="epoch", file=sys.stderr,
               dynamic_ncols=True)
    last = time.perf_counter()
    try:
        with _StopOnSignal() as stop:
            for epoch, state, loss in run_epochs(vgg, targets, rc.loss, scfg, state,
                                                 rc.epochs, done + 1):
                now = time.perf_counter()
                image, done = np.asarray(state.image), epoch
                if outputs.epoch(epoch, image, loss, now - last) or stop.requested:
                    outputs.checkpoint(epoch, state)
                bar.set_postfix_str(f"loss {loss:.4g}, {rc.max_iter / (now - last):.2f} it/s")
                bar.update(1)
                last = now
                if stop.requested:
                    break
    except StylejaxError:
        outputs.finish(content, image, "last.png")
        raise
    finally:
        bar.close()
    if stop.requested:
        outputs.finish(content, image, "last.png")
        print(f"error: stopped by {stop.requested} after epoch {done}; wrote {out / 'last.png'} "
              f"and a checkpoint: run the same command with --resume to continue.",
              file=sys.stderr)
        return 130
    outputs.finish(content, image)
    loss = f"loss {outputs.log[-1]['loss']:.6g} after " if outputs.log else ""
    print(f"wrote {out / 'final.png'} ({loss}{done * rc.max_iter} iterations)")
    return 0

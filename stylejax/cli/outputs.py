"""A command-line run's files: snapshots, final image, contact sheet, loss log and its plot
(losses.png), checkpoint (each written atomically), and the Ctrl-C handling that lets an epoch
finish."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import signal
from pathlib import Path

from flax import serialization
from PIL import Image, ImageDraw

import stylejax.images as imageio
from stylejax.cli.options import RunConfig
from stylejax.errors import StylejaxError
from stylejax.weights import atomic_write_bytes

CHECKPOINT = "checkpoint.msgpack"
CURVE_SIZE = (640, 360)  # losses.png, px
CURVE_BOX = (72, 28, 624, 320)  # its plot area: left, top, right, bottom (px)
CURVE_LINE = (40, 90, 200)  # the losses, points and line
CURVE_MARK = (230, 120, 20)  # the dashed lines where a new scale starts


def _text(draw, x, y, text, align="la"):
    """``text`` at (x, y): ``align`` is l/m/r (horizontal) then a/m (top, middle); by the
    text's box, so that Pillow's bitmap font (no anchors) serves as well as FreeType."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)
    x -= {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[align[0]] + x0
    y -= {"a": 0, "m": (y1 - y0) / 2}[align[1]] + y0
    draw.text((x, y), text, fill="black")


def _log_ticks(lo: float, hi: float) -> list:
    """Tick values in [lo, hi] (> 0) for a log axis: the powers of ten, else 1-2-5 steps,
    else (a range within a decade) evenly spaced round numbers; at least two."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5)):
        ticks = [m * 10.0 ** k for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 2:
            return ticks
    base = 10.0 ** math.floor(math.log10(hi - lo))
    for step in (5 * base, 2 * base, base, base / 2, base / 5):
        ticks = [i * step for i in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        if len(ticks) >= 3:
            return ticks
    return [lo, hi]


def _tick_label(value: float) -> str:
    mantissa, _, exponent = f"{value:.4g}".partition("e")  # 2e+05 -> 2e5, 3200 -> 3200
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def loss_curve_png(points, total: int, marks=()) -> bytes:
    """losses.png: the loss of each epoch, ``points`` [(epoch, loss)], as points joined by a
    line on a log-scale y axis, epochs 1..``total`` (or the last point's) along x, and a
    dashed vertical line at each of ``marks`` [(epoch, label)]: a new scale starts after
    that epoch. Losses that are not finite and > 0 are left out. Returns the PNG's bytes."""
    img = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = CURVE_BOX
    n = max([total, 1] + [e for e, _ in points])

    def x(epoch):  # epoch e in the middle of its 1/n of the width
        return left + (epoch - 0.5) * (right - left) / n

    _text(draw, left, 8, "loss per epoch (log scale)")
    _text(draw, (left + right) / 2, bottom + 22, "epoch", "ma")
    step = next(s for s in (m * 10 ** k for k in range(12) for m in (1, 2, 5)) if n / s <= 10)
    for e in [1] * (step > 1) + list(range(step, n + 1, step)):
        draw.line([(x(e), bottom), (x(e), bottom + 4)], fill="black")
        _text(draw, x(e), bottom + 6, str(e), "ma")
    good = [(e, v) for e, v in points if math.isfinite(v) and v > 0]
    if good:
        lo, hi = (math.log10(f(v for _, v in good)) for f in (min, max))
        pad = max(0.05 * (hi - lo), 0.05)
        lo, hi = lo - pad, hi + pad

        def y(loss):
            return bottom - (math.log10(loss) - lo) / (hi - lo) * (bottom - top)

        for tick in _log_ticks(10 ** lo, 10 ** hi):
            draw.line([(left, y(tick)), (right, y(tick))], fill=(225, 225, 225))
            draw.line([(left - 4, y(tick)), (left, y(tick))], fill="black")
            _text(draw, left - 7, y(tick), _tick_label(tick), "rm")
    for epoch, label in marks:
        if epoch < n:
            xm = x(epoch + 0.5)
            for y0 in range(top, bottom, 8):
                draw.line([(xm, y0), (xm, min(y0 + 4, bottom))], fill=CURVE_MARK, width=2)
            _text(draw, xm + 4, top + 3, label)
    draw.rectangle(CURVE_BOX, outline="black")
    if good:
        xy = [(x(e), y(v)) for e, v in good]
        if len(xy) > 1:
            draw.line(xy, fill=CURVE_LINE, width=2)
        for px, py in xy:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=CURVE_LINE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def identity(rc: RunConfig, content_path, *input_paths) -> dict:
    """What a checkpoint must share with the command that resumes it (epochs may grow)."""
    ident = dataclasses.asdict(rc)
    # --epochs may grow on --resume, except with --scales, where it fixes each scale's epochs.
    for key in ("snapshot_every",) + (("epochs",) if rc.scales is None else ()):
        ident.pop(key)
    # How the loss is executed changes the speed, not the loss being minimised (the result
    # then differs from an uninterrupted run by float rounding only).
    ident.pop("execution")
    ident["inputs"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                       for p in (content_path, *input_paths)]
    return json.loads(json.dumps(ident))  # tuples -> lists, as they come back from JSON


def check_identity(saved: dict, current: dict, what: str, inputs: str) -> None:
    """Raises the one-sentence StylejaxError naming the settings that differ, unless the
    ``saved`` identity of ``what`` (e.g. "The checkpoint in out") equals ``current``."""
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise StylejaxError(f"{what} was made with other settings or {inputs} "
                            f"({', '.join(changed)} differ): resume with the original "
                            "command, or use another --out.")


class Outputs:
    """Snapshots, final image, contact sheet, loss log and its plot, and checkpoint, all
    written atomically. ``curve_png``: the bytes of the last losses.png written."""

    def __init__(self, out: Path, rc: RunConfig, identity: dict):
        self.out, self.rc, self.identity = out, rc, identity
        self.log = []
        self.curve_png = b""

    def epoch(self, epoch, image, loss, seconds, last=False):
        """Logs an epoch; snapshots every --snapshot-every and at ``last`` (a scale's end)."""
        snapshot = epoch % self.rc.snapshot_every == 0 or epoch == self.rc.epochs or last
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
        # --scales: --epochs at each size, so a new scale starts after every rc.epochs epochs.
        scales = self.rc.scales or (self.rc.size,)
        marks = [(k * self.rc.epochs, f"{px} px") for k, px in enumerate(scales) if k]
        self.curve_png = loss_curve_png([(e["epoch"], e["loss"]) for e in self.log],
                                        self.rc.epochs * len(scales), marks)
        atomic_write_bytes(self.out / "losses.png", self.curve_png)

    def checkpoint(self, epoch, state):
        """Writes ``state`` (a `SolverState`) as the checkpoint after ``epoch``."""
        record = {"format": "stylejax-checkpoint", "version": 1, "epoch": epoch,
                  "identity": json.dumps(self.identity), "log": json.dumps(self.log),
                  "state": serialization.to_state_dict(state)}
        atomic_write_bytes(self.out / CHECKPOINT, serialization.msgpack_serialize(record))

    def read_checkpoint(self) -> dict:
        """The checkpoint's record, checked against this run's identity."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise StylejaxError(f"Nothing to resume: {path} does not exist (run without "
                                "--resume to start afresh).")
        try:
            record = serialization.msgpack_restore(path.read_bytes())
            identity = json.loads(record["identity"])
        except Exception:  # msgpack and json raise several unrelated types for damaged input
            raise StylejaxError(f"{path} is damaged: delete it and start afresh.") from None
        check_identity(identity, self.identity, f"The checkpoint in {self.out}", "images")
        return record

    def resume(self):
        """Reads the checkpoint (checked against this run's identity) and its loss log;
        returns ``(epoch, state dict)`` for `stylejax.run.stylize_epochs`'s ``resume``."""
        record = self.read_checkpoint()
        self.log = [e for e in json.loads(record["log"]) if e["epoch"] <= record["epoch"]]
        return record["epoch"], record["state"]

    def finish(self, content, image, name="final.png"):
        """Writes ``image`` as ``name`` and the contact sheet of the snapshots."""
        imageio.save_image(self.out / name, image)
        shots = [e for e in self.log if e["snapshot"] and (self.out / e["snapshot"]).is_file()]
        frames = [imageio.load_image(self.out / e["snapshot"]) for e in shots]
        imageio.save_image(self.out / "contact_sheet.png", imageio.contact_sheet(
            [content] + frames, ["content"] + [f"epoch {e['epoch']}  loss {e['loss']:.4g}"
                                               for e in shots]))


class StopOnSignal:
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

"""A command-line run's files: snapshots, final image, contact sheet, loss log, checkpoint
(each written atomically), and the Ctrl-C handling that lets an epoch finish."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import signal
from pathlib import Path

from flax import serialization

from stylejax import images as imageio
from stylejax.cli.options import RunConfig
from stylejax.errors import StylejaxError
from stylejax.weights import atomic_write_bytes

CHECKPOINT = "checkpoint.msgpack"



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


class Outputs:
    """Snapshots, final image, contact sheet, loss log and checkpoint, all written atomically."""

    def __init__(self, out: Path, rc: RunConfig, identity: dict):
        self.out, self.rc, self.identity = out, rc, identity
        self.log = []

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
        if identity != self.identity:
            changed = sorted(k for k in set(identity) | set(self.identity)
                             if identity.get(k) != self.identity.get(k))
            raise StylejaxError(
                f"The checkpoint in {self.out} was made with other settings or images "
                f"({', '.join(changed)} differ): resume with the original command, or use "
                "another --out.")
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

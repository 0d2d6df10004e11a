"""The files of a ``stylize_video.py`` run in its --out folder: the flow cache (flow/), and
the progress --resume continues from (frames/, losses.csv/json, progress.json, state/), with
the identity a resumed command must share with the run it continues."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np

import stylejax.images as imageio
import stylejax.multipass as multipass
from stylejax.cli.outputs import check_identity
from stylejax.clip import as_frames
from stylejax.errors import StylejaxError
from stylejax.weights import atomic_write_bytes

PROGRESS = "progress.json"
LOG_FIELDS = ["frame", "pass", "file", "loss", "seconds", "consistent"]


class FlowCache:
    """``cache(a, b)``: ``flow(a, b, method)`` (`stylejax.flow.optical_flow`), each result
    kept as ``DIR/flow/<hash>.npz`` (the hash of the two frames and the method), so a second
    run on the same frames computes none."""

    def __init__(self, folder: Path, method: str, flow):
        self.folder, self.method, self.flow = folder, method, flow

    def __call__(self, a, b):
        h = hashlib.sha256(self.method.encode())
        for img in (a, b):
            h.update(np.ascontiguousarray(img, np.float32).tobytes())
        path = self.folder / f"{h.hexdigest()[:24]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return data["flow"]
        flow = self.flow(a, b, self.method)
        buf = io.BytesIO()
        np.savez(buf, flow=flow)
        atomic_write_bytes(path, buf.getvalue())
        return flow


def identity(args, rc, mode: str, frames: np.ndarray, chunk: Optional[int]) -> dict:
    """What a run's progress must share with the command that resumes it: the settings that
    change the result (defaults written out, so leaving a flag out equals giving its default;
    multipass: the resolved ``chunk`` too), and the frames and style files themselves."""
    ident = dataclasses.asdict(rc)
    for key in ("snapshot_every", "execution"):  # speed, not result (float rounding)
        ident.pop(key)
    ident.update(mode=mode, temporal_weight=args.temporal_weight, flow=args.flow,
                 long_term=sorted(args.long_term))
    if mode == "multipass":
        held = max(2, args.temporal_from or multipass.default_temporal_from(args.passes))
        ident.update(passes=args.passes, temporal_from=held, blend=args.blend, chunk=chunk)
        ident.pop("epochs")
    else:
        ident.update(first_epochs=args.first_epochs or rc.epochs)
    ident["frames"] = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
    ident["styles"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in args.style]
    return json.loads(json.dumps(ident))


class Progress:
    """The run's files in ``out``: frames/, losses.csv/json, progress.json and state/ (the
    float results --resume continues from), all written atomically, in that order, so the
    record never names a frame or state that is not on disk."""

    def __init__(self, out: Path, ident: dict, mode: str, shape: tuple, total: int,
                 shown=lambda k, image: image):
        self.out, self.identity, self.mode, self.shown = out, ident, mode, shown
        self.shape, self.total = tuple(shape), total  # frames' [T, H, W, 3]; frames or passes
        self.log: list = []
        self.done = 0
        self._saved = None

    def frame_file(self, k: int) -> str:
        return f"frames/{k + 1:05d}.png"

    def _record(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(self.log)
        atomic_write_bytes(self.out / "losses.csv", buf.getvalue().encode())
        atomic_write_bytes(self.out / "losses.json", json.dumps(self.log, indent=1).encode())
        atomic_write_bytes(self.out / PROGRESS, json.dumps(
            {"format": "stylejax-video-progress", "version": 1, "mode": self.mode,
             "done": self.done, "identity": self.identity, "log": self.log}).encode())

    def _save_state(self, name: str, array) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array, np.float32), allow_pickle=False)
        atomic_write_bytes(self.out / "state" / name, buf.getvalue())

    def frame(self, k: int, image, rows: list) -> None:
        """Sequential: frame ``k`` (0-based) is finished; ``image`` [H, W, 3] (as optimised;
        ``shown(k, image)`` is what frames/ gets)."""
        imageio.save_image(self.out / self.frame_file(k), self.shown(k, image)[None])
        self._save_state(f"{k + 1:05d}.npy", image)
        self.log += rows
        self.done = k + 1
        self._record()

    def finished_pass(self, number: int, images, rows: list) -> None:
        """Multipass: pass ``number`` is finished; ``images`` [T, H, W, 3]."""
        for k, image in enumerate(images):
            imageio.save_image(self.out / self.frame_file(k), self.shown(k, image)[None])
        # A file per pass, the older one deleted only after the record names the new one: an
        # interruption between the two writes leaves the recorded pass's state intact.
        self._save_state(f"pass-{number:03d}.npy", images)
        self.log += rows
        self.done = number
        self._record()
        for old in (self.out / "state").glob("pass-*.npy"):
            if old.name != f"pass-{number:03d}.npy":
                old.unlink()

    def saved(self) -> Optional[dict]:
        """progress.json as written by an earlier run (read once), or None if there is none
        or it cannot be read."""
        if self._saved is None:
            try:
                self._saved = json.loads((self.out / PROGRESS).read_text())
            except (OSError, ValueError):
                self._saved = {}
        return self._saved or None

    def recorded(self, key: str):
        """The recorded identity's ``key`` (None without a readable progress.json)."""
        identity = (self.saved() or {}).get("identity")
        return identity.get(key) if isinstance(identity, dict) else None

    def resume(self):
        """Reads progress.json (checked against this run) and the state; returns (done,
        results): [done, H, W, 3] finished frames (sequential) or [T, H, W, 3] after the
        last finished pass (multipass; None if none). A finished run's results are read
        back from frames/ (its state is deleted once the video is written)."""
        path = self.out / PROGRESS
        if not path.is_file():
            raise StylejaxError(f"Nothing to resume: {path} does not exist (run without "
                                "--resume to start afresh).")
        try:
            record = self.saved() or {}
            done, ident, log = int(record["done"]), record["identity"], list(record["log"])
            if done >= self.total:  # finished: frames/ holds the result, as shown
                results = self.written()
            elif done and self.mode == "sequential":
                results = np.stack([np.load(self.out / "state" / f"{k + 1:05d}.npy")
                                    for k in range(done)])
            else:
                results = (np.load(self.out / "state" / f"pass-{done:03d}.npy") if done
                           else None)
        except (OSError, ValueError, KeyError, TypeError, StylejaxError):
            raise StylejaxError(f"The progress in {self.out} is damaged or incomplete: start "
                                "afresh without --resume, or use another --out.") from None
        check_identity(ident, self.identity, f"The run in {self.out}", "frames")
        if results is not None and results.shape[1:] != self.shape[1:]:
            raise StylejaxError(f"The state in {self.out} does not fit these frames: start "
                                "afresh without --resume.")
        self.log, self.done = log, done
        return done, results

    def written(self) -> np.ndarray:
        """[T, H, W, 3]: the frames in frames/ (what the video is made of)."""
        return as_frames([imageio.load_image(self.out / self.frame_file(k))
                          for k in range(self.shape[0])])

    def clean(self) -> None:
        """Deletes state/ (the finished run's float results; frames/ keeps them)."""
        for path in (self.out / "state").glob("*.npy"):
            path.unlink()

"""A clip's frames and the optical flows between them, for the video modes (`stylejax.video`,
`stylejax.multipass`).

`FrameFlows` hands out the flow between any two frames of a clip, computing each once. With a
flow *function* (OpenCV's, `stylejax.flow`), the flows a mode will need are computed ahead on
a worker thread (OpenCV releases the GIL) while the device stylizes; `FrameFlows.seconds`
and `.waited` tell how much of the flows' time the stylization hid.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Sequence, Union

import numpy as np

import stylejax.temporal as temporal
from stylejax.errors import StylejaxError

FlowSource = Union[tuple, dict, Callable]
"""A flow function ``flow(a, b)`` -> the flow [H, W, 2] of image a into image b (both [H, W,
3] in [0, 1]); or a pair ``(forward, backward)`` of [T−1, H, W, 2] arrays (entry k−1: frame
k−1 into frame k, and frame k into frame k−1); or ``{offset: (forward, backward)}`` with
[T−offset, H, W, 2] arrays (entry i: frame i into i+offset, and i+offset into i)."""


def as_frames(frames) -> np.ndarray:
    """[T, H, W, 3] float32 in [0, 1] from an array or a list of same-sized frames."""
    shapes = [np.shape(f) for f in frames]
    if not shapes:
        raise StylejaxError("The video has no frames.")
    for i, s in enumerate(shapes):
        if s != shapes[0] or len(s) != 3 or s[-1] != 3:
            raise StylejaxError(f"Frame {i + 1} is {list(s)} but frame 1 is {list(shapes[0])}: "
                                "every frame must be [H, W, 3] of one size.")
    return np.asarray(frames, np.float32)


def check_offsets(offsets: Iterable[int]) -> tuple:
    """The long-term offsets (e.g. (1, 2, 4)) sorted; raises StylejaxError unless they are
    distinct positive integers."""
    out = tuple(sorted(int(j) for j in offsets))
    if not out or out[0] < 1 or len(set(out)) != len(out):
        raise StylejaxError(f"The long-term offsets must be distinct whole numbers >= 1 "
                            f"(e.g. 1,2,4), got {list(offsets)}.")
    return out


class FrameFlows:
    """The flows between the frames ``frames`` [T, H, W, 3] of a clip, from ``flow`` (a
    `FlowSource`). ``get(a, b)``: the flow [H, W, 2] float32 of frame a into frame b.
    ``prefetch(pairs)`` queues pairs on a worker thread (flow functions only); ``close()``
    stops it. ``seconds``: time spent computing flows; ``waited``: time `get` waited for them
    (the part the stylization did not hide)."""

    def __init__(self, frames, flow: FlowSource, offsets: Sequence[int] = (1,)):
        self.frames, self.offsets = frames, check_offsets(offsets)
        self.seconds = self.waited = 0.0
        self._lock = threading.Lock()
        self._futures: dict = {}
        self._pool = None
        if callable(flow):
            self._flow, self._tables = flow, None
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="stylejax-flow")
        else:
            self._flow, self._tables = None, self._check_tables(flow)

    def _check_tables(self, flow) -> dict:
        tables = flow if isinstance(flow, dict) else {1: flow}
        t, h, w = np.shape(self.frames)[:3]
        for j in self.offsets:
            if j not in tables:
                raise StylejaxError(f"The flows given hold no pairs {j} frames apart: give a "
                                    "flow function (e.g. stylejax.flow.flow_function()) or "
                                    f"{{offset: (forward, backward)}} for offsets "
                                    f"{list(self.offsets)}.")
            try:
                forward, backward = tables[j]
            except (TypeError, ValueError):
                raise StylejaxError("flow must be a function flow(a, b), a pair (forward, "
                                    "backward) of [T-1, H, W, 2] arrays, or {offset: pair}."
                                    ) from None
            want = (max(t - j, 0), h, w, 2)
            for name, f in (("forward", forward), ("backward", backward)):
                if tuple(np.shape(f)) != want:
                    raise StylejaxError(f"The {name} flow for offset {j} is "
                                        f"{list(np.shape(f))} but the frames need {list(want)}:"
                                        " compute it from these frames.")
        return tables

    def _compute(self, a: int, b: int) -> np.ndarray:
        start = time.perf_counter()
        out = np.asarray(self._flow(self.frames[a], self.frames[b]), np.float32)
        with self._lock:
            self.seconds += time.perf_counter() - start
        return out

    def _future(self, a: int, b: int) -> Future:
        with self._lock:
            fut = self._futures.get((a, b))
            if fut is None:
                fut = self._futures[(a, b)] = self._pool.submit(self._compute, a, b)
            return fut

    def prefetch(self, pairs: Iterable[tuple]) -> None:
        """Queues the flows of ``pairs`` (a, b), both ways, on the worker thread."""
        if self._pool is None:
            return
        for a, b in pairs:
            self._future(a, b)
            self._future(b, a)

    def get(self, a: int, b: int, keep: bool = True) -> np.ndarray:
        """The flow [H, W, 2] float32 of frame ``a`` into frame ``b``; ``keep=False`` forgets
        it once returned (a flow used once: the sequential mode's)."""
        if self._tables is not None:
            j = abs(b - a)
            forward, backward = self._tables[j]
            return np.asarray(forward[a] if b > a else backward[b], np.float32)
        fut = self._future(a, b)
        start = time.perf_counter()
        out = fut.result()
        self.waited += time.perf_counter() - start
        if not keep:
            with self._lock:
                self._futures.pop((a, b), None)
        return out

    def pairs(self, k: int, direction: int) -> list:
        """The (frame, reference) pairs of frame ``k``: references k − direction·j for each
        offset j that lies inside the clip."""
        t = len(self.frames)
        return [(k, k - direction * j) for j in self.offsets if 0 <= k - direction * j < t]

    def references(self, results, k: int, direction: int, keep: bool = True) -> dict:
        """Frame ``k`` held to its references k − direction·j (j in ``offsets``; +1: earlier
        frames, −1: later ones) among ``results`` [T, H, W, 3], the stylized frames:
        ``{"warped": [J, H, W, 3], "weights": [J, H, W, 1]}`` (`temporal.references`; a
        reference outside the clip gets weight 0), plus ``"flow"`` [J, H, W, 2] (frame k into
        each reference) and ``"frame"`` [J] int32 (each reference's index; −1 outside).
        ``keep=False``: forget the flows used (see `get`)."""
        h, w = np.shape(self.frames)[1:3]
        images, back, fwd, frame = [], [], [], []
        for j in self.offsets:
            r = k - direction * j
            inside = 0 <= r < len(self.frames)
            images.append(results[r] if inside else self.frames[k])
            back.append(self.get(k, r, keep) if inside else np.zeros((h, w, 2), np.float32))
            fwd.append(self.get(r, k, keep) if inside else np.zeros((h, w, 2), np.float32))
            frame.append(r if inside else -1)
        frame = np.asarray(frame, np.int32)
        back = np.stack(back)
        entry = temporal.references(np.stack(images), back, np.stack(fwd),
                                    (frame >= 0).astype(np.float32))
        return {**entry, "flow": back, "frame": frame}

    def close(self) -> None:
        """Stops the worker thread (queued flows not yet started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

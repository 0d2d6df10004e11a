"""Reading and writing the media of ``stylize_video.py``: the input clip (a video file through
PyAV, or a folder of frames), optionally a time range of it, and the output mp4 (H.264,
yuv420p) with the input's audio for the same range.

Times are seconds from the start of the input (its container's start time, so an MPEG-TS
that starts at 1.4 s still starts at 0 here); ranges are ``[start, end)``. Every failure a
user can cause (a missing, unreadable, damaged or audio-only file) is a `StylejaxError`
naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import stylejax.images as imageio
from stylejax.errors import StylejaxError

try:  # the `video` extra: PyAV (FFmpeg)
    import av
except ImportError:
    av = None

DEFAULT_FPS = 25
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif")
ENCODERS = ("libx264", "h264", "libopenh264")
# Audio codecs copied into the mp4 unchanged (when the whole track is wanted). FFmpeg's mp4
# muxer also takes mp2 and raw PCM, but few players play those from an mp4: they are
# re-encoded to AAC like everything else.
MP4_AUDIO = frozenset({"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"})
# Frame times are compared with a tolerance far below any frame interval, so --start 0.2
# keeps a frame whose time is 0.2 give or take float rounding.
_EPS = 1e-6


class Audio(str, enum.Enum):
    """What `write_video` did with the input's audio; prints as its value."""
    COPIED = "copied"
    REENCODED = "re-encoded"
    NONE = "none in input"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class Clip:
    """Frames read by `read_input`.

    frames: list of [H, W, 3] float32 arrays in [0, 1], one size. fps: the video's frame rate,
    or None for a folder (the caller's choice, the one it gave `read_input`). stem: the name
    for outputs. start: seconds, the time of the first frame kept (index / fps for a folder).
    source: the video file (where the audio is), None for a folder.
    """
    frames: list
    fps: Optional[Fraction]
    stem: str
    start: float = 0.0
    source: Optional[Path] = None


def need_extra(module, what: str):
    if module is None:
        raise StylejaxError(f"{what} needs the video extra: pip install 'stylejax[video]' "
                            "(opencv-python-headless and av).")
    return module


def _reason(e: Exception) -> str:
    """FFmpeg's words for an error, without the errno and file name PyAV adds."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text[:1].lower() + text[1:].rstrip(".")


def check_range(start: Optional[float], end: Optional[float]) -> tuple[float, float]:
    """(start, end) in seconds, None as 0 and infinity; refuses start < 0 or end <= start."""
    start = 0.0 if start is None else float(start)
    end = math.inf if end is None else float(end)
    if not start >= 0:
        raise StylejaxError(f"--start must be >= 0 seconds, got {start:g}.")
    if not end > start:
        raise StylejaxError(f"--end ({end:g} s) must be after --start ({start:g} s).")
    return start, end


def _in_range(t: float, start: float, end: float) -> bool:
    return start - _EPS <= t < end - _EPS


def _no_frames(start: float, end: float, what: str) -> StylejaxError:
    span = f"from {start:g} s" if end == math.inf else f"from {start:g} s to {end:g} s"
    return StylejaxError(f"No frames {span}: {what}.")


def read_video(path, limit: Optional[int] = None,
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
               start: Optional[float] = None, end: Optional[float] = None,
               prepare: Optional[Callable] = None) -> Clip:
    """The frames of a video file whose presentation times are in ``[start, end)`` seconds,
    at most the first ``limit`` of them, each passed through ``prepare`` ([H, W, 3] -> an
    array, e.g. a resize) as it is decoded, so a long clip is never held at full size.

    A video that ends before its container says it should (a truncated download) or that
    FFmpeg cannot read past some frame is refused, naming the frame, rather than read as a
    silently shorter clip; ``--end`` before the damage reads what is there.
    """
    need_extra(av, "Reading a video file")
    path = Path(path)
    start, end = check_range(start, end)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StylejaxError(f"{path} has no video stream (an audio file?): give a "
                                    "video file or a folder of frames.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = Fraction(rate).limit_denominator(1001) if rate else None
            origin = (container.start_time or 0) / av.time_base
            frames, first = _decode(container, stream, path, fps, origin,
                                    (start, end), limit, max_pixels, prepare)
            duration = _duration(container, stream, origin)
    except av.FFmpegError as e:
        raise StylejaxError(f"Cannot read {path} as a video: {_reason(e)}.") from None
    if not frames:
        length = f"{duration:.3g} s long" if duration else "of unknown length"
        raise _no_frames(start, end, f"the video {path} is {length}")
    return Clip(frames, fps, path.stem, first, path)


def _duration(container, stream, origin: float) -> Optional[float]:
    """Seconds from the container's start to the end of ``stream``, or None if unknown."""
    if stream.duration:
        return float((stream.start_time or 0) * stream.time_base) - origin + float(
            stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _decode(container, stream, path: Path, fps, origin: float, span, limit, max_pixels,
            prepare=None):
    """(frames [H, W, 3] in [0, 1] in ``span``, each through ``prepare`` if given, time of
    the first) of ``stream``."""
    frames, first, decoded, t = [], 0.0, 0, 0.0
    try:
        for frame in container.decode(stream):
            t = (frame.time - origin if frame.time is not None
                 else decoded / float(fps or DEFAULT_FPS))
            decoded += 1
            if t >= span[1] - _EPS:
                return frames, first
            if not _in_range(t, *span):
                continue
            if frame.width * frame.height > max_pixels:
                raise StylejaxError(f"{path} has {frame.width}x{frame.height} px frames, "
                                    f"more than --max-pixels {max_pixels}.")
            first = first if frames else t
            image = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
            frames.append(image if prepare is None else prepare(image))
            if limit and len(frames) >= limit:
                return frames, first
    except av.FFmpegError as e:
        if not decoded:
            raise
        raise StylejaxError(f"The video {path} is damaged after frame {decoded} "
                            f"({t:.3g} s): {_reason(e)}.") from None
    _check_complete(container, stream, path, fps, origin, decoded, t)
    return frames, first


def _check_complete(container, stream, path: Path, fps, origin: float, decoded: int,
                    last: float) -> None:
    """Refuses a video that ended early: fewer frames than its container declares and the
    last one more than a frame before the stream's end (an mp4 cut short with its index at
    the front decodes without an error; an edit list that hides frames is not damage)."""
    declared = stream.frames
    duration = _duration(container, stream, origin)
    step = 1.0 / float(fps) if fps else 0.1
    if declared and decoded < declared and duration and last + 1.5 * step < duration:
        raise StylejaxError(f"The video {path} is damaged after frame {decoded} "
                            f"({last:.3g} s of {duration:.3g} s, {declared} frames): "
                            "re-export it, or keep the frames before the damage with --end.")


def read_folder(path, limit: Optional[int] = None,
                max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
                start: Optional[float] = None, end: Optional[float] = None,
                fps: float = DEFAULT_FPS, prepare: Optional[Callable] = None) -> Clip:
    """The images of a folder sorted by name, frame i at i / ``fps`` seconds: those in
    ``[start, end)``, at most the first ``limit``, each through ``prepare`` as it is read;
    refuses mixed sizes naming the first odd frame. The clip's fps is None (the frame rate is the caller's, given here as ``fps``)."""
    path = Path(path)
    start, end = check_range(start, end)
    if not fps > 0:
        raise StylejaxError(f"--fps must be > 0, got {fps:g}.")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in imageio.IMAGE_SUFFIXES)
    if not files:
        raise StylejaxError(f"{path} holds no images ({', '.join(imageio.IMAGE_SUFFIXES)}): "
                            "put the video's frames there.")
    kept = [i for i in range(len(files)) if _in_range(i / float(fps), start, end)]
    if not kept:
        raise _no_frames(start, end, f"the folder {path} holds {len(files)} frames, "
                                     f"{len(files) / float(fps):.3g} s at {float(fps):g} fps")
    kept = kept[:limit] if limit else kept
    chosen = [files[i] for i in kept]
    frames, first = [], None
    for f in chosen:
        img = imageio.load_image(f, max_pixels)
        first = img.shape if first is None else first
        if img.shape != first:
            raise StylejaxError(
                f"Frame {f.name} is {img.shape[1]}x{img.shape[0]} px but {chosen[0].name} is "
                f"{first[1]}x{first[0]} px: every frame must have one size.")
        frames.append(img if prepare is None else prepare(img))
    return Clip(frames, None, path.resolve().name, kept[0] / float(fps), None)


def read_input(path, limit: Optional[int] = None,
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
               start: Optional[float] = None, end: Optional[float] = None,
               fps: float = DEFAULT_FPS, prepare: Optional[Callable] = None) -> Clip:
    """A `Clip` from a video file or a folder of frames: the frames in ``[start, end)``
    seconds (by presentation time for a video, by index / ``fps`` for a folder), at most the
    first ``limit`` of those, each through ``prepare`` as it is read."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path, limit, max_pixels, start, end, fps, prepare)
    if not path.is_file():
        raise StylejaxError(f"{path} does not exist: give a video file or a folder of frames.")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise StylejaxError(f"{path} is not a video ({', '.join(VIDEO_SUFFIXES)}) or a "
                            "folder of frames.")
    return read_video(path, limit, max_pixels, start, end, prepare)


def encoder() -> Optional[str]:
    """The first H.264 encoder PyAV has, or None."""
    if av is None:
        return None
    for name in ENCODERS:
        try:
            av.Codec(name, "w")
            return name
        except (ValueError, av.FFmpegError):
            continue
    return None


def write_video(path, frames, fps: Fraction, codec: str, audio_from=None,
                audio_start: float = 0.0) -> Audio:
    """``frames`` [T, H, W, 3] in [0, 1] as H.264 yuv420p at ``fps`` in an mp4, atomically
    (a temporary file beside ``path``, renamed at the end, removed on any failure); an odd
    width or height loses its last column or row (yuv420p needs even sizes).

    With ``audio_from`` (a media file), its audio from ``audio_start`` seconds for the
    frames' span T / fps goes with them: the packets unchanged when the span is the whole
    track (within one audio frame) in a codec mp4 holds (`MP4_AUDIO`), else decoded, cut to
    the span and encoded as AAC (mono stays mono, more channels become stereo). Returns what
    happened to the audio; `Audio.NONE` without ``audio_from`` or audio in the span.
    """
    need_extra(av, "Writing a video")
    path, frames = Path(path), np.asarray(frames)
    span = (float(audio_start), float(audio_start) + len(frames) / float(fps))
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    try:
        with _open_audio(audio_from) as source:
            # 0: the muxer waits for both streams, so audio muxed first still interleaves.
            with av.open(str(tmp), mode="w", format="mp4",
                         options={"max_interleave_delta": "0"}) as out:
                video = _video_stream(out, codec, fps, frames.shape[1:3])
                result = _mux_audio(out, source, span, audio_from, path)
                _mux_frames(out, video, frames)
        tmp.replace(path)
    except av.FFmpegError as e:
        raise StylejaxError(f"Cannot write the video {path}: {_reason(e)}.") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return result


def _video_stream(out, codec: str, fps: Fraction, size):
    h, w = size[0] - size[0] % 2, size[1] - size[1] % 2
    try:
        stream = out.add_stream(codec, rate=fps)
    except ValueError:  # PyAV's UnknownCodecError
        raise StylejaxError(f"PyAV has no encoder {codec!r}: pick one of "
                            f"{', '.join(ENCODERS)}.") from None
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": "18"} if codec == "libx264" else {}
    return stream


def _mux_frames(out, stream, frames) -> None:
    h, w = stream.height, stream.width
    for image in frames:
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(imageio.to_uint8(image[:h, :w])), format="rgb24")
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


@contextlib.contextmanager
def _open_audio(path):
    """(container, its first audio stream, its start in seconds), or None when ``path`` is
    None or has no audio; refuses an unreadable file."""
    if path is None:
        yield None
        return
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise StylejaxError(f"Cannot read the audio of {path}: {_reason(e)}.") from None
    with container:
        if not container.streams.audio:
            yield None
        else:
            origin = (container.start_time or 0) / av.time_base
            yield container, container.streams.audio[0], origin


def _audio_extent(source) -> tuple[float, float, float]:
    """(start, end, one frame) of the audio stream in seconds; end is inf when unknown."""
    container, stream, origin = source
    begin = float((stream.start_time or 0) * stream.time_base) - origin
    if stream.duration:
        end = begin + float(stream.duration * stream.time_base)
    else:  # matroska and others: the container's end bounds the stream's
        end = container.duration / av.time_base if container.duration else math.inf
    frame = max(stream.codec_context.frame_size or 0, 1024) / (stream.sample_rate or 48000)
    return begin, end, frame


def _mux_audio(out, source, span, audio_from, path: Path) -> Audio:
    if source is None:
        return Audio.NONE
    begin, end, frame = _audio_extent(source)
    if span[0] >= end or span[1] <= begin:
        return Audio.NONE
    stream = source[1]
    whole = abs(span[0] - begin) < 1e-3 and span[1] >= end - frame
    try:
        if whole and stream.codec_context.codec.canonical_name in MP4_AUDIO:
            _copy_audio(out, source)
            return Audio.COPIED
        _reencode_audio(out, source, span)
        return Audio.REENCODED
    except av.FFmpegError as e:
        raise StylejaxError(f"Cannot put the audio of {audio_from} into {path}: "
                            f"{_reason(e)}.") from None


def _copy_audio(out, source) -> None:
    """Every packet of the audio stream, data unchanged, times shifted to the start."""
    container, stream, origin = source
    target = out.add_stream_from_template(stream)
    shift = round(origin / stream.time_base)
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.pts is not None:
            packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = target
        out.mux(packet)


def _reencode_audio(out, source, span) -> None:
    """The audio in ``span`` seconds decoded and encoded as AAC, starting at time 0 (or
    later, where the audio starts after the span does)."""
    container, stream, origin = source
    channels = stream.codec_context.layout.nb_channels
    layout = "mono" if channels == 1 else "stereo"
    rates = av.Codec("aac", "w").audio_rates
    rate = stream.sample_rate if stream.sample_rate in rates else 48000
    target = out.add_stream("aac", rate=rate)
    target.layout = layout
    to_float = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    lo, hi = round(span[0] * rate), round(span[1] * rate)
    pos = None  # the next sample's index at ``rate`` on the input's time line
    for decoded in _decoded_then_flush(container, stream):
        for frame in to_float.resample(decoded):
            if pos is None:  # samples are taken to follow on, gaps ignored
                t = frame.time if frame.time is not None else _audio_extent(source)[0] + origin
                pos = round((t - origin) * rate)
            samples = frame.to_ndarray()
            a, b = max(lo - pos, 0), min(hi - pos, frame.samples)
            if a < b:
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, a:b]),
                                                   format="fltp", layout=layout)
                piece.sample_rate, piece.time_base = rate, Fraction(1, rate)
                piece.pts = pos + a - lo
                out.mux(target.encode(piece))
            pos += frame.samples
        if pos is not None and pos >= hi:
            break
    out.mux(target.encode(None))


def _decoded_then_flush(container, stream):
    """The decoded frames of ``stream``, then None (which flushes the resampler)."""
    yield from container.decode(stream)
    yield None

"""stylejax.cli.media: reading a clip (a video file or a folder, a time range of it), refusing
bad inputs in one sentence, and writing the mp4 with the input's audio for the same range."""

from __future__ import annotations

import numpy as np
import pytest

import stylejax.images as imageio
from stylejax.cli import media
from stylejax.errors import StylejaxError

av = pytest.importorskip("av")

FPS, FRAMES, SIZE = 10, 12, 32  # a 1.2 s clip of 32x32 px frames
RATE, ONSET = 48000, 0.6  # the audio: silence, then a 440 Hz tone from ONSET s
AAC_FRAME = 1024 / RATE  # one AAC frame, the precision of an audio length


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t) * (t >= ONSET)).astype(np.float32)


def _write_input(path, audio="aac", fmt=None, options=None):
    """A test clip: frame i a flat grey of level 20 i, and (unless audio is None) the tone
    in ``audio``'s codec."""
    codec = media.encoder()
    if codec is None:
        pytest.skip("no H.264 encoder in this PyAV")
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        video = out.add_stream(codec, rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(audio, rate=RATE) if audio else None
        if sound is not None:
            sound.layout = "mono"
            _mux_tone(out, sound, _tone(FRAMES / FPS))
        for i in range(FRAMES):
            grey = np.full((SIZE, SIZE, 3), 20 * i, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")))
        out.mux(video.encode())
    return path


def _mux_tone(out, stream, samples) -> None:
    for at in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, at:at + 1024], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = RATE, at
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _audio(path):
    """(mono samples, time of the first decoded frame, the stream's length in seconds,
    codec name) of the first audio stream of ``path``."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        length = float(stream.duration * stream.time_base)
        name = stream.codec_context.codec.canonical_name
    samples = np.concatenate([f.to_ndarray().reshape(f.layout.nb_channels, -1)[0]
                              for f in frames])
    return samples, frames[0].time, length, name


def _onset(samples) -> float:
    """Seconds to the first sample above half the tone's amplitude."""
    return int(np.argmax(np.abs(samples) > 0.25)) / RATE


def _packets(path, kind):
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(getattr(container.streams, kind)[0])
                if p.size]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return _write_input(tmp_path_factory.mktemp("media") / "clip.mp4")


def test_reads_every_frame_with_its_size_rate_and_order(clip_file):
    clip = media.read_input(clip_file)
    assert len(clip.frames) == FRAMES
    assert clip.frames[0].shape == (SIZE, SIZE, 3) and clip.frames[0].dtype == np.float32
    assert clip.fps == FPS and clip.start == 0.0
    assert clip.source == clip_file and clip.stem == "clip"
    levels = [float(f.mean()) * 255 for f in clip.frames]
    assert np.allclose(levels, 20 * np.arange(FRAMES), atol=3), levels


def test_start_and_end_pick_frames_by_time(clip_file):
    full = media.read_input(clip_file).frames
    part = media.read_input(clip_file, start=0.3, end=0.9)  # frames 3..8: end is exclusive
    assert len(part.frames) == 6 and part.start == pytest.approx(0.3)
    assert all(np.array_equal(a, b) for a, b in zip(part.frames, full[3:9]))
    first_two = media.read_input(clip_file, limit=2, start=0.3)
    assert len(first_two.frames) == 2 and np.array_equal(first_two.frames[1], full[4])
    head = media.read_input(clip_file, end=0.25)
    assert len(head.frames) == 3 and head.start == 0.0


@pytest.mark.parametrize("start, end, words", [
    (-1.0, None, "--start must be >= 0"),
    (0.5, 0.5, "must be after --start"),
    (5.0, None, "1.2 s long"),
])
def test_a_bad_or_empty_range_is_one_sentence(clip_file, start, end, words):
    with pytest.raises(StylejaxError) as e:
        media.read_input(clip_file, start=start, end=end)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_folder_selects_by_index_over_fps(tmp_path):
    for i in range(5):
        imageio.save_image(tmp_path / f"{i:02d}.png", np.full((8, 8, 3), i / 10, np.float32))
    clip = media.read_input(tmp_path, start=0.1, end=0.2, fps=20)  # frames 2 and 3
    assert [round(float(f.mean()) * 10) for f in clip.frames] == [2, 3]
    assert clip.start == pytest.approx(0.1) and clip.fps is None and clip.source is None
    with pytest.raises(StylejaxError, match="5 frames, 0.25 s at 20 fps"):
        media.read_input(tmp_path, start=1.0, fps=20)
    imageio.save_image(tmp_path / "03.png", np.zeros((8, 6, 3), np.float32))
    with pytest.raises(StylejaxError, match="Frame 03.png is 6x8 px"):
        media.read_input(tmp_path)
    # Sizes are checked on the frames as read, not as `prepare` leaves them.
    with pytest.raises(StylejaxError, match="Frame 03.png is 6x8 px"):
        media.read_input(tmp_path, prepare=lambda image: image[:4, :4])


def test_prepare_is_applied_to_each_frame_as_it_is_decoded(clip_file):
    seen = []

    def prepare(image):
        seen.append(image.shape)
        return image[::4, ::4].copy()

    clip = media.read_input(clip_file, end=0.5, prepare=prepare)
    assert seen == [(SIZE, SIZE, 3)] * 5
    assert [f.shape for f in clip.frames] == [(SIZE // 4, SIZE // 4, 3)] * 5


def _write(path, clip, audio=True):
    return media.write_video(path, np.stack(clip.frames), clip.fps, media.encoder(),
                             clip.source if audio else None, clip.start)


def test_the_whole_clip_keeps_its_aac_packets(clip_file, tmp_path):
    clip = media.read_input(clip_file)
    out = tmp_path / "out.mp4"
    assert _write(out, clip) == media.Audio.COPIED
    assert _packets(out, "audio") == _packets(clip_file, "audio")
    samples, first, length, _ = _audio(out)
    assert first == 0.0 and abs(length - FRAMES / FPS) <= AAC_FRAME
    assert abs(len(samples) / RATE - FRAMES / FPS) <= AAC_FRAME
    assert _onset(samples) == pytest.approx(ONSET, abs=0.005)
    assert len(media.read_input(out).frames) == FRAMES


def test_a_range_gets_its_own_audio_from_time_zero(clip_file, tmp_path):
    clip = media.read_input(clip_file, start=0.3, end=0.9)
    out = tmp_path / "out.mp4"
    assert _write(out, clip) == media.Audio.REENCODED
    samples, first, length, codec = _audio(out)
    assert codec == "aac" and first == 0.0
    assert abs(length - 0.6) <= AAC_FRAME and abs(len(samples) / RATE - 0.6) <= AAC_FRAME
    assert _onset(samples) == pytest.approx(ONSET - 0.3, abs=0.005)
    assert len(media.read_input(out).frames) == 6


def test_audio_mp4_does_not_take_is_reencoded_even_whole(tmp_path):
    source = _write_input(tmp_path / "pcm.mov", audio="pcm_s16le")
    out = tmp_path / "out.mp4"
    assert _write(out, media.read_input(source)) == media.Audio.REENCODED
    samples, _, length, codec = _audio(out)
    assert codec == "aac" and abs(length - FRAMES / FPS) <= AAC_FRAME
    assert _onset(samples) == pytest.approx(ONSET, abs=0.005)


def test_no_audio_in_gives_no_audio_out(tmp_path, clip_file):
    silent = _write_input(tmp_path / "silent.mp4", audio=None)
    clip = media.read_input(silent)
    assert _write(tmp_path / "a.mp4", clip) == media.Audio.NONE
    assert _write(tmp_path / "b.mp4", media.read_input(clip_file), audio=False) \
        == media.Audio.NONE
    for name in ("a.mp4", "b.mp4"):
        with av.open(str(tmp_path / name)) as container:
            assert not container.streams.audio and len(container.streams.video) == 1


def _text(path, clip):
    path.write_text("not a video\n")
    return path


def _audio_only(path, clip):
    """An .m4a (AAC, no video stream) renamed .mp4."""
    with av.open(str(path.with_suffix(".m4a")), "w") as out:
        stream = out.add_stream("aac", rate=RATE)
        stream.layout = "mono"
        _mux_tone(out, stream, _tone(0.2))
    return path.with_suffix(".m4a").rename(path)


def _half(source, path):
    data = source.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _half_of_clip(path, clip):
    return _half(clip, path)  # its index (the moov box) is at the end: cut off


def _half_of_faststart(path, clip):
    """Index first: the cut is only seen as frames missing at the end."""
    whole = _write_input(path.with_name("fast.mp4"), options={"movflags": "faststart"})
    return _half(whole, path)


@pytest.mark.parametrize("make, words", [
    (_text, "Cannot read"),
    (_half_of_clip, "Cannot read"),
    (_audio_only, "no video stream"),
    (_half_of_faststart, "damaged after frame"),
])
def test_a_bad_file_is_one_sentence_naming_it(tmp_path, clip_file, make, words):
    path = make(tmp_path / "bad.mp4", clip_file)
    with pytest.raises(StylejaxError) as e:
        media.read_input(path)
    message = str(e.value)
    assert words in message and "bad.mp4" in message and "\n" not in message, message


def test_a_failed_write_leaves_no_temporary_file(tmp_path, clip_file, monkeypatch):
    clip = media.read_input(clip_file)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous video")
    with pytest.raises(StylejaxError, match="no encoder 'nonsense'"):
        media.write_video(out, np.stack(clip.frames), clip.fps, "nonsense", clip_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]

    seen = []  # fail midway, once the temporary file holds the header and audio

    def failing(image):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        if len(seen) == 3:
            raise RuntimeError("disk full")
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)

    monkeypatch.setattr(imageio, "to_uint8", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(out, clip)
    assert seen[-1] == [".out.mp4.tmp.mp4", "out.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert out.read_bytes() == b"the previous video"

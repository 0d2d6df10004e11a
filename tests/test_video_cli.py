"""The ``stylize_video.py`` command line end to end: a video file with sound (a time range,
both modes' files, the audio kept), Ctrl-C and --resume, and refusals (fixture weights)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_media import RATE, _mux_tone
from test_video import make_clip

av = pytest.importorskip("av")
pytest.importorskip("cv2")
from stylejax.cli import media, video as cli_video, video_files  # noqa: E402

SIZE, FPS = 64, 12
FAST = ["--size", str(SIZE), "--max-iter", "2", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1"]


def command(weights_path, *args):
    return [sys.executable, str(REPO / "scripts" / "stylize_video.py"), *map(str, args),
            "--weights", str(weights_path), *FAST]


def write_clip(path, frames, sound=True):
    """``frames`` [T, H, W, 3] as an H.264 mp4 at FPS with a 440 Hz AAC tone."""
    codec = media.encoder()
    if codec is None:
        pytest.skip("no H.264 encoder in this PyAV")
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=FPS)
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        audio = out.add_stream("aac", rate=RATE) if sound else None
        if audio is not None:
            audio.layout = "mono"
            t = np.arange(round(len(frames) / FPS * RATE)) / RATE
            _mux_tone(out, audio, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
        for image in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(
                (image * 255).round().astype(np.uint8), format="rgb24")))
        out.mux(video.encode())
    return path


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray((make_clip(1, 48, seed=5)[0] * 255).astype(np.uint8)).save(path)
    return path


def test_multipass_on_a_range_of_a_video_keeps_its_audio(tmp_path, weights_path, style_png):
    """--start 0.25 --end 0.75 of a 12 fps clip: frames 4-9 (t = 3/12 .. 8/12), each pass
    writing them all (luminance stylized, the frames' colours kept); the mp4 has those 6
    frames and 0.5 s of the sound."""
    source = write_clip(tmp_path / "walk.mp4", make_clip(10))
    out = tmp_path / "out"
    r = subprocess.run(command(weights_path, source, style_png, "--out", out, "--mode",
                               "multipass", "--passes", "2", "--temporal-from", "2",
                               "--long-term", "1,2", "--start", "0.25", "--end", "0.75",
                               "--keep-audio", "--preserve-colors", "luminance"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "audio re-encoded" in r.stdout and "optical flow:" in r.stderr
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"{k:05d}.png" for k in range(1, 7)]
    log = json.loads((out / "losses.json").read_text())
    assert [(row["pass"], row["frame"]) for row in log] == [
        (p, k) for p in (1, 2) for k in range(1, 7)]
    assert len(list((out / "flow").glob("*.npz"))) == 2 * (5 + 4)  # offsets 1 and 2
    assert not list((out / "state").glob("*.npy"))  # cleaned once the video is written
    first = np.asarray(Image.open(out / "frames" / "00001.png"), np.float32)
    assert np.abs(first[..., 0] - first[..., 2]).mean() > 5  # the frames' colours, not grey
    with av.open(str(out / "walk.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height, video.average_rate) == (SIZE, SIZE, FPS)
        assert sum(1 for _ in container.decode(video)) == 6
        assert abs(float(audio.duration * audio.time_base) - 0.5) < 1024 / RATE


def stop_after_first(cmd, marker, timeout=600):
    """Runs ``cmd``, sends SIGINT once ``marker`` exists; returns the finished process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=timeout)
    return proc


@pytest.mark.parametrize("mode,extra,total", [
    ("sequential", ["--epochs", "1"], 6), ("multipass", ["--passes", "3"], 3)])
def test_ctrl_c_then_resume_gives_the_uninterrupted_frames(tmp_path, weights_path, style_png,
                                                           mode, extra, total):
    """Ctrl-C finishes the frame (pass), keeps what was written and says how to go on;
    --resume continues from it (frames already written are not redone) to the same frames,
    byte for byte, as a run never stopped; other settings are refused."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(make_clip(6)):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(folder / f"{k:03d}.png")
    base = command(weights_path, folder, style_png, "--mode", mode, *extra)
    r = subprocess.run(base + ["--out", tmp_path / "a"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    b = tmp_path / "b"
    stopped = stop_after_first(list(map(str, base + ["--out", b])), b / "progress.json")
    assert stopped.returncode == 130, stopped.stderr_text
    assert "--resume" in stopped.stderr_text.strip().splitlines()[-1]
    done = json.loads((b / "progress.json").read_text())["done"]
    assert 1 <= done < total
    written = {p.name: p.stat().st_mtime_ns for p in (b / "frames").iterdir()}
    refused = subprocess.run(base + ["--out", b, "--resume", "--temporal-weight", "5"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "temporal_weight" in refused.stderr
    if mode == "multipass":  # which frames share a problem changes the result
        refused = subprocess.run(base + ["--out", b, "--resume", "--chunk", "2"],
                                 capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and "(chunk differ)" in refused.stderr
    r = subprocess.run(base + ["--out", b, "--resume"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    for k in range(1, 7):
        name = f"{k:05d}.png"
        assert (b / "frames" / name).read_bytes() == (tmp_path / "a" / "frames" /
                                                      name).read_bytes(), name
    if mode == "sequential":  # the frames finished before the stop were not written again
        assert all((b / "frames" / n).stat().st_mtime_ns == t for n, t in written.items()
                   if int(n[:5]) <= done)
    assert (b / "in.mp4").is_file()


def test_a_damaged_video_is_one_sentence_and_writes_nothing(tmp_path, weights_path,
                                                            style_png):
    source = write_clip(tmp_path / "cut.mp4", make_clip(8), sound=False)
    data = source.read_bytes()
    source.write_bytes(data[:len(data) // 2])
    r = subprocess.run(command(weights_path, source, style_png, "--out", tmp_path / "out"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cut.mp4" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_without_an_h264_encoder_it_writes_the_frames_and_says_so(tmp_path, weights_path,
                                                                   style_png, monkeypatch,
                                                                   capsys):
    """No H.264 encoder in PyAV: PNG frames only, said in one note, exit 0 (run in this
    process with the encoder lookup and the process-wide tuning stubbed out)."""
    monkeypatch.setattr(media, "encoder", lambda: None)
    monkeypatch.setattr(cli_video, "tune_process", lambda: None)
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(make_clip(3)):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(folder / f"{k}.png")
    argv = command(weights_path, folder, style_png, "--out", tmp_path / "out", "--epochs", 1)
    assert cli_video.main(argv[2:]) == 0
    out, err = capsys.readouterr()
    assert "no H.264 encoder" in err and "no video" in out
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 3
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_multipass_progress_survives_a_stop_between_its_two_writes(tmp_path):
    """Each pass's state is its own file, the older deleted only after the record names the
    newer: stopped after pass 2's state but before its record, --resume gets pass 1's."""
    shape = (2, 4, 4, 3)
    progress = video_files.Progress(tmp_path, {"run": 1}, "multipass", shape, 3)
    first = np.full(shape, 0.25, np.float32)
    progress.finished_pass(1, first, [])
    progress._save_state("pass-002.npy", first + 0.5)  # the stop lands here
    done, results = video_files.Progress(tmp_path, {"run": 1}, "multipass", shape, 3).resume()
    assert done == 1 and np.array_equal(results, first)
    progress.finished_pass(2, first + 0.5, [])
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["pass-002.npy"]

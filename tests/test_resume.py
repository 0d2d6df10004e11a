"""Faults during a run: Ctrl-C on a real process, --resume, and a loss that becomes NaN."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, smooth_image
from test_driver import run_cli

ARGS = ("--size", 48, "--epochs", 24, "--max-iter", 2, "--snapshot-every", 4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, weights_path):
    d = tmp_path_factory.mktemp("resume")
    Image.fromarray((smooth_image(40, 48, 11) * 255).astype(np.uint8)).save(d / "c.png")
    Image.fromarray((smooth_image(32, 32, 12) * 255).astype(np.uint8)).save(d / "s.png")
    return [d / "c.png", d / "s.png", "--weights", weights_path]


def _epochs_logged(out):
    try:
        return len(json.loads((out / "losses.json").read_text()))
    except (OSError, ValueError):
        return 0


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, inputs):
    straight = tmp_path / "straight"
    r = run_cli("stylize.py", *inputs, *ARGS, "--out", straight)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "interrupted"
    cmd = [sys.executable, str(REPO / "scripts" / "stylize.py"), *map(str, inputs),
           *map(str, ARGS), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while _epochs_logged(out) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped_at = _epochs_logged(out)
    assert 3 <= stopped_at < 24
    assert (out / "last.png").is_file() and (out / "checkpoint.msgpack").is_file()
    assert not (out / "final.png").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    r = run_cli("stylize.py", *inputs, *ARGS, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    # Bit-identical on CPU: the restored state is the saved bytes and every epoch is the same
    # compiled program on the same thread count.
    assert (out / "final.png").read_bytes() == (straight / "final.png").read_bytes()
    log = json.loads((out / "losses.json").read_text())
    assert [e["epoch"] for e in log] == list(range(1, 25))
    assert [e["loss"] for e in log] == \
        [e["loss"] for e in json.loads((straight / "losses.json").read_text())]

    # A resume with other settings is refused, naming what differs.
    r = run_cli("stylize.py", *inputs, *ARGS, "--out", out, "--resume", "--tv-weight", 0)
    assert r.returncode != 0 and "loss" in r.stderr and "Traceback" not in r.stderr


def test_resume_without_checkpoint_is_one_clear_error(tmp_path, inputs):
    r = run_cli("stylize.py", *inputs, *ARGS, "--out", tmp_path / "fresh", "--resume")
    assert r.returncode != 0 and "Nothing to resume" in r.stderr
    assert "Traceback" not in r.stderr


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_image(tmp_path, inputs):
    out = tmp_path / "nan"
    r = run_cli("stylize.py", *inputs, "--size", 48, "--epochs", 5, "--max-iter", 1,
                "--optimizer", "adam", "--lr", "1e30", "--out", out)
    assert r.returncode != 0
    assert "The loss became" in r.stderr and "Traceback" not in r.stderr
    last = np.asarray(Image.open(out / "last.png"))
    assert last.shape == (40, 48, 3)
    assert not (out / "final.png").exists()

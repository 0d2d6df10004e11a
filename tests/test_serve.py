"""Watching a run: losses.png pixel by pixel, the --serve page's routes and port errors, and
the page itself in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium; .ci/run installs them, and in CI a missing browser fails instead of skipping)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, smooth_image
from stylejax.cli import stylize
from stylejax.cli.options import build_parser, run_config
from stylejax.cli.outputs import (CURVE_BOX, CURVE_LINE, CURVE_MARK, CURVE_SIZE, Outputs,
                                  loss_curve_png)
from stylejax.cli.serve import Watch

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), np.int16)


def columns_with(a: np.ndarray, colour) -> np.ndarray:
    return np.flatnonzero((a == colour).all(-1).any(0))


def epoch_x(epoch: float, total: int) -> float:
    left, _, right, _ = CURVE_BOX
    return left + (epoch - 0.5) * (right - left) / total


# ---------------------------------------------------------------- losses.png


def test_losses_png_plots_every_epoch_and_marks_each_new_scale(tmp_path):
    args = build_parser().parse_args(["c.png", "s.png", "--scales", "32,64", "--epochs", "2"])
    outputs = Outputs(tmp_path, run_config(args), {})
    image = np.zeros((1, 8, 8, 3), np.float32)
    for epoch, loss in enumerate([9e5, 2e5, 6e4, 3e4], start=1):
        outputs.epoch(epoch, image, loss, 0.1, last=epoch % 2 == 0)
        png = (tmp_path / "losses.png").read_bytes()
        assert png == outputs.curve_png  # written every epoch, with the log
    a = pixels(png)
    assert a.shape == (CURVE_SIZE[1], CURVE_SIZE[0], 3)
    # One point per epoch, at its x, lower for a lower loss (log scale: equal ratios, equal
    # steps, as 9e5 -> 3e4 spans 1.5 decades).
    ys = []
    for epoch in range(1, 5):
        x = round(epoch_x(epoch, 4))
        rows = np.flatnonzero((a[:, x - 1:x + 2] == CURVE_LINE).all(-1).any(1))
        assert rows.size, epoch
        ys.append(rows.mean())
    assert ys == sorted(ys)
    # The scale change, after epoch 2 of 4: a dashed line half way along, and nowhere else.
    mark = columns_with(a, CURVE_MARK)
    assert mark.size and abs(mark.min() - epoch_x(2.5, 4)) <= 2 and mark.max() - mark.min() <= 3
    # Labelled y ticks: ink left of the plot area.
    assert (a[CURVE_BOX[1]:CURVE_BOX[3], :CURVE_BOX[0] - 6] < 128).any()


def test_losses_png_changes_where_a_loss_changes_and_has_no_marks_for_one_scale():
    losses = [9e5, 2e5, 6e4, 3e4]
    before = pixels(loss_curve_png(list(enumerate(losses, 1)), 4))
    after = pixels(loss_curve_png(list(enumerate(losses[:2] + [1e5] + losses[3:], 1)), 4))
    changed = np.flatnonzero((before != after).any(-1).any(0))
    assert changed.size  # only the lines to and from epoch 3 and its point moved
    assert changed.min() > epoch_x(2, 4) and changed.max() < epoch_x(4, 4)
    assert not columns_with(before, CURVE_MARK).size
    # NaN (a failed epoch) is left out, not drawn or fatal.
    assert pixels(loss_curve_png([(1, 5.0), (2, float("nan"))], 2)).shape[:2] == (360, 640)


# ---------------------------------------------------------------- the server, no browser


def get(url, host=None):
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, None, b""


def test_watch_serves_four_routes_from_memory_only():
    watch = Watch(0)
    try:
        assert watch.url.startswith("http://127.0.0.1:")
        status, kind, page = get(watch.url)
        assert status == 200 and kind.startswith("text/html") and b'id="curve"' in page
        assert get(watch.url + "image.png")[0] == 404  # nothing to show before the first epoch
        watch.finish(np.ones((1, 4, 6, 3), np.float32))
        status, kind, png = get(watch.url + "image.png?v=3")
        assert status == 200 and kind == "image/png" and pixels(png).shape == (4, 6, 3)
        assert b'"done"' in get(watch.url + "state.json")[2]
        for path in ("..%2f..%2fetc%2fpasswd", "serve_page.html", "stylejax/cli/serve.py"):
            assert get(watch.url + path)[0] == 404, path
        assert get(watch.url, host="attacker.example")[0] == 403  # DNS rebinding
    finally:
        watch.close()


def test_bad_ports_are_one_sentence_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    # Missing images and weights: the port is checked first, so its error is the one given.
    argv = ["missing.png", "missing.jpg", "--weights", "missing.msgpack", "--out", str(out)]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert stylize.main(argv + ["--serve", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"Port {port} on 127.0.0.1 is in use" in err and err.count("\n") == 1, err
    for bad in ("70000", "-1", "http"):
        assert stylize.main(argv + [f"--serve={bad}"]) == 2
        err = capsys.readouterr().err
        assert "--serve: expected a port from 1 to 65535" in err and err.count("\n") == 1, err
    assert stylize.main(argv + ["--serve", "0", "--serve-host", "203.0.113.7"]) == 2
    assert "Cannot serve on 203.0.113.7:0" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- the page in Chromium


def chrome():
    """A headless Chromium driven by Selenium, offline (no Selenium Manager: both paths given);
    skips where it is not installed, but fails in CI, which must install it (.ci/run)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [name for name, ok in (("selenium", webdriver), ("chromium", CHROMIUM),
                                     ("chromedriver", CHROMEDRIVER)) if not ok]
    if missing:
        reason = (f"{', '.join(missing)} not installed (apt-get install chromium "
                  "chromium-driver; pip install -e '.[test]')")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="stylejax-chromium-")
    # Without the background-networking flags Chromium's own connections are refused on a
    # closed network, and it can stall.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    return driver, profile


# The shown image as a PNG data URL (drawn on a canvas), with its epoch; null while loading.
SHOWN = """
const img = document.getElementById("image");
if (img.hidden || !img.complete || !img.naturalWidth) return null;
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth;
canvas.height = img.naturalHeight;
canvas.getContext("2d").drawImage(img, 0, 0);
return [Number(img.dataset.epoch), canvas.toDataURL("image/png")];
"""


def wait_for(what, test, seconds, proc=None, err=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {what}: "
                        f"{err.read_text()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_page_follows_a_real_run_in_chromium(tmp_path, weights_path):
    driver, profile = chrome()
    content, style, out = tmp_path / "content.jpg", tmp_path / "style.png", tmp_path / "run"
    Image.fromarray((smooth_image(48, 64, 5) * 255).astype(np.uint8)).save(content)
    Image.fromarray((smooth_image(40, 40, 6) * 255).astype(np.uint8)).save(style)
    err = tmp_path / "stderr.txt"
    epochs = 4
    # 64 px, 20 iterations an epoch: about a second an epoch on 2 cores; the page, asking every
    # 0.2 s, sees at least two of them as long as three epochs take more than that.
    with open(tmp_path / "stdout.txt", "w") as so, open(err, "w") as se:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "stylize.py"), content, style,
             "--weights", weights_path, "--size", "64", "--epochs", str(epochs),
             "--max-iter", "20", "--out", out, "--serve", "0"],
            stdout=so, stderr=se, cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        url = wait_for("the URL", lambda: re.search(r"watch the run at (http://\S+)",
                                                    err.read_text()), 120, proc, err).group(1)
        driver.get(url + "?every=200")
        assert driver.title.endswith("stylejax")
        assert driver.find_element("id", "progress").text  # the page is up before epoch 1
        seen = {}  # epoch -> the image the page showed after it

        def done():
            shown = driver.execute_script(SHOWN)
            if shown:
                seen[shown[0]] = shown[1]
            status = driver.execute_script("return document.body.dataset.status")
            return status == "done" and epochs in seen

        wait_for("the page to show the final image", done, 300, proc, err)
        # Several epochs were shown as they came, each image a new one.
        assert len(seen) >= 2 and len(set(seen.values())) == len(seen), sorted(seen)
        progress = driver.find_element("id", "progress").text
        assert progress.startswith(f"done: epoch {epochs} of {epochs} · loss "), progress
        assert "it/s" in progress
        curve = driver.find_element("id", "curve")
        assert curve.get_attribute("data-points") == str(epochs)
        assert driver.execute_script("return arguments[0].naturalWidth", curve) == CURVE_SIZE[0]
        # The final image, as the browser decoded it, is final.png.
        shown = pixels(base64.b64decode(seen[epochs].split(",", 1)[1]))
        np.testing.assert_array_equal(shown, pixels((out / "final.png").read_bytes()))
        # After the run: still served (a reload shows "done") until Ctrl-C.
        wait_for("'serving until Ctrl-C'", lambda: "serving until Ctrl-C" in err.read_text(),
                 60, proc, err)
        driver.refresh()
        wait_for("the reloaded page", lambda: driver.find_element(
            "id", "progress").text.startswith("done: "), 30, proc, err)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, err.read_text()
        assert "Traceback" not in err.read_text()
        for name in ("final.png", "losses.png", "losses.json", "contact_sheet.png"):
            assert (out / name).is_file(), name
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

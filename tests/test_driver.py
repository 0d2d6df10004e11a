"""The epoch loop end to end through the real command line, and the README's snippet."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import stylejax
from conftest import REPO, smooth_image


def run_cli(script, *args, env=None, **kw):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    Image.fromarray((smooth_image(48, 64, 5) * 255).astype(np.uint8)).save(d / "content.jpg")
    Image.fromarray((smooth_image(40, 40, 6) * 255).astype(np.uint8)).save(d / "style.png")
    return d / "content.jpg", d / "style.png"


def test_stylize_cli_writes_snapshots_sheet_and_log(tmp_path, weights_path, image_files):
    out, cache = tmp_path / "run", tmp_path / "cache"
    r = run_cli("stylize.py", *image_files, "--weights", weights_path, "--size", 64,
                "--epochs", 4, "--max-iter", 3, "--snapshot-every", 2, "--out", out,
                env={"STYLEJAX_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    # Compiled programs are kept for the next run (the epoch among them); L-BFGS's first state
    # has no program of its own (its first epoch evaluates it).
    kept = {p.name.split("-")[0] for p in (cache / "xla").iterdir()}
    assert "jit_run_epoch" in kept and "jit_init_state" not in kept, kept
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.msgpack", "contact_sheet.png", "final.png", "losses.csv",
                     "losses.json", "losses.png", "snapshot_0002.png", "snapshot_0004.png"]
    final = np.asarray(Image.open(out / "final.png"))
    assert final.shape == (48, 64, 3)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 64 and sheet.width > 3 * 64  # content + two snapshots, labelled
    log = json.loads((out / "losses.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2, 3, 4]
    assert all(b["loss"] < a["loss"] for a, b in zip(log, log[1:]))
    rows = list(csv.DictReader((out / "losses.csv").open()))
    assert float(rows[-1]["loss"]) == pytest.approx(log[-1]["loss"])
    assert "Traceback" not in r.stderr


def test_stylize_library_call_reports_every_epoch(vgg, content_image, style_image):
    seen = []
    cfg = stylejax.preset_config("johnson")
    result = stylejax.stylize(vgg, content_image, style_image, cfg, epochs=2, max_iter=2,
                              init="noise", seed=1,
                              callback=lambda e, img, loss: seen.append((e, img.shape, loss)))
    assert [s[0] for s in seen] == [1, 2]
    assert seen[-1][1] == (1,) + content_image.shape
    assert result.losses == [s[2] for s in seen]
    assert result.losses[1] < result.losses[0]


def test_readme_snippet_runs(weights_path):
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"## Use the loss in your own JAX code.*?```python\n(.*?)```", text,
                        re.S).group(1)
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "STYLEJAX_WEIGHTS": str(weights_path)},
                       timeout=600)
    assert r.returncode == 0, r.stderr
    loss, shape = r.stdout.split()
    assert float(loss) > 0 and shape == "(2,)"


def test_readme_first_command_stylizes_the_examples(tmp_path, weights_path):
    """The README's "Run it" block, as a newcomer runs it (weights from a converted fixture
    file instead of the download; a tiny size and budget appended): its stylize command works
    on examples/ and writes the final image, the loss curve and the contact sheet."""
    block = re.search(r"## Run it.*?```bash\n(.*?)```", (REPO / "README.md").read_text(),
                      re.S).group(1)
    line, = [ln for ln in block.splitlines() if ln.startswith("python scripts/stylize.py")]
    args = line.split("#")[0].split()[2:]
    out = tmp_path / "out"
    args[args.index("--out") + 1] = str(out)
    assert all((REPO / a).is_file() for a in args[:2]), args  # the examples are committed
    r = run_cli("stylize.py", *args, "--weights", weights_path, "--size", 48, "--epochs", 2,
                "--max-iter", 2)
    assert r.returncode == 0, r.stderr
    for name in ("final.png", "losses.png", "contact_sheet.png"):
        assert (out / name).is_file(), name

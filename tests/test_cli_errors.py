"""Bad input through the real `stylize.py` command line: one sentence on stderr, a non-zero
exit, no traceback, and nothing written. Plus one odd-but-valid run end to end.

Each case is one subprocess (about a second of imports); argument errors come first. A case's
run is cached, so the checks on the same run below share it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, smooth_image


def run_cli(script, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)


def to_u8(a):
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights_path):
    """Inputs shared by all cases: good and bad images, and damaged weight files."""
    from flax import serialization

    d = tmp_path_factory.mktemp("cli_inputs")
    f = {}
    f["content"] = d / "content.png"
    Image.fromarray(to_u8(smooth_image(40, 48, 3))).save(f["content"])
    f["style"] = d / "style.jpg"
    Image.fromarray(to_u8(smooth_image(36, 36, 4))).save(f["style"])
    f["notes"] = d / "notes.jpg"
    f["notes"].write_text("a shopping list, not a picture\n")
    buf = io.BytesIO()
    Image.fromarray(to_u8(smooth_image(40, 40, 5))).save(buf, format="JPEG")
    f["truncated"] = d / "truncated.jpg"
    f["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["tiny"] = d / "tiny.png"
    Image.fromarray(to_u8(smooth_image(8, 8, 6))).save(f["tiny"])
    f["folder"] = d / "a_folder.png"
    f["folder"].mkdir()
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("in the way\n")

    data = weights_path.read_bytes()
    f["w_truncated"] = d / "truncated.msgpack"
    f["w_truncated"].write_bytes(data[: len(data) // 2])
    record = serialization.msgpack_restore(data)
    other = dict(record, params={k: v for k, v in record["params"].items() if k != "conv5_4"})
    f["w_other"] = d / "vgg16ish.msgpack"
    f["w_other"].write_bytes(serialization.msgpack_serialize(other))
    kernel = np.array(record["params"]["conv3_1"]["kernel"])
    kernel[0, 0, 0, 0] += 0.5
    params = dict(record["params"], conv3_1={**record["params"]["conv3_1"], "kernel": kernel})
    f["w_checksum"] = d / "damaged.msgpack"
    f["w_checksum"].write_bytes(serialization.msgpack_serialize(dict(record, params=params)))
    nobias = dict(record["params"], conv1_1={"kernel": record["params"]["conv1_1"]["kernel"]})
    f["w_nobias"] = d / "nobias.msgpack"
    f["w_nobias"].write_bytes(serialization.msgpack_serialize(dict(record, params=nobias)))
    f["weights"] = weights_path
    f["missing"] = d / "missing.msgpack"
    f["nope"] = d / "nope.jpg"
    return f


# name: (arguments, environment, key phrases expected in the message). "{x}" in an argument is
# files["x"]; every run also gets --out OUT, and --weights unless the case gives its own.
GOOD = ("{content}", "{style}")
SMALL = ("--size", "24", "--epochs", "1", "--max-iter", "1")
CASES = {
    # argument errors: no image is read, no weights are loaded
    "epochs_negative": (GOOD + ("--epochs", "-3"), None, ["--epochs", ">= 1", "-3"]),
    "epochs_zero": (GOOD + ("--epochs", "0"), None, ["--epochs", ">= 1"]),
    "unknown_layer": (GOOD + ("--style-layers", "relu1_1,relu9_9"), None,
                      ["relu9_9", "valid names", "relu"]),
    "unknown_preset": (GOOD + ("--preset", "picasso"), None,
                       ["picasso", "johnson", "gatys", "seed"]),
    "unknown_optimizer": (GOOD + ("--optimizer", "sgd"), None,
                          ["sgd", "lbfgs", "optax-lbfgs", "adam"]),
    "layer_weights_count": (GOOD + ("--style-layer-weights", "1,2"), None,
                            ["2 values", "5 layers", "one per layer"]),
    # image errors
    "content_missing": (("{nope}", "{style}"), None, ["No such image", "nope.jpg"]),
    "style_missing": (("{content}", "{nope}"), None, ["No such image", "nope.jpg"]),
    "content_directory": (("{folder}", "{style}"), None, ["a_folder.png", "directory"]),
    "content_not_image": (("{notes}", "{style}"), None, ["notes.jpg", "not an image"]),
    "content_truncated": (("{truncated}", "{style}"), None, ["truncated.jpg", "truncated"]),
    "over_max_pixels": (GOOD + ("--max-pixels", "1000"), None,
                        ["content.png", "48x40", "1000", "--max-pixels"]),
    # output folder
    "out_under_a_file": (GOOD + SMALL + ("--out", "{a_file}/sub"), None,
                         ["output folder", "a_file", "not a folder"]),
    # weights
    "weights_missing": (GOOD + SMALL + ("--weights", "{missing}"), None,
                        ["missing.msgpack", "python scripts/convert_weights.py"]),
    "weights_missing_env": (GOOD + SMALL, {"STYLEJAX_WEIGHTS": "{missing}"},
                            ["missing.msgpack", "python scripts/convert_weights.py"]),
    "weights_truncated": (GOOD + SMALL + ("--weights", "{w_truncated}"), None,
                          ["truncated.msgpack", "truncated", "convert_weights.py"]),
    "weights_other_network": (GOOD + SMALL + ("--weights", "{w_other}"), None,
                              ["not a VGG-19 weight file", "15"]),
    "weights_checksum": (GOOD + SMALL + ("--weights", "{w_checksum}"), None,
                         ["damaged.msgpack", "checksum", "convert_weights.py"]),
    "weights_layer_without_bias": (GOOD + SMALL + ("--weights", "{w_nobias}"), None,
                                   ["nobias.msgpack", "conv1_1"]),
    # too small for the network: known only once the layers and the size are merged
    "too_small": (("{tiny}", "{tiny}", "--size", "8", "--epochs", "1", "--max-iter", "1"),
                  None, ["8x8", "16 px", "--size"]),
}

@pytest.fixture(scope="module")
def run_case(files, tmp_path_factory):
    """Runs a case once (cached); returns (CompletedProcess, out folder, its temp folder)."""
    cache = {}

    def run(name):
        if name not in cache:
            args, env, _ = CASES[name]
            fmt = {k: str(v) for k, v in files.items()}
            tmp = tmp_path_factory.mktemp(name)
            out = tmp / "out"
            argv = [a.format(**fmt) for a in args]
            env = {k: v.format(**fmt) for k, v in (env or {}).items()}
            if "--out" in argv:
                out = type(out)(argv[argv.index("--out") + 1])
            else:
                argv += ["--out", str(out)]
            if "--weights" not in argv and "STYLEJAX_WEIGHTS" not in env:
                argv += ["--weights", fmt["weights"]]
            cache[name] = (run_cli("stylize.py", *argv, env=env), out, tmp)
        return cache[name]

    return run


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error(run_case, name):
    r, out, tmp = run_case(name)
    phrases = CASES[name][2]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert last.startswith("error: ") and last.endswith("."), r.stderr
    for phrase in phrases:
        assert phrase in last, (phrase, last)
    # nothing written: no output folder (or an empty one), no temporary files anywhere
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp")]
    assert r.stdout == ""


@pytest.mark.parametrize("name", list(CASES))
def test_stderr_is_only_the_error_line(run_case, name):
    r, _, _ = run_case(name)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def test_odd_but_valid_images_run_end_to_end(tmp_path, weights_path):
    content = np.zeros((40, 56, 4), np.uint8)  # RGBA, half of it transparent
    content[..., :3] = to_u8(smooth_image(40, 56, 7))
    content[:, :28, 3] = 255
    Image.fromarray(content, "RGBA").save(tmp_path / "content.png")
    style = to_u8(smooth_image(60, 30, 8)).mean(axis=2).astype(np.uint8)  # L, portrait
    Image.fromarray(style, "L").save(tmp_path / "style.jpg")
    out = tmp_path / "out"
    r = run_cli("stylize.py", tmp_path / "content.png", tmp_path / "style.jpg",
                "--weights", weights_path, "--size", 48, "--epochs", 1, "--max-iter", 1,
                "--out", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    final = np.asarray(Image.open(out / "final.png"))
    assert final.shape == (34, 48, 3)  # 40x56 scaled so the long side is 48
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.msgpack", "contact_sheet.png", "final.png", "losses.csv", "losses.json", "losses.png", "snapshot_0001.png"]

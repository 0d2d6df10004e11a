"""Session-wide fixtures: random VGG-19 weights converted once, small test images."""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
# Downloads and compiled programs of the CLI runs go to a throwaway cache, shared by the
# session's subprocesses (later runs with the same shapes skip compilation).
os.environ["STYLEJAX_CACHE"] = tempfile.mkdtemp(prefix="stylejax-cache-")
atexit.register(shutil.rmtree, os.environ["STYLEJAX_CACHE"], ignore_errors=True)

from fixtures import random_vgg_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_COMPILES: collections.Counter = collections.Counter()


def xla_compiles(fun_name: str) -> int:
    """XLA compilations (ahead-of-time ones and persistent-cache hits included) of the jitted
    function ``fun_name`` in this process since the first call of this function."""
    if not _COMPILES:
        import jax

        def listen(event, seconds, fun_name=None, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                _COMPILES[fun_name] += 1

        jax.monitoring.register_event_duration_secs_listener(listen)
        _COMPILES["(listening)"] = 1
    return _COMPILES[f"jit({fun_name})"]


def on_simulated_devices(script: str, devices: int, **env) -> dict:
    """Runs the Python ``script`` in a fresh process that sees ``devices`` simulated CPU
    devices, with ``env`` (values made str) added to its environment and this checkout and
    tests/ importable; asserts it succeeds and returns the JSON its last line prints."""
    import json
    import subprocess

    env = {**os.environ, **{k: str(v) for k, v in env.items()},
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def vgg_params():
    """Random He-initialised VGG-19 params (numpy, HWIO)."""
    return random_vgg_params(seed=0)


@pytest.fixture(scope="session")
def weights_path(vgg_params, tmp_path_factory):
    """A converted stylejax weight file (Caffe preprocessing) holding ``vgg_params``."""
    from stylejax.weights import CAFFE, save_vgg19

    path = tmp_path_factory.mktemp("weights") / "vgg19.msgpack"
    save_vgg19(path, vgg_params, preprocess=CAFFE, source="test:random")
    return path


@pytest.fixture(scope="session")
def vgg(weights_path):
    import stylejax

    return stylejax.load_vgg19(weights_path)


def smooth_image(h, w, seed):
    """A smooth random RGB image in [0, 1] (low-frequency, like a photo), [h, w, 3] float32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for _ in range(4):
        fy, fx, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
        img += rng.uniform(0.1, 0.3, 3) * np.sin(2 * np.pi * (fy * y + fx * x) + ph)[..., None]
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(0.5 + img, 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def content_image():
    return smooth_image(32, 40, seed=1)


@pytest.fixture(scope="session")
def style_image():
    return smooth_image(48, 36, seed=2)

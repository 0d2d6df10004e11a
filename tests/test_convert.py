"""The weight converter: parity with Keras and PyTorch themselves, the readers, the download,
and the command line's refusals. All offline: downloads come from a local http.server, a
closed local port or a patched ``urlopen``."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import ast
import dataclasses
import functools
import hashlib
import http.server
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures  # noqa: E402
from fixtures import (  # noqa: E402
    random_vgg_params, torchvision_state_dict, write_keras_h5, write_torchvision_pth)

import stylejax  # noqa: E402
from stylejax import convert  # noqa: E402
from stylejax.cli import convert as convert_cli  # noqa: E402
from stylejax.errors import StylejaxError  # noqa: E402
from stylejax.weights import (  # noqa: E402
    CAFFE, CONV_SPECS, TORCHVISION, Preprocess, params_checksum, read_vgg19_file)

# Keras 3.15's JAX backend calls np.array(x, copy=False) on jax arrays; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "convert_weights.py"
LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "pool5"]
KERAS_LAYERS = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1",
                "block5_conv1", "block5_pool"]  # Keras convs include their ReLU


def _rtol_ok(ours, theirs, rtol=1e-4):
    # Float32 convolutions accumulate in a different order in XLA, Keras' JAX graph and
    # PyTorch's CPU kernels; through 16 layers that leaves differences of ~1e-6 of a
    # layer's scale. Tolerating 1e-4 of each layer's max |activation| still catches any
    # transposed kernel, swapped channel order or wrong mean (those differ by O(1)).
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max()) <= rtol * float(np.abs(theirs).max())


def _image(h=48, w=48, seed=0):
    """A smooth random RGB image in [0, 1], [h, w, 3] float32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + sum(rng.uniform(0.1, 0.25, 3) * np.sin(
        2 * np.pi * (rng.uniform(0.5, 3) * y + rng.uniform(0.5, 3) * x) + rng.uniform(0, 6))
        [..., None] for _ in range(3))
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------
# Session fixtures: each ~80 MB file is written once.


@pytest.fixture(scope="session")
def params():
    return random_vgg_params(seed=7)


@pytest.fixture(scope="session")
def public_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("public")


@pytest.fixture(scope="session")
def keras_2016(public_dir, params):
    path = public_dir / "vgg19_2016_notop.h5"
    write_keras_h5(path, params, layout="2016")
    return path


@pytest.fixture(scope="session")
def keras3_file(public_dir, params):
    path = public_dir / "vgg19_keras3_notop.h5"
    write_keras_h5(path, params, layout="keras3")
    return path


@pytest.fixture(scope="session")
def torch_zip(public_dir, params):
    path = public_dir / "vgg19_zip.pth"
    write_torchvision_pth(path, params, zipfile=True)
    return path


@pytest.fixture(scope="session")
def torch_legacy(public_dir, params):
    path = public_dir / "vgg19_legacy.pth"
    write_torchvision_pth(path, params, zipfile=False)
    return path


@pytest.fixture(scope="session")
def keras_mod():
    """Keras 3 on its JAX backend, imported only when a Keras test runs."""
    import keras

    return keras


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """(directory, base URL) of a local http.server on 127.0.0.1 serving that directory."""
    root = tmp_path_factory.mktemp("www")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port_url():
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/vgg19.h5"


@pytest.fixture
def closed_port_url():
    return _closed_port_url()


def _features(path, img):
    return {k: np.asarray(v[0]) for k, v in stylejax.extract_features(
        stylejax.load_vgg19(path), img, LAYERS).items()}


# --------------------------------------------------------------------------------------
# Parity with the original frameworks


def _keras_features(keras, model, img):
    taps = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_LAYERS])
    x = keras.applications.vgg19.preprocess_input(img[None] * 255.0)  # caffe: BGR - mean
    return dict(zip(LAYERS, (np.asarray(o)[0] for o in taps(x, training=False))))


def _keras_writer_file(keras, path, params):
    """A file written by Keras 3's own legacy HDF5 writer, from a model holding ``params``."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(48, 48, 3))
    for name, _, _ in CONV_SPECS:
        b, i = name[4], name[6]
        model.get_layer(f"block{b}_conv{i}").set_weights(
            [params[name]["kernel"], params[name]["bias"]])
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model


@pytest.mark.parametrize("layout", ["2016", "keras3", "keras-writer"])
def test_keras_parity(layout, keras_mod, params, keras_2016, keras3_file, tmp_path):
    keras = keras_mod
    if layout == "keras-writer":
        src = tmp_path / "written_by_keras.h5"
        model = _keras_writer_file(keras, src, params)
    else:
        src = keras_2016 if layout == "2016" else keras3_file
        # Keras reads the fixture itself: proof the fixture is in a layout Keras accepts.
        model = keras.applications.VGG19(include_top=False, weights=str(src),
                                         input_shape=(48, 48, 3))
    out = tmp_path / "vgg19.msgpack"
    result = convert.convert(str(src), out)
    assert result["source"] == f"keras:{src.name}"
    img = _image(48, 48, seed=1)
    theirs = _keras_features(keras, model, img)
    ours = _features(out, img)
    for name in LAYERS:
        assert _rtol_ok(ours[name], theirs[name]), name


def _torch_features(path, img):
    """torchvision's VGG-19 ``features`` written out in PyTorch, loaded with torch.load."""
    import torch
    from torch import nn

    torch.set_num_threads(2)
    layers, cin = [], 3
    for width, n in zip((64, 128, 256, 512, 512), (2, 2, 4, 4, 4)):
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    features = nn.Sequential(*layers)  # same indices as torchvision.models.vgg19().features
    state = torch.load(path, map_location="cpu")
    features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                              if k.startswith("features.")})
    taps = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1", 29: "relu5_1",
            36: "pool5"}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - mean) / std
    out = {}
    with torch.no_grad():
        for i, layer in enumerate(features):
            x = layer(x)
            if i in taps:
                out[taps[i]] = x[0].permute(1, 2, 0).numpy()  # CHW -> HWC
    return out


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_torchvision_parity(serialization, torch_zip, torch_legacy, tmp_path):
    src = torch_zip if serialization == "zip" else torch_legacy
    out = tmp_path / "vgg19.msgpack"
    convert.convert(str(src), out)
    img = _image(40, 48, seed=2)
    theirs = _torch_features(src, img)
    ours = _features(out, img)
    for name in LAYERS:
        assert _rtol_ok(ours[name], theirs[name]), name


# --------------------------------------------------------------------------------------
# Readers


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        for key in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(got[name][key], np.float32),
                                          want[name][key], err_msg=f"{name}/{key}")


def test_readers_recover_params_exactly(params, keras_2016, keras3_file, torch_zip,
                                        torch_legacy):
    for path, kind, pre in [(keras_2016, "keras", CAFFE), (keras3_file, "keras", CAFFE),
                            (torch_zip, "torchvision", TORCHVISION),
                            (torch_legacy, "torchvision", TORCHVISION)]:
        got, preprocess, got_kind = convert.read_weights(path)
        assert (got_kind, preprocess) == (kind, pre), path.name
        _assert_same(got, params)
    assert convert.detect_format(keras_2016) == "hdf5"
    assert convert.detect_format(torch_zip) == "torch-zip"
    assert convert.detect_format(torch_legacy) == "torch-legacy"


@pytest.mark.parametrize("layout", ["2016", "keras3"])
def test_keras_with_top_converts(layout, params, tmp_path):
    path = tmp_path / "with_top.h5"
    write_keras_h5(path, params, layout=layout, include_top=True)
    _assert_same(convert.read_keras_h5(path), params)


def test_keras_full_model_save_and_native_weights(params, keras_2016, keras_mod,
                                                  tmp_path):
    import h5py

    # A full-model save keeps the weights under model_weights.
    full = tmp_path / "full_model.h5"
    with h5py.File(keras_2016, "r") as src, h5py.File(full, "w") as dst:
        group = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            group.attrs[key] = value
        for key in src:
            src.copy(src[key], group, name=key)
        dst.attrs["model_config"] = b"{}"
    _assert_same(convert.read_keras_h5(full), params)

    # Keras 3's native .weights.h5 (layers/<class-name counter>/vars/0, 1).
    keras = keras_mod
    model = keras.applications.VGG19(include_top=False, weights=str(keras_2016),
                                     input_shape=(32, 32, 3))
    native = tmp_path / "vgg19.weights.h5"
    model.save_weights(str(native))
    _assert_same(convert.read_keras_h5(native), params)


def _strided_state_dict(params):
    """Kernels as permuted (non-contiguous) views and biases at offsets in one storage."""
    import torch

    sd = torchvision_state_dict(params, classifier=False)
    biases = torch.from_numpy(np.concatenate([[1.5]] + [params[n]["bias"]
                                                        for n, _, _ in CONV_SPECS]))
    start = 1
    for (name, _, cout), key in zip(CONV_SPECS, [k for k in sd if k.endswith(".weight")]):
        sd[key] = torch.from_numpy(params[name]["kernel"]).permute(3, 2, 0, 1)
        sd[key.replace("weight", "bias")] = biases[start:start + cout]
        start += cout
    return sd


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_reader_handles_strides_and_offsets(zip_format, params, tmp_path):
    import torch

    path = tmp_path / "strided.pth"
    torch.save(_strided_state_dict(params), path, _use_new_zipfile_serialization=zip_format)
    _assert_same(convert.read_torchvision_pth(path), params)


def _write_torch_0x_legacy(path, params):
    """The stream torch 0.1-0.3 wrote (the era of the published vgg19-dcbb9e9d.pth): tensors
    reduced to ``torch._utils._rebuild_tensor(storage, offset, size, stride)``, each storage a
    view ``(view_key, offset, numel)`` of one shared root storage."""
    import torch

    class View:
        def __init__(self, key, offset, numel):
            self.key, self.offset, self.numel = key, offset, numel

    class OldTensor:
        def __init__(self, view, offset, size):
            self.view, self.offset, self.size = view, offset, size

        def __reduce__(self):
            stride = tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))
            return torch._utils._rebuild_tensor, (self.view, self.offset, self.size, stride)

    chunks, state, at = [], OrderedDict(), 0
    for (name, _, _), n in zip(CONV_SPECS, fixtures.TORCHVISION_CONV_INDICES):
        for key, arr in (("weight", params[name]["kernel"].transpose(3, 2, 0, 1)),
                         ("bias", params[name]["bias"])):
            pad = 3 if key == "bias" else 0  # a tensor that starts inside its view
            chunks += [np.zeros(pad, np.float32), np.ascontiguousarray(arr).ravel()]
            state[f"features.{n}.{key}"] = OldTensor(
                View(f"v{n}{key}", at, pad + arr.size), pad, arr.shape)
            at += pad + arr.size
    root = np.concatenate(chunks).astype("<f4")

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, View):
                return ("storage", torch.FloatStorage, "140000", "cpu", root.size,
                        (obj.key, obj.offset, obj.numel))
            return None

    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001,
                                                   "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4,
                                                                  "long": 8}}):
            pickle.dump(obj, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump(["140000"], f, protocol=2)
        f.write(struct.pack("<q", root.size))
        f.write(root.tobytes())


def test_torch_reader_handles_0x_legacy_views(params, tmp_path):
    path = tmp_path / "old.pth"
    _write_torch_0x_legacy(path, params)
    assert convert.detect_format(path) == "torch-legacy"
    got = convert.read_torchvision_pth(path)
    _assert_same(got, params)
    import torch  # torch itself reads the emulated stream to the same values

    state = torch.load(path)
    for (name, _, _), n in zip(CONV_SPECS, fixtures.TORCHVISION_CONV_INDICES):
        np.testing.assert_array_equal(state[f"features.{n}.weight"].numpy(),
                                      got[name]["kernel"].transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"features.{n}.bias"].numpy(), got[name]["bias"])


def test_converted_file_records_its_origin(params, torch_zip, tmp_path):
    out = tmp_path / "vgg19.msgpack"
    result = convert.convert(str(torch_zip), out)
    record = read_vgg19_file(out)
    assert record["source"] == "torchvision:vgg19_zip.pth" == result["source"]
    preprocess = record["preprocess"]  # a Preprocess, or its dict in older readers
    assert (Preprocess.from_dict(preprocess) if isinstance(preprocess, dict)
            else preprocess) == TORCHVISION
    assert record["checksum"] == params_checksum(params) == result["checksum"]
    assert record["source_sha256"] == hashlib.sha256(torch_zip.read_bytes()).hexdigest()
    vgg = stylejax.load_vgg19(out)
    assert vgg.preprocess == TORCHVISION and vgg.source == "torchvision:vgg19_zip.pth"
    # --preprocess overrides what the format implies.
    assert convert_cli.main(["--source", str(torch_zip), "--out", str(out),
                         "--preprocess", "caffe"]) == 0
    assert stylejax.load_vgg19(out).preprocess == CAFFE


# --------------------------------------------------------------------------------------
# Downloads (local http.server only)


def test_download_verifies_and_caches(http_root, keras_2016, tmp_path, monkeypatch, capsys):
    root, base = http_root
    served = root / convert.KERAS_NOTOP.filename
    os.link(keras_2016, served)
    md5 = hashlib.md5(keras_2016.read_bytes()).hexdigest()
    monkeypatch.setitem(convert.DOWNLOADS, "keras",
                        dataclasses.replace(convert.KERAS_NOTOP, md5=md5))
    monkeypatch.setenv(convert.TEST_URL_ENV, f"{base}/{served.name}")
    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEJAX_CACHE", str(cache))
    out = tmp_path / "out" / "vgg19.msgpack"
    try:
        assert convert_cli.main(["--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert str(out) in captured.out and "keras:" in captured.out
        assert "Downloading" in captured.err
        assert sorted(p.name for p in cache.iterdir()) == [served.name]
        assert stylejax.load_vgg19(out).preprocess == CAFFE
        # A second run uses the cache; a damaged cached file is fetched again.
        assert convert_cli.main(["--source", "keras", "--out", str(out)]) == 0
        assert "Using cached" in capsys.readouterr().err
        (cache / served.name).write_bytes(b"damaged")
        assert convert_cli.main(["--source", "keras", "--out", str(out)]) == 0
        assert "downloading it again" in capsys.readouterr().err
        assert (cache / served.name).stat().st_size == keras_2016.stat().st_size
    finally:
        served.unlink()


def test_download_checks_hash_and_sha256_prefix(http_root, torch_zip, tmp_path):
    root, base = http_root
    served = root / "vgg19-00000000.pth"
    os.link(torch_zip, served)
    try:
        dest = tmp_path / served.name
        with pytest.raises(StylejaxError, match="fails its hash check.*SHA-256"):
            convert.download(f"{base}/{served.name}", dest, sha256_prefix="dcbb9e9d")
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(StylejaxError, match="fails its hash check.*MD5"):
            convert.download(f"{base}/{served.name}", dest, md5="0" * 32)
        assert list(tmp_path.iterdir()) == []
        prefix = hashlib.sha256(torch_zip.read_bytes()).hexdigest()[:8]
        calls = []
        sha = convert.download(f"{base}/{served.name}", dest, sha256_prefix=prefix,
                               progress=lambda done, total: calls.append((done, total)))
        assert sha.startswith(prefix) and list(tmp_path.iterdir()) == [dest]
        # progress(done_bytes, total_bytes): from 0, rising, ending at the file's size.
        size = torch_zip.stat().st_size
        assert calls[0] == (0, size) and calls[-1] == (size, size)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    finally:
        served.unlink()


def test_download_network_failures(http_root, closed_port_url, tmp_path):
    _, base = http_root
    dest = tmp_path / "x.h5"
    with pytest.raises(StylejaxError, match=r"Could not download .*: check your connection"):
        convert.download(closed_port_url, dest, md5="0" * 32)
    with pytest.raises(StylejaxError, match=r"Could not download .*HTTP 404"):
        convert.download(f"{base}/missing.h5", dest, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def _one_sentence(message, url):
    """True if ``message`` (``url`` aside, whose dots are not full stops) is one sentence."""
    text = message.replace(url, "URL")
    return text.endswith(".") and re.search(r"[.!?]\s+[A-Z]", text) is None


@pytest.mark.parametrize("source", ["keras", "torchvision"])
def test_offline_download_says_what_to_do(source, monkeypatch, tmp_path, capsys):
    """No network (DNS fails, as offline): one sentence naming the published address and
    its hash and --source PATH, exit status 2, nothing left in the cache or at --out."""
    published = convert.DOWNLOADS[source]

    def offline(url, *args, **kwargs):
        assert url == published.url  # no $STYLEJAX_TEST_DOWNLOAD_URL: the real address
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv(convert.TEST_URL_ENV, raising=False)
    monkeypatch.setenv("STYLEJAX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "vgg19.msgpack"
    assert convert_cli.main(["--source", source, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    line = errors[0]
    assert "Traceback" not in err
    assert line.startswith(f"error: Could not download {published.url} ")
    assert "Temporary failure in name resolution" in line
    assert (published.md5 or published.sha256_prefix) in line
    assert "--source PATH" in line and _one_sentence(line, published.url), line
    assert list((tmp_path / "cache").iterdir()) == [] and not out.parent.exists()


# --------------------------------------------------------------------------------------
# The package's shape: a library (no command line, no progress bar), imports pointing down.


CONVERT_DIR = REPO / "stylejax" / "convert"


@pytest.mark.parametrize("module", sorted(p.name for p in CONVERT_DIR.glob("*.py")))
def test_convert_package_imports_point_down(module):
    """stylejax.convert imports neither argparse nor tqdm (the CLI's), nothing above it, and
    only at module level (an import inside a function hides a cycle or a dependency)."""
    tree = ast.parse((CONVERT_DIR / module).read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            for name in names:
                assert name.split(".")[0] not in ("argparse", "tqdm"), (module, name)
                assert not name.startswith(("stylejax.cli", "stylejax.driver")), (module, name)
            in_try = any(id(node) in set(map(id, t.body)) for t in tree.body
                         if isinstance(t, ast.Try))
            assert id(node) in top or in_try, f"{module}:{node.lineno} imports in a function"


# --------------------------------------------------------------------------------------
# Command line. Every case runs `python scripts/convert_weights.py` in its own process;
# the processes start together from one session fixture (each spends ~1 s importing jax).


def _cli_env(env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != convert.TEST_URL_ENV}
    # A cache no test creates: a CLI run that tried to download would fail, not go online.
    env.update({"STYLEJAX_CACHE": "/nonexistent/stylejax-cache"}, **(env_extra or {}))
    return env


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(src, dst):
    data = Path(src).read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _corrupt_zip(src, dst):
    """Flips bytes inside a storage member of a zip .pth (its CRC no longer matches)."""
    data = bytearray(Path(src).read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + 100
    data[start:start + 64] = bytes(64)
    dst.write_bytes(bytes(data))
    return dst


def _keras_like(path, convs):
    """A Keras 2016-layout file with the given [(keras layer name, kernel shape)]; the data
    is left unwritten (reads as zeros), so the file is tiny whatever the shapes."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in convs])
        for name, shape in convs:
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            g.create_dataset(f"{name}_W_1:0", shape, dtype=np.float32)
            g.create_dataset(f"{name}_b_1:0", shape[-1:], dtype=np.float32)
    return path


def _vgg16_keras(path):
    convs, cin = [], 3
    for b, (width, n) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)), start=1):
        for i in range(1, n + 1):
            convs.append((f"block{b}_conv{i}", (3, 3, cin, width)))
            cin = width
    return _keras_like(path, convs)


def _wrong_shape_keras(path):
    convs = [(f"block{n[4]}_conv{n[6]}", (3, 3, cin, cout)) for n, cin, cout in CONV_SPECS]
    convs[0] = ("block1_conv1", (3, 3, 3, 32))
    return _keras_like(path, convs)


def _torch_obj(path, obj):
    import torch

    torch.save(obj, path)
    return path


def _plain_hdf5(path):
    import h5py

    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    return path


def _vgg19_bn_torch(path):
    """torchvision's vgg19_bn key layout (convs at 0, 3, 7, ...), with stride-0 tensors."""
    import torch

    sd, n, cin = {}, 0, 3
    for width, count in zip((64, 128, 256, 512, 512), (2, 2, 4, 4, 4)):
        for _ in range(count):
            sd[f"features.{n}.weight"] = torch.zeros(1).expand(width, cin, 3, 3)
            sd[f"features.{n}.bias"] = torch.zeros(1).expand(width)
            for k in ("weight", "bias", "running_mean", "running_var"):
                sd[f"features.{n + 1}.{k}"] = torch.zeros(1).expand(width)
            cin, n = width, n + 3
        n += 1
    torch.save(sd, path)
    return path


def _vgg16_torch(path):
    import torch

    sd, cin = {}, 3
    n = 0
    for width, count in zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)):
        for _ in range(count):
            sd[f"features.{n}.weight"] = torch.zeros(1).expand(width, cin, 3, 3)
            sd[f"features.{n}.bias"] = torch.zeros(1).expand(width)
            cin, n = width, n + 2
        n += 1
    torch.save(sd, path)
    return path


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_zip(path, marker):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"features.0.weight": _Evil(marker)},
                                                     protocol=2))
        zf.writestr("archive/version", "3\n")
    return path


def _evil_legacy(path, marker):
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001,
                                                   "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"features.0.weight": _Evil(marker)}, f, protocol=2)
        pickle.dump([], f, protocol=2)
    return path


# Refusals of a local --source, one of each kind, each checked in its own process:
# name -> (make(src_dir, files) -> source path, message regex).
REFUSALS = {
    "missing": (lambda d, f: d / "nope.h5", "does not exist"),
    "directory": (lambda d, f: d, "is a directory"),
    "unknown format": (lambda d, f: _write(d / "w.pth", b"hello"),
                       "neither a Keras HDF5 file nor a PyTorch"),
    "truncated h5": (lambda d, f: _truncated(f["keras"], d / "t.h5"), "truncated or corrupt"),
    "vgg16 keras": (lambda d, f: _vgg16_keras(d / "vgg16.h5"), "it has 13 convolution layers"),
    "hash mismatch": (lambda d, f: os.link(f["zip"], d / "vgg19-dcbb9e9d.pth")
                      or d / "vgg19-dcbb9e9d.pth", "fails its hash check"),
    "evil zip": (lambda d, f: _evil_zip(d / "evil.pth", d / "PWNED"),
                 "refuses to load .* it asks to run (posix|nt|os).system"),
}


# Variants of those, checked in-process through `main` (same checks without the ~1.5 s
# start-up of a process that imports jax).
MAIN_REFUSALS = {
    "truncated zip": (lambda d, f: _truncated(f["zip"], d / "t.pth"), "truncated or corrupt"),
    "truncated legacy": (lambda d, f: _truncated(f["legacy"], d / "t.pth"),
                         "truncated or corrupt"),
    "corrupt zip": (lambda d, f: _corrupt_zip(f["zip"], d / "c.pth"), "truncated or corrupt"),
    "wrong shape": (lambda d, f: _wrong_shape_keras(d / "w.h5"),
                    re.escape("conv1_1 has kernel (3, 3, 3, 32)")),
    "evil legacy": (lambda d, f: _evil_legacy(d / "evil.pth", d / "PWNED"),
                    "refuses to load .* it asks to run (posix|nt|os).system"),
    "empty": (lambda d, f: _write(d / "empty.pth", b""), "is empty"),
    "vgg16 torch": (lambda d, f: _vgg16_torch(d / "vgg16.pth"), "it has 13 convolution layers"),
    "vgg19_bn layout": (lambda d, f: _vgg19_bn_torch(d / "bn.pth"), "batch normalization"),
    "not a state_dict": (lambda d, f: _torch_obj(d / "list.pth", [1, 2]), "not a state_dict"),
    "hdf5 not keras": (lambda d, f: _plain_hdf5(d / "plain.h5"), "not a Keras weight file"),
    "out is a directory": (None, "is a directory: give a file path"),
}


# Refusals of a download (from the local http.server): name -> message regex.
DOWNLOAD_REFUSALS = {
    "download hash mismatch": "fails its hash check",
    # Offline: one sentence with the address tried, the published hash and --source PATH.
    "download refused": (r"Could not download http://127\.0\.0\.1:\d+/vgg19\.h5 \(.*\): check "
                         r"your connection, or download it yourself \(its MD5 is "
                         + re.escape(convert.KERAS_NOTOP.md5)
                         + r"\) and pass it with --source PATH\.$"),
}
NO_TORCH = ("import sys; sys.modules['torch'] = None\n"
            "from stylejax.convert import read_torchvision_pth\n"
            "for p in sys.argv[1:]: read_torchvision_pth(p)\n"
            "assert sys.modules['torch'] is None\n")


@pytest.fixture(scope="session")
def cli(tmp_path_factory, keras_2016, torch_zip, torch_legacy, http_root):
    """{case: (case directory, CompletedProcess)} for every command-line case."""
    base = tmp_path_factory.mktemp("cli")
    files = {"keras": keras_2016, "zip": torch_zip, "legacy": torch_legacy}
    script = str(SCRIPT.relative_to(REPO))
    jobs = {}

    def case_dir(name):
        d = base / re.sub(r"\W+", "_", name)
        (d / "src").mkdir(parents=True)
        return d

    for name, (make, _) in REFUSALS.items():
        d = case_dir(name)
        src = make(d / "src", files)
        out = d / "out" / "vgg19.msgpack"
        jobs[name] = (d, [script, "--source", str(src), "--out", str(out)], None)
    root, url = http_root
    os.link(keras_2016, root / "fake.h5")
    for name, url in [("download hash mismatch", f"{url}/fake.h5"),
                      ("download refused", _closed_port_url())]:
        d = case_dir(name)
        jobs[name] = (d, [script, "--out", str(d / "out" / "vgg19.msgpack")],
                      {"STYLEJAX_CACHE": str(d / "cache"), convert.TEST_URL_ENV: url})
    d = case_dir("success")
    jobs["success"] = (d, [script, "--source", str(keras_2016), "--out",
                           str(d / "out" / "sub" / "vgg19.msgpack")], None)
    jobs["no torch"] = (case_dir("no torch"), ["-c", NO_TORCH, str(torch_zip),
                                               str(torch_legacy)], None)

    def run(job):
        d, args, env_extra = job
        return d, subprocess.run([sys.executable, *args], cwd=REPO, env=_cli_env(env_extra),
                                 capture_output=True, text=True, timeout=300)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(run, jobs.values())))


def test_cli_success(cli, keras_2016):
    d, proc = cli["success"]
    out = d / "out" / "sub" / "vgg19.msgpack"
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and os.listdir(out.parent) == ["vgg19.msgpack"]
    line = proc.stdout.strip()
    assert "\n" not in line and str(out) in line and f"keras:{keras_2016.name}" in line
    assert read_vgg19_file(out)["checksum"][:12] in line


def test_reading_pth_never_imports_torch(cli):
    _, proc = cli["no torch"]
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", [*REFUSALS, *DOWNLOAD_REFUSALS])
def test_cli_refuses(case, cli):
    message = {**{k: m for k, (_, m) in REFUSALS.items()}, **DOWNLOAD_REFUSALS}[case]
    d, proc = cli[case]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # One "error: ..." line, last (before it: at most "Downloading ..." and the progress bar).
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    assert re.search(message, errors[0]), errors[0]
    # Nothing left behind: no output, no temporary file, no partial or rejected download.
    out = d / "out"
    assert not out.exists() or list(out.iterdir()) == []
    assert not (d / "cache").exists() or list((d / "cache").iterdir()) == []
    assert not (d / "src" / "PWNED").exists()  # the crafted pickles ran nothing


@pytest.mark.parametrize("case", list(MAIN_REFUSALS))
def test_main_refuses(case, keras_2016, torch_zip, torch_legacy, tmp_path, capsys):
    make, message = MAIN_REFUSALS[case]
    (tmp_path / "src").mkdir()
    out = tmp_path / "out" / "vgg19.msgpack"
    if make is None:  # --out names an existing directory
        out.parent.mkdir()
        argv = ["--source", str(keras_2016), "--out", str(out.parent)]
    else:
        files = {"keras": keras_2016, "zip": torch_zip, "legacy": torch_legacy}
        argv = ["--source", str(make(tmp_path / "src", files)), "--out", str(out)]
    assert convert_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert not (tmp_path / "src" / "PWNED").exists()  # the crafted pickle ran nothing

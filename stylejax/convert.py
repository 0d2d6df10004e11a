"""Converts public VGG-19 weight files to stylejax's format (``weights/vgg19.msgpack``).

Sources (see DESIGN.md, "Weights"):

* Keras ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (the original Oxford/Caffe
  weights; BGR, 0-255, mean-subtracted input). Legacy Keras HDF5 files are read through the
  attributes ``layer_names`` and ``weight_names`` only, so both the 2016 dataset names
  (``block1_conv1_W_1:0``) and Keras 3's (``block1_conv1/kernel``) work; Keras 3's native
  ``.weights.h5`` layout (``layers/<name>/vars/0``) is read too.
* torchvision ``vgg19-dcbb9e9d.pth`` (RGB, mean/std input), in torch's legacy (pre-zip)
  serialization or the zip archive of newer ``torch.save``. It is read without torch,
  through an unpickler that allows only what a state_dict needs and refuses anything else.

Command line: ``python scripts/convert_weights.py [--source keras|torchvision|PATH]
[--out PATH]``. Downloads are cached in ``$STYLEJAX_CACHE`` (default ``~/.cache/stylejax``),
show progress on stderr and are checked against the published hash before use.
``$STYLEJAX_TEST_DOWNLOAD_URL`` replaces the download URL; it exists for the test suite
(which serves files from 127.0.0.1), the hash check still applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import io
import os
import pickle
import re
import struct
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from stylejax.errors import StylejaxError
from stylejax.weights import CAFFE, CONV_NAMES, DEFAULT_PATH, TORCHVISION, Preprocess, save_vgg19

# --------------------------------------------------------------------------------------
# Published files


@dataclasses.dataclass(frozen=True)
class Published:
    """A public weight file: where it lives and the hash its publisher gives for it."""

    kind: str  # "keras" or "torchvision"
    url: str
    md5: str | None = None  # of the whole file (Keras publishes MD5s)
    sha256_prefix: str | None = None  # leading hex digits of the SHA-256 (torch.hub style)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


KERAS_NOTOP = Published(
    "keras",
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    md5="253f8cb515780f3b799900260a226db6")
KERAS_TOP = Published(
    "keras",
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    md5="cbe5617147190e668d6c5d5026f83318")
TORCHVISION_VGG19 = Published(
    "torchvision", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    sha256_prefix="dcbb9e9d")

DOWNLOADS: dict[str, Published] = {"keras": KERAS_NOTOP, "torchvision": TORCHVISION_VGG19}
"""What ``--source keras`` / ``--source torchvision`` download."""
KNOWN_FILES: dict[str, Published] = {
    p.filename: p for p in (KERAS_NOTOP, KERAS_TOP, TORCHVISION_VGG19)}
"""Local files carrying a published name are checked against the published hash."""

PREPROCESS: dict[str, Preprocess] = {"keras": CAFFE, "torchvision": TORCHVISION}
TEST_URL_ENV = "STYLEJAX_TEST_DOWNLOAD_URL"
_CHUNK = 1 << 20


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------
# Hashes and downloads


def cache_dir() -> Path:
    """``$STYLEJAX_CACHE``, else ``~/.cache/stylejax``."""
    return Path(os.environ.get("STYLEJAX_CACHE") or Path.home() / ".cache" / "stylejax")


def file_hashes(path) -> tuple[str, str]:
    """(MD5, SHA-256) of a file as hex strings, read in 1 MiB chunks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _hash_problem(md5: str, sha256: str, want_md5: str | None,
                  want_sha256_prefix: str | None) -> str | None:
    if want_md5 and md5 != want_md5.lower():
        return f"MD5 {md5}, published {want_md5}"
    if want_sha256_prefix and not sha256.startswith(want_sha256_prefix.lower()):
        return f"SHA-256 {sha256[:16]}..., published {want_sha256_prefix}..."
    return None


def download(url: str, dest, md5: str | None = None, sha256_prefix: str | None = None,
             timeout: float = 60.0) -> str:
    """Downloads ``url`` to ``dest`` with a progress bar on stderr; returns the SHA-256 (hex).

    The bytes go to ``<dest>.part``, which is renamed to ``dest`` only when complete and
    matching ``md5`` (whole-file MD5) and ``sha256_prefix`` (leading hex digits of the
    SHA-256); on any failure it is deleted. ``timeout`` is per network operation, in s.
    Raises StylejaxError on a network failure, a short read or a hash mismatch.
    """
    from tqdm import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")

    def network_error(reason) -> StylejaxError:
        return StylejaxError(
            f"Could not download {url} ({reason}): check your connection, or download it "
            "yourself and pass --source PATH.")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        md5_h, sha_h, got = hashlib.md5(), hashlib.sha256(), 0
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise network_error(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise network_error(_one_line(e.reason if e.reason is not None else e)) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise network_error(_one_line(e)) from None
        with resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, file=sys.stderr, leave=False) as bar:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise network_error(_one_line(e)) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    md5_h.update(chunk)
                    sha_h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise network_error(f"the connection closed after {got} of {total} bytes")
        problem = _hash_problem(md5_h.hexdigest(), sha_h.hexdigest(), md5, sha256_prefix)
        if problem:
            raise StylejaxError(
                f"The download of {url} fails its hash check ({problem}), so it was deleted: "
                "try again, or download it yourself and pass --source PATH.")
        os.replace(part, dest)
        return sha_h.hexdigest()
    except OSError as e:  # the cache directory or the .part file could not be written
        raise StylejaxError(
            f"Could not save the download to {part} ({_one_line(e)}): set STYLEJAX_CACHE to "
            "a writable directory.") from None
    finally:
        if part.exists():
            part.unlink()


def fetch(published: Published, directory=None) -> tuple[Path, str]:
    """Returns ``(path, sha256)`` of ``published`` in the cache (``directory``, default
    `cache_dir`), downloading it if missing or damaged."""
    directory = Path(directory) if directory is not None else cache_dir()
    dest = directory / published.filename
    if dest.is_file():
        md5, sha256 = file_hashes(dest)
        if _hash_problem(md5, sha256, published.md5, published.sha256_prefix) is None:
            print(f"Using cached {dest}", file=sys.stderr)
            return dest, sha256
        print(f"Cached {dest} fails its hash check; downloading it again.", file=sys.stderr)
        dest.unlink()
    url = os.environ.get(TEST_URL_ENV) or published.url
    print(f"Downloading {published.url}", file=sys.stderr)
    sha256 = download(url, dest, md5=published.md5, sha256_prefix=published.sha256_prefix)
    return dest, sha256


# --------------------------------------------------------------------------------------
# Format detection

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL_VERSION = 1001
_TORCH_MAGIC_PICKLED = b"\x8a\x0a" + _TORCH_MAGIC.to_bytes(10, "little")  # LONG1 opcode


def detect_format(path) -> str:
    """"hdf5", "torch-zip", "torch-legacy" or "unknown", from the file's leading bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head.startswith(_HDF5_SIGNATURE):
            return "hdf5"
        for offset in (512, 1024, 2048, 4096):  # HDF5 allows a user block before it
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return "hdf5"
    if head.startswith(_ZIP_SIGNATURE):
        return "torch-zip"
    if head.startswith(b"\x80") and _TORCH_MAGIC_PICKLED in head[:32]:
        return "torch-legacy"
    return "unknown"


# --------------------------------------------------------------------------------------
# Keras HDF5

_KERAS_CONV = re.compile(r"block([1-5])_conv([1-4])")


def _attr_strings(obj, name: str) -> list[str]:
    """A string-list attribute, also when Keras split it into ``name0``, ``name1``, ..."""
    if name in obj.attrs:
        values = list(np.asarray(obj.attrs[name]).ravel())
    else:
        values, i = [], 0
        while f"{name}{i}" in obj.attrs:
            values += list(np.asarray(obj.attrs[f"{name}{i}"]).ravel())
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _keras_conv_name(layer: str) -> str | None:
    m = _KERAS_CONV.fullmatch(layer)
    return f"conv{m.group(1)}_{m.group(2)}" if m else None


def _read_keras_legacy(root, path) -> dict:
    params = {}
    for layer in _attr_strings(root, "layer_names"):
        ours = _keras_conv_name(layer)
        if ours is None:  # input, pooling, flatten, fc1, fc2, predictions
            continue
        if layer not in root:
            raise StylejaxError(
                f"{path} is damaged: layer {layer} is listed but has no group; download it again.")
        group = root[layer]
        names = _attr_strings(group, "weight_names")
        if len(names) != 2:
            raise StylejaxError(
                f"{path} is not a VGG-19 weight file: layer {layer} has {len(names)} weights, "
                "expected a kernel and a bias.")
        arrays = []
        for name in names:
            if name not in group:
                raise StylejaxError(
                    f"{path} is damaged: {layer} lists weight {name} but does not hold it; "
                    "download it again.")
            arrays.append(np.asarray(group[name]))
        params[ours] = {"kernel": arrays[0], "bias": arrays[1]}
    return params


def _read_keras_native(layers, path) -> dict:
    """Keras 3 ``.weights.h5``: ``layers/<key>/vars/{0,1}``; ``vars`` names its layer."""
    named, by_counter = {}, {}
    for key in layers:
        group = layers[key]
        variables = group.get("vars") if hasattr(group, "get") else None
        if variables is None or "0" not in variables or "1" not in variables:
            continue
        name = variables.attrs.get("name")
        name = name.decode("utf8") if isinstance(name, bytes) else name
        if name is not None and _keras_conv_name(str(name)):
            named[_keras_conv_name(str(name))] = variables
        # Without name attributes, keys are conv2d, conv2d_1, ... in model order.
        m = re.fullmatch(r"conv2d(?:_(\d+))?", key)
        if m:
            by_counter[int(m.group(1) or 0)] = variables
    if not named and by_counter:
        if len(by_counter) > len(CONV_NAMES):
            raise StylejaxError(
                f"This is not a VGG-19 weight file: {path} has {len(by_counter)} convolution "
                f"layers, VGG-19 has {len(CONV_NAMES)}.")
        named = dict(zip(CONV_NAMES, (by_counter[k] for k in sorted(by_counter))))
    return {ours: {"kernel": np.asarray(v["0"]), "bias": np.asarray(v["1"])}
            for ours, v in named.items()}


def read_keras_h5(path) -> dict:
    """Reads the conv layers of a Keras VGG-19 HDF5 weight file.

    Accepts weights-only and full-model saves (``model_weights`` group), with or without the
    classifier (fc1/fc2/predictions are ignored), and Keras 3's ``.weights.h5`` layout.
    Returns ``{"conv1_1": {"kernel": [3,3,Cin,Cout], "bias": [Cout]}, ...}`` as stored
    (Keras kernels are already HWIO). Raises StylejaxError if the file is damaged or holds no
    ``blockB_convI`` layers; shapes are checked later by `weights.check_params`.
    """
    try:
        import h5py
    except ImportError:
        raise StylejaxError("Reading Keras .h5 files needs h5py: pip install h5py.") from None
    try:
        with h5py.File(path, "r") as f:
            root = f
            if "layer_names" not in f.attrs and "layer_names0" not in f.attrs \
                    and "model_weights" in f:
                root = f["model_weights"]
            if "layer_names" in root.attrs or "layer_names0" in root.attrs:
                params = _read_keras_legacy(root, path)
            elif "layers" in root and isinstance(root["layers"], h5py.Group):
                params = _read_keras_native(root["layers"], path)
            else:
                raise StylejaxError(
                    f"{path} is an HDF5 file but not a Keras weight file (it has no "
                    "layer_names): pass the Keras VGG-19 .h5 file.")
    except StylejaxError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise StylejaxError(
            f"{path} could not be read as HDF5 ({_one_line(e)}): it is probably truncated or "
            "corrupt; download it again.") from None
    if not params:
        raise StylejaxError(
            f"This is not a VGG-19 weight file: {path} has no layers named blockB_convI as in "
            "keras.applications.VGG19.")
    return params


# --------------------------------------------------------------------------------------
# PyTorch .pth without torch

try:  # bfloat16 for numpy; ml_dtypes comes with jax
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover
    _bfloat16 = None

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends inside the pickle."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage type")


class _Storage:
    """A flat typed array the pickle refers to by key; its bytes are read after the pickle."""

    __slots__ = ("key", "dtype", "numel", "root", "root_offset", "array")

    def __init__(self, key, dtype, numel, root=None, root_offset=0):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.root, self.root_offset, self.array = root, root_offset, None

    def data(self) -> np.ndarray:
        if self.root is not None:
            return self.root.data()[self.root_offset:self.root_offset + self.numel]
        if self.array is None:
            raise StylejaxError(f"storage {self.key} was never read")
        return self.array

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage")


class _Tensor:
    """A strided view into a `_Storage` (what ``torch._utils._rebuild_tensor`` makes)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        ints = (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride)))
        if not isinstance(storage, _Storage) or not ints or len(size) != len(stride) \
                or offset < 0 or min((*size, *stride), default=0) < 0:
            raise pickle.UnpicklingError("malformed tensor record")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage.data()
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise pickle.UnpicklingError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * flat.itemsize for s in self.stride], writeable=False)
        return np.array(view)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a tensor")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype)
       for name, dtype in _STORAGE_DTYPES.items() if dtype is not None},
}
"""Everything a plain state_dict's pickle may name, mapped to numpy stand-ins."""


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state_dict; refuses any global outside `_ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, path, persistent_load: Callable | None = None):
        super().__init__(file)
        self._path, self._persistent = path, persistent_load

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise StylejaxError(
                f"stylejax refuses to load {self._path}: it asks to run {module}.{name}, "
                "which a plain weight file never does (it may be malicious).") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._persistent(pid)


def _storage_record(pid, storages: dict) -> _Storage:
    """Resolves ``('storage', storage_type, key, location, numel[, view_metadata])``."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError("malformed storage record")
    key = str(key)
    if key not in storages:
        storages[key] = _Storage(key, storage_type.dtype, numel)
    root = storages[key]
    if view is None:
        return root
    # Old torch saved views of a root storage as (view_key, offset, size), in elements.
    view_key, offset, size = view
    if not (isinstance(offset, int) and isinstance(size, int) and 0 <= offset
            and offset + size <= root.numel):
        raise pickle.UnpicklingError("malformed storage view")
    view_key = f"view:{view_key}"
    if view_key not in storages:
        storages[view_key] = _Storage(view_key, root.dtype, size, root, offset)
    return storages[view_key]


_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias)")
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
"""``features.N`` of torchvision's VGG-19 that are convolutions, in network order."""


def _needed_tensors(state, path) -> dict[int, dict[str, _Tensor]]:
    """{N: {"weight": tensor, "bias": tensor}} for the ``features.N`` convolutions."""
    if not isinstance(state, dict):
        raise StylejaxError(
            f"{path} is a PyTorch file but not a state_dict (it holds a "
            f"{type(state).__name__}): pass torchvision's vgg19 .pth file.")
    if any(isinstance(k, str) and re.fullmatch(r"features\.\d+\.running_mean", k)
           for k in state):
        raise StylejaxError(
            f"{path} is a VGG with batch normalization (vgg19_bn), which stylejax does not "
            "use: pass torchvision's plain vgg19 file.")
    convs: dict[int, dict[str, _Tensor]] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.fullmatch(key) if isinstance(key, str) else None
        if m and isinstance(value, _Tensor):
            convs.setdefault(int(m.group(1)), {})[m.group(2)] = value
    # Only 4-D weights are convolutions (read from the records, before any data).
    convs = {n: pair for n, pair in convs.items()
             if "weight" not in pair or len(pair["weight"].size) == 4}
    if not convs:
        raise StylejaxError(
            f"This is not a VGG-19 weight file: {path} has no features.N.weight entries as in "
            "torchvision.models.vgg19.")
    if len(convs) != len(TORCHVISION_CONV_INDICES):
        raise StylejaxError(
            f"This is not a VGG-19 weight file: it has {len(convs)} convolution layers, "
            f"VGG-19 has {len(TORCHVISION_CONV_INDICES)}.")
    if tuple(sorted(convs)) != TORCHVISION_CONV_INDICES:
        raise StylejaxError(
            f"{path} is not torchvision's VGG-19 layout: its convolutions sit at features."
            f"{', '.join(map(str, sorted(convs)))}, expected "
            f"{', '.join(map(str, TORCHVISION_CONV_INDICES))}.")
    for n, pair in convs.items():
        if set(pair) != {"weight", "bias"}:
            raise StylejaxError(
                f"This is not a VGG-19 weight file: features.{n} lacks its "
                f"{'bias' if 'weight' in pair else 'weight'}.")
    return convs


def _to_params(convs: dict[int, dict[str, _Tensor]]) -> dict:
    params = {}
    for name, n in zip(CONV_NAMES, TORCHVISION_CONV_INDICES):
        weight = convs[n]["weight"].numpy()
        if weight.ndim != 4:
            raise StylejaxError(
                f"This is not a VGG-19 weight file: features.{n}.weight has shape "
                f"{weight.shape}, expected a 4-D convolution kernel.")
        params[name] = {"kernel": weight.transpose(2, 3, 1, 0),  # OIHW -> HWIO
                        "bias": convs[n]["bias"].numpy()}
    return params


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"needed {n} bytes, found {len(data)}")
    return data


def _read_torch_legacy(path) -> dict:
    with open(path, "rb") as f:
        plain = lambda: _StateDictUnpickler(f, path).load()  # noqa: E731
        if plain() != _TORCH_MAGIC:
            raise pickle.UnpicklingError("bad magic number")
        version = plain()
        if version != _TORCH_PROTOCOL_VERSION:
            raise StylejaxError(
                f"{path} uses torch serialization protocol {version!r}, this reader knows "
                f"{_TORCH_PROTOCOL_VERSION}: re-save it with a recent torch.save.")
        sys_info = plain()
        little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
        storages: dict[str, _Storage] = {}
        state = _StateDictUnpickler(
            f, path, lambda pid: _storage_record(pid, storages)).load()
        keys = plain()
        convs = _needed_tensors(state, path)
        needed = {t.storage.root.key if t.storage.root else t.storage.key
                  for pair in convs.values() for t in pair.values()}
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("bad storage key list")
        size_format = "<q" if little else ">q"
        for key in keys:
            key = str(key)
            if key not in storages:
                raise pickle.UnpicklingError(f"storage {key} is not referenced")
            storage = storages[key]
            (numel,) = struct.unpack(size_format, _read_exact(f, 8))
            if numel != storage.numel:
                raise pickle.UnpicklingError(f"storage {key} has {numel} elements, expected "
                                             f"{storage.numel}")
            nbytes = numel * storage.dtype.itemsize
            if key in needed:
                dtype = storage.dtype.newbyteorder("<" if little else ">")
                storage.array = np.frombuffer(_read_exact(f, nbytes), dtype).astype(
                    storage.dtype)
            else:  # the classifier: skip its bytes, but make sure they are there
                here = f.seek(nbytes, io.SEEK_CUR)
                if here > os.fstat(f.fileno()).st_size:
                    raise EOFError("storage data ends early")
        return _to_params(convs)


def _read_torch_zip(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise StylejaxError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no single "
                "<name>/data.pkl): pass torchvision's vgg19 .pth file.")
        prefix = pickles[0][: -len("data.pkl")]
        little = True
        if prefix + "byteorder" in zf.namelist():
            little = zf.read(prefix + "byteorder").strip() != b"big"
        storages: dict[str, _Storage] = {}
        with zf.open(pickles[0]) as f:
            state = _StateDictUnpickler(
                io.BufferedReader(f), path, lambda pid: _storage_record(pid, storages)).load()
        convs = _needed_tensors(state, path)
        for pair in convs.values():
            for tensor in pair.values():
                storage = tensor.storage.root or tensor.storage
                if storage.array is None:
                    raw = zf.read(f"{prefix}data/{storage.key}")
                    if len(raw) != storage.numel * storage.dtype.itemsize:
                        raise pickle.UnpicklingError(f"storage {storage.key} has the wrong size")
                    dtype = storage.dtype.newbyteorder("<" if little else ">")
                    storage.array = np.frombuffer(raw, dtype).astype(storage.dtype)
        return _to_params(convs)


def read_torchvision_pth(path) -> dict:
    """Reads the conv layers of a torchvision VGG-19 state_dict without importing torch.

    Handles torch's zip archives and its legacy (pre-1.6) stream; only ``features.N``
    entries are read (``classifier.*`` is skipped). Returns ``{"conv1_1": {"kernel":
    [3,3,Cin,Cout] (from OIHW), "bias": [Cout]}, ...}``. Raises StylejaxError for a
    damaged file, a non-VGG-19 state_dict, or a pickle naming anything outside the
    allow-list (nothing it names is ever run).
    """
    fmt = detect_format(path)
    try:
        if fmt == "torch-zip":
            return _read_torch_zip(path)
        if fmt == "torch-legacy":
            return _read_torch_legacy(path)
        raise StylejaxError(f"{path} is not a PyTorch .pth file.")
    except StylejaxError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, zlib.error,
            KeyError, IndexError, ValueError, TypeError, AttributeError, MemoryError,
            OverflowError, OSError, RuntimeError) as e:
        raise StylejaxError(
            f"{path} could not be read as a PyTorch file ({_one_line(e)}): it is probably "
            "truncated or corrupt; download it again.") from None


# --------------------------------------------------------------------------------------
# Conversion


def _check_file(path: Path) -> None:
    if not path.exists():
        raise StylejaxError(f"{path} does not exist: check the path given to --source.")
    if path.is_dir():
        raise StylejaxError(f"{path} is a directory: pass the weight file itself to --source.")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise StylejaxError(f"Could not read {path} ({_one_line(e)}): check its permissions.") \
            from None
    if empty:
        raise StylejaxError(f"{path} is empty: download it again.")


def read_weights(path) -> tuple[dict, Preprocess, str]:
    """Reads any supported VGG-19 file, whatever its name.

    Returns ``(params, preprocess, kind)``: params as in `read_keras_h5`, the preprocessing
    its source network was trained with, and "keras" or "torchvision".
    """
    path = Path(path)
    _check_file(path)
    try:
        fmt = detect_format(path)
    except OSError as e:
        raise StylejaxError(f"Could not read {path} ({_one_line(e)}): check its permissions.") \
            from None
    if fmt == "hdf5":
        return read_keras_h5(path), CAFFE, "keras"
    if fmt in ("torch-zip", "torch-legacy"):
        return read_torchvision_pth(path), TORCHVISION, "torchvision"
    raise StylejaxError(
        f"{path} is neither a Keras HDF5 file nor a PyTorch .pth file: pass Keras's "
        f"{KERAS_NOTOP.filename} or torchvision's {TORCHVISION_VGG19.filename}.")


def _normalized(params: dict, preprocess: Preprocess, folder, size: int) -> tuple[dict, int, int]:
    """Gatys et al.'s normalised network from ``params``, calibrated on the images in
    ``folder`` (``size`` px centre crops); returns (params, images used, dead filters)."""
    import jax.numpy as jnp
    from tqdm import tqdm

    from stylejax import images
    from stylejax.normalize import DEAD, channel_means, normalize_params
    from stylejax.weights import Vgg19

    files = images.image_files(folder)
    vgg = Vgg19(params={k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in params.items()},
                preprocess=preprocess)
    crops = tqdm(images.calibration_images(folder, size), total=len(files), unit="image",
                 desc="calibrating", file=sys.stderr, leave=False)
    means, n = channel_means(vgg, crops, "max")
    dead = sum(int((m <= DEAD).sum()) for m in means.values())
    return normalize_params(params, means), n, dead


def convert(source: str = "keras", out=None, preprocess: Preprocess | None = None,
            normalize=None, normalize_size: int = 224) -> dict:
    """Converts ``source`` ("keras", "torchvision" or a file path) and writes ``out``.

    ``out`` defaults to `weights.DEFAULT_PATH`; ``preprocess`` overrides the one implied by
    the file's format. ``normalize``: a folder of images; if given, the file holds Gatys et
    al.'s normalised network calibrated on them (``normalize_size`` px centre crops, max
    pooling; see `stylejax.normalize`) and is marked ``normalized``. Returns ``{"out",
    "source", "checksum", "source_sha256"}``, plus ``"images"`` and ``"dead"`` (filters that
    never fired, left unscaled) when normalising.
    """
    out = Path(out) if out is not None else DEFAULT_PATH
    if out.is_dir():
        raise StylejaxError(f"--out {out} is a directory: give a file path such as "
                            f"{out / 'vgg19.msgpack'}.")
    if normalize is not None:
        from stylejax.images import image_files

        image_files(normalize)  # fail before any download
        if normalize_size < 32:
            raise StylejaxError(f"--normalize-size must be >= 32 px (VGG-19 pools five "
                                f"times), got {normalize_size}.")
    if source in DOWNLOADS:
        path, sha256 = fetch(DOWNLOADS[source])
    else:
        path = Path(source).expanduser()
        _check_file(path)
        try:
            md5, sha256 = file_hashes(path)
        except OSError as e:
            raise StylejaxError(f"Could not read {path} ({_one_line(e)}): check its "
                                "permissions.") from None
        published = KNOWN_FILES.get(path.name)
        if published is not None:
            problem = _hash_problem(md5, sha256, published.md5, published.sha256_prefix)
            if problem:
                raise StylejaxError(
                    f"{path} carries the name of a published file but fails its hash check "
                    f"({problem}): download it again.")
    params, implied, kind = read_weights(path)
    label = f"{kind}:{path.name}"
    extra = {}
    if normalize is not None:
        params, n, dead = _normalized(params, preprocess or implied, normalize, normalize_size)
        label += f" normalized on {n} images ({normalize_size} px crops)"
        extra = {"images": n, "dead": dead}
    try:
        checksum = save_vgg19(out, params, preprocess=preprocess or implied, source=label,
                              source_sha256=sha256, normalized=normalize is not None)
    except OSError as e:
        raise StylejaxError(f"Could not write {out} ({_one_line(e)}): choose another --out "
                            "path.") from None
    return {"out": out, "source": label, "checksum": checksum, "source_sha256": sha256,
            **extra}


def main(argv=None) -> int:
    """Command line: converts VGG-19 weights; returns the exit status (0 ok, 1 error)."""
    parser = argparse.ArgumentParser(
        description="Download (or read) public VGG-19 weights and convert them for stylejax.")
    parser.add_argument(
        "--source", default="keras", metavar="keras|torchvision|PATH",
        help="'keras' (default: the original Caffe weights as published by Keras), "
             "'torchvision', or a local .h5/.pth file (format detected from its content)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help=f"where to write the converted file (default {DEFAULT_PATH})")
    parser.add_argument(
        "--preprocess", choices=["caffe", "torchvision"], default=None,
        help="override the input preprocessing recorded in the file (default: the one of "
             "the source: caffe for Keras files, torchvision for .pth files)")
    parser.add_argument(
        "--normalize", metavar="DIR", default=None,
        help="write Gatys et al.'s normalised VGG-19 instead: each filter scaled so that its "
             "mean activation over the images in DIR is 1 (a few hundred photographs, e.g. "
             "ImageNet validation images)")
    parser.add_argument("--normalize-size", type=int, default=224, metavar="PX",
                        help="calibration crop size in px (default 224)")
    args = parser.parse_args(argv)
    override = {"caffe": CAFFE, "torchvision": TORCHVISION}.get(args.preprocess)
    try:
        result = convert(args.source, args.out, preprocess=override, normalize=args.normalize,
                         normalize_size=args.normalize_size)
    except StylejaxError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    print(f"Wrote {result['out']} from {result['source']} "
          f"(checksum {result['checksum'][:12]}).")
    if result.get("dead"):
        print(f"{result['dead']} filters never fired on the calibration images and keep "
              "their scale.")
    return 0

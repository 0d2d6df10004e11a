"""torchvision's VGG-19 state_dict (``vgg19-dcbb9e9d.pth``), read without torch.

Both of torch's serializations are read: the zip archive of ``torch.save`` since 1.6
(``<name>/data.pkl`` plus one member per storage) and the legacy stream before it (magic
number, protocol version, system info, the pickle, the storage keys, then each storage's
bytes), including the views of one shared storage that torch 0.1-0.3 wrote. The pickle goes
through the allow-list unpickler of `stylejax.convert.unpickle`; only the ``features.N``
convolutions' bytes are read (the classifier is skipped). Kernels are OIHW and come out HWIO.
The network was trained on RGB input normalised with ImageNet's mean and std.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from typing import BinaryIO

import numpy as np

from stylejax.convert.files import TORCH_MAGIC, TORCH_PROTOCOL_VERSION, detect_format, one_line
from stylejax.convert.unpickle import StateDictUnpickler, Storage, Tensor, storage_record
from stylejax.errors import StylejaxError
from stylejax.weights import CONV_NAMES

_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias)")
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
"""``features.N`` of torchvision's VGG-19 that are convolutions, in network order."""


def _needed_tensors(state, path) -> dict[int, dict[str, Tensor]]:
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
    convs: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.fullmatch(key) if isinstance(key, str) else None
        if m and isinstance(value, Tensor):
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


def _to_params(convs: dict[int, dict[str, Tensor]]) -> dict:
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
        plain = lambda: StateDictUnpickler(f, path).load()  # noqa: E731
        if plain() != TORCH_MAGIC:
            raise pickle.UnpicklingError("bad magic number")
        version = plain()
        if version != TORCH_PROTOCOL_VERSION:
            raise StylejaxError(
                f"{path} uses torch serialization protocol {version!r}, this reader knows "
                f"{TORCH_PROTOCOL_VERSION}: re-save it with a recent torch.save.")
        sys_info = plain()
        little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
        storages: dict[str, Storage] = {}
        state = StateDictUnpickler(
            f, path, lambda pid: storage_record(pid, storages)).load()
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
        storages: dict[str, Storage] = {}
        with zf.open(pickles[0]) as f:
            state = StateDictUnpickler(
                io.BufferedReader(f), path, lambda pid: storage_record(pid, storages)).load()
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
            f"{path} could not be read as a PyTorch file ({one_line(e)}): it is probably "
            "truncated or corrupt; download it again.") from None

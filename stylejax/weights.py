"""The converted-weights file and the `Vgg19` bundle that jitted code takes as an argument.

File format (``weights/vgg19.msgpack``): one msgpack map, readable with ``msgpack`` and
``numpy`` alone (no pickle)::

    {"format": "stylejax-vgg19", "version": 1,
     "source": "keras:vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
     "source_sha256": "...",            # of the public file it was converted from
     "preprocess": {"scale": 255.0, "channels": "bgr", "mean": [...], "std": [...]},
     "normalized": false,               # True for the Gatys et al. rescaled network
     "checksum": "...",                 # sha256 of the parameters, see `params_checksum`
     "params": {"conv1_1": {"kernel": <HWIO float32>, "bias": <float32>}, ...}}

Arrays are stored as msgpack ext values in flax.serialization's encoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import serialization, struct

from stylejax.errors import StylejaxError

FORMAT = "stylejax-vgg19"
VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "weights" / "vgg19.msgpack"

# (block, index, in_channels, out_channels) of the 16 convolutions of VGG-19.
_WIDTHS = (64, 128, 256, 512, 512)
_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)


def _conv_specs():
    specs, cin = [], 3
    for b, (width, n) in enumerate(zip(_WIDTHS, _CONVS_PER_BLOCK), start=1):
        for i in range(1, n + 1):
            specs.append((f"conv{b}_{i}", cin, width))
            cin = width
    return tuple(specs)


CONV_SPECS: tuple[tuple[str, int, int], ...] = _conv_specs()
"""(name, in_channels, out_channels) of the 16 convolutions, in network order."""
CONV_NAMES: tuple[str, ...] = tuple(name for name, _, _ in CONV_SPECS)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a weight source wants its input: ``(rgb_or_bgr(x * scale) - mean) / std``.

    ``x`` is float RGB in [0, 1]; ``mean`` and ``std`` are per channel in the order the
    network sees them (``channels``).
    """

    scale: float
    channels: str  # "rgb" or "bgr"
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocess":
        return cls(float(d["scale"]), str(d["channels"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


CAFFE = Preprocess(scale=255.0, channels="bgr", mean=(103.939, 116.779, 123.68))
TORCHVISION = Preprocess(scale=1.0, channels="rgb", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225))


@struct.dataclass
class Vgg19:
    """Pretrained VGG-19 parameters plus the static facts needed to use them.

    A pytree: ``params`` (``{"conv1_1": {"kernel": [3,3,Cin,Cout], "bias": [Cout]}, ...}``)
    are its leaves; ``preprocess``, ``source`` and ``normalized`` are static, so a jitted
    function taking the bundle recompiles only if they change.
    """

    params: dict
    preprocess: Preprocess = struct.field(pytree_node=False)
    source: str = struct.field(pytree_node=False, default="unknown")
    normalized: bool = struct.field(pytree_node=False, default=False)


def check_params(params: Mapping[str, Mapping[str, Any]]) -> dict:
    """Validates VGG-19 conv parameters and returns them as float32 numpy arrays.

    Raises StylejaxError naming the first missing layer or wrong shape.
    """
    if not isinstance(params, Mapping) or len(params) != len(CONV_SPECS):
        raise StylejaxError(
            f"This is not a VGG-19 weight file: it has "
            f"{len(params) if isinstance(params, Mapping) else 'no'} convolution layers, "
            f"VGG-19 has {len(CONV_SPECS)}.")
    out = {}
    for name, cin, cout in CONV_SPECS:
        layer = params.get(name)
        if not isinstance(layer, Mapping) or not {"kernel", "bias"} <= set(layer):
            raise StylejaxError(f"This is not a VGG-19 weight file: layer {name} is missing or "
                                "lacks its kernel or bias.")
        try:
            kernel = np.asarray(layer["kernel"], dtype=np.float32)
            bias = np.asarray(layer["bias"], dtype=np.float32)
        except (TypeError, ValueError):
            raise StylejaxError(f"This is not a VGG-19 weight file: {name} does not hold "
                                "numeric arrays.") from None
        if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
            raise StylejaxError(
                f"This is not a VGG-19 weight file: {name} has kernel {kernel.shape} and bias "
                f"{bias.shape}, expected {(3, 3, cin, cout)} and {(cout,)}.")
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise StylejaxError(f"The weight file is corrupt: {name} holds NaN or infinite values.")
        out[name] = {"kernel": kernel, "bias": bias}
    return out


def params_checksum(params: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 over every layer's name, shapes and little-endian float32 bytes, in network order."""
    h = hashlib.sha256()
    for name in CONV_NAMES:
        for key in ("kernel", "bias"):
            a = np.ascontiguousarray(params[name][key], dtype="<f4")
            h.update(f"{name}/{key}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_vgg19(path, params, *, preprocess: Preprocess, source: str,
               source_sha256: str = "", normalized: bool = False) -> str:
    """Validates ``params`` and writes them atomically to ``path``; returns the checksum."""
    params = check_params(params)
    checksum = params_checksum(params)
    record = {
        "format": FORMAT, "version": VERSION, "source": source,
        "source_sha256": source_sha256, "preprocess": preprocess.to_dict(),
        "normalized": bool(normalized), "checksum": checksum, "params": params,
    }
    atomic_write_bytes(path, serialization.msgpack_serialize(record))
    return checksum


def read_vgg19_file(path) -> dict:
    """Reads and verifies a converted file; returns its record with numpy params and a
    `Preprocess`."""
    path = Path(path)
    if not path.is_file():
        raise StylejaxError(
            f"No converted VGG-19 weights at {path}: run `python scripts/convert_weights.py` "
            "first (or pass --weights / set STYLEJAX_WEIGHTS).")
    try:
        record = serialization.msgpack_restore(path.read_bytes())
    except Exception:  # msgpack raises several unrelated types for damaged input
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StylejaxError(
            f"{path} is not a stylejax weight file (or it is truncated): convert the weights "
            "again with `python scripts/convert_weights.py`.")
    if record.get("version") != VERSION:
        raise StylejaxError(
            f"{path} has format version {record.get('version')}, this stylejax reads "
            f"{VERSION}: convert the weights again.")
    try:
        params = check_params(record.get("params"))
    except StylejaxError as e:
        raise StylejaxError(f"{path}: {e}") from None
    try:
        record["preprocess"] = Preprocess.from_dict(record["preprocess"])
    except (KeyError, TypeError, ValueError):
        record["preprocess"] = None
    if params_checksum(params) != record.get("checksum") or record["preprocess"] is None:
        raise StylejaxError(
            f"{path} fails its checksum (the file is damaged): convert the weights again "
            "with `python scripts/convert_weights.py`.")
    record["params"] = params
    return record


def resolve_weights_path(path=None) -> Path:
    """``path``, else ``$STYLEJAX_WEIGHTS``, else ``weights/vgg19.msgpack`` in the checkout."""
    if path is None:
        path = os.environ.get("STYLEJAX_WEIGHTS") or DEFAULT_PATH
    return Path(path)


def load_vgg19(path=None) -> Vgg19:
    """Loads converted VGG-19 weights as a `Vgg19` bundle of device arrays.

    Args:
      path: a file written by ``scripts/convert_weights.py``; None means
        ``$STYLEJAX_WEIGHTS``, else ``weights/vgg19.msgpack``.
    Raises:
      StylejaxError: the file is missing, damaged or not VGG-19.
    """
    record = read_vgg19_file(resolve_weights_path(path))
    params = {name: {k: jnp.asarray(v) for k, v in layer.items()}
              for name, layer in record["params"].items()}
    return Vgg19(params=params, preprocess=record["preprocess"],
                 source=str(record["source"]), normalized=bool(record.get("normalized", False)))

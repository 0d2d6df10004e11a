"""Keras VGG-19 HDF5 weight files, read with h5py.

``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` holds the original Oxford/Caffe weights
(BGR, 0-255, mean-subtracted input). Legacy Keras HDF5 files are read through the attributes
``layer_names`` and ``weight_names`` only, so both the 2016 dataset names
(``block1_conv1_W_1:0``) and Keras 3's (``block1_conv1/kernel``) work; full-model saves
(``model_weights``) and Keras 3's native ``.weights.h5`` layout (``layers/<name>/vars/0``)
are read too. Keras kernels are already HWIO.
"""

from __future__ import annotations

import re

import numpy as np

from stylejax.convert.files import one_line
from stylejax.errors import StylejaxError
from stylejax.weights import CONV_NAMES

try:  # a dependency of stylejax; without it only .pth files can be read
    import h5py
except ImportError:  # pragma: no cover
    h5py = None

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
    if h5py is None:
        raise StylejaxError("Reading Keras .h5 files needs h5py: pip install h5py.")
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
            f"{path} could not be read as HDF5 ({one_line(e)}): it is probably truncated or "
            "corrupt; download it again.") from None
    if not params:
        raise StylejaxError(
            f"This is not a VGG-19 weight file: {path} has no layers named blockB_convI as in "
            "keras.applications.VGG19.")
    return params


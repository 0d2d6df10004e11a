"""Random VGG-19 weights for tests and benchmarks (He-initialised, so activations keep a
realistic scale through 16 layers). Writers for the public file layouts live beside them."""

from __future__ import annotations

import numpy as np

from stylejax.weights import CONV_SPECS


def random_vgg_params(seed: int = 0) -> dict:
    """``{"conv1_1": {"kernel": [3,3,Cin,Cout] float32, "bias": [Cout] float32}, ...}``."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, cin, cout in CONV_SPECS:
        std = np.sqrt(2.0 / (9 * cin))
        params[name] = {
            "kernel": (rng.standard_normal((3, 3, cin, cout)) * std).astype(np.float32),
            "bias": (rng.standard_normal(cout) * 0.05).astype(np.float32),
        }
    return params


# --------------------------------------------------------------------------------------
# Writers for the public file layouts (used by tests/test_convert.py).

_KERAS_WIDTHS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
# Classifier of keras.applications.VGG19(include_top=True): (name, kernel shape).
_KERAS_TOP = (("fc1", (25088, 4096)), ("fc2", (4096, 4096)), ("predictions", (4096, 1000)))


def _keras_layer_names(include_top: bool, input_name: str) -> list[str]:
    names, block = [input_name], 1
    for conv, _, _ in CONV_SPECS:  # conv{B}_{I} -> block{B}_conv{I}
        b, i = conv[4], conv[6]
        if int(b) != block:
            names.append(f"block{block}_pool")
            block = int(b)
        names.append(f"block{b}_conv{i}")
    names.append(f"block{block}_pool")
    if include_top:
        names += ["flatten"] + [name for name, _ in _KERAS_TOP]
    return names


def write_keras_h5(path, params, layout: str = "2016", include_top: bool = False) -> None:
    """Writes ``params`` (ours, HWIO) as a Keras VGG-19 HDF5 weight file, in a public layout.

    ``layout="2016"``: as ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (Keras 1):
    root attribute ``layer_names`` (every layer, in model order), one group per layer whose
    ``weight_names`` attribute lists datasets ``block1_conv1_W_1:0``, ``block1_conv1_b_1:0``
    stored directly in the group (empty for input and pooling layers).
    ``layout="keras3"``: as Keras 3's ``legacy_h5_format.save_weights_to_hdf5_group``:
    ``layer_names``, ``backend`` and ``keras_version`` attributes, groups for all layers
    created in name order, weights named by ``weight.path`` (``block1_conv1/kernel``, i.e. a
    nested group), plus an empty ``top_level_model_weights`` group.
    ``include_top`` adds flatten/fc1/fc2/predictions with their real shapes; their datasets
    are left unwritten (HDF5 allocates contiguous storage lazily), so the file stays small.
    """
    import h5py

    if layout not in ("2016", "keras3"):
        raise ValueError(f"unknown layout {layout!r}")
    names = _keras_layer_names(include_top, "input_1" if layout == "2016" else "input_layer")

    def weights_of(layer):
        """[(short name, array or shape)] of a layer, kernel first."""
        if layer.startswith("block") and "_conv" in layer:
            ours = params[f"conv{layer[5]}_{layer[-1]}"]
            return [("kernel", ours["kernel"]), ("bias", ours["bias"])]
        for name, shape in _KERAS_TOP if include_top else ():
            if layer == name:
                return [("kernel", shape), ("bias", (shape[1],))]
        return []

    def write(group, dataset_name, value):
        if isinstance(value, tuple):  # a shape: leave the data unwritten
            group.create_dataset(dataset_name, value, dtype=np.float32)
        else:
            group.create_dataset(dataset_name, data=np.asarray(value, np.float32))

    with h5py.File(path, "w") as f:
        if layout == "2016":
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
            for layer in names:
                g = f.create_group(layer)
                tag = {"kernel": "W", "bias": "b"}
                ws = [(f"{layer}_{tag[short]}_1:0", v) for short, v in weights_of(layer)]
                g.attrs["weight_names"] = [n.encode() for n, _ in ws]
                for name, value in ws:
                    write(g, name, value)
        else:
            f.attrs["layer_names"] = [n.encode("utf8") for n in names]
            f.attrs["backend"] = b"jax"
            f.attrs["keras_version"] = b"3.15.1"
            for layer in sorted(names):
                g = f.create_group(layer)
                ws = [(f"{layer}/{short}", v) for short, v in weights_of(layer)]
                g.attrs["weight_names"] = [n.encode("utf8") for n, _ in ws]
                for name, value in ws:
                    write(g, name, value)
            f.create_group("top_level_model_weights").attrs["weight_names"] = []


TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def torchvision_state_dict(params, classifier: bool = True):
    """``params`` as torchvision's ``vgg19().state_dict()`` (an OrderedDict of torch tensors).

    Kernels go HWIO -> OIHW. ``classifier`` adds ``classifier.{0,3,6}.weight|bias`` with
    their real shapes, each a stride-0 view of a one-element storage so it costs nothing.
    """
    from collections import OrderedDict

    import torch

    sd = OrderedDict()
    meta = OrderedDict([("", {"version": 1}), ("features", {"version": 1})])
    for (name, _, _), n in zip(CONV_SPECS, TORCHVISION_CONV_INDICES):
        sd[f"features.{n}.weight"] = torch.from_numpy(
            np.ascontiguousarray(params[name]["kernel"].transpose(3, 2, 0, 1)))
        sd[f"features.{n}.bias"] = torch.from_numpy(np.array(params[name]["bias"]))
    for n in range(37):
        meta[f"features.{n}"] = {"version": 1}
    if classifier:
        meta["classifier"] = {"version": 1}
        for n, (cout, cin) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
            sd[f"classifier.{n}.weight"] = torch.full((1,), 0.01).expand(cout, cin)
            sd[f"classifier.{n}.bias"] = torch.zeros(1).expand(cout)
        for n in range(7):
            meta[f"classifier.{n}"] = {"version": 1}
    sd._metadata = meta
    return sd


def write_torchvision_pth(path, params, zipfile: bool = True, classifier: bool = True) -> None:
    """Writes ``params`` as torchvision's VGG-19 state_dict with ``torch.save``.

    ``zipfile=False`` uses torch's legacy stream format, that of the published
    ``vgg19-dcbb9e9d.pth``; ``classifier`` as in `torchvision_state_dict`.
    """
    import torch

    torch.save(torchvision_state_dict(params, classifier), path,
               _use_new_zipfile_serialization=zipfile)

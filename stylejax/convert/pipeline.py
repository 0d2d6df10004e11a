"""From a public VGG-19 file (or its name) to stylejax's converted file: pick the reader by the
file's content, optionally rebuild Gatys et al.'s normalised network, write and checksum."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import jax.numpy as jnp

from stylejax.convert.downloads import (DOWNLOADS, KERAS_NOTOP, KNOWN_FILES, TORCHVISION_VGG19,
                                        Notify, Progress, fetch, file_hashes, hash_problem)
from stylejax.convert.files import check_file, detect_format, one_line
from stylejax.convert.keras import read_keras_h5
from stylejax.convert.torchvision import read_torchvision_pth
from stylejax.errors import StylejaxError
from stylejax.images import calibration_images, image_files
from stylejax.normalize import DEAD, channel_means, normalize_params
from stylejax.weights import CAFFE, DEFAULT_PATH, TORCHVISION, Preprocess, Vgg19, save_vgg19

PREPROCESS: dict[str, Preprocess] = {"keras": CAFFE, "torchvision": TORCHVISION}
"""The input preprocessing each source network was trained with."""

CalibrationProgress = Callable[[int, Optional[int]], None]
"""``progress(done_images, total_images)`` while the normalised network is calibrated."""


def read_weights(path) -> tuple[dict, Preprocess, str]:
    """Reads any supported VGG-19 file, whatever its name.

    Returns ``(params, preprocess, kind)``: params ``{"conv1_1": {"kernel": [3,3,Cin,Cout],
    "bias": [Cout]}, ...}`` (HWIO, as the network computes), the preprocessing its source
    network was trained with, and "keras" or "torchvision". Raises StylejaxError for a
    missing, empty, unreadable or unrecognised file.
    """
    path = Path(path)
    check_file(path)
    try:
        fmt = detect_format(path)
    except OSError as e:
        raise StylejaxError(f"Could not read {path} ({one_line(e)}): check its permissions.") \
            from None
    if fmt == "hdf5":
        return read_keras_h5(path), PREPROCESS["keras"], "keras"
    if fmt in ("torch-zip", "torch-legacy"):
        return read_torchvision_pth(path), PREPROCESS["torchvision"], "torchvision"
    raise StylejaxError(
        f"{path} is neither a Keras HDF5 file nor a PyTorch .pth file: pass Keras's "
        f"{KERAS_NOTOP.filename} or torchvision's {TORCHVISION_VGG19.filename}.")


def _counted(items, total: int, progress: CalibrationProgress | None):
    """Yields ``items``, calling ``progress(done, total)`` before the first and after each."""
    if progress is not None:
        progress(0, total)
    for done, item in enumerate(items, start=1):
        yield item
        if progress is not None:
            progress(done, total)


def _normalized(params: dict, preprocess: Preprocess, folder, size: int,
                progress: CalibrationProgress | None) -> tuple[dict, int, int]:
    """Gatys et al.'s normalised network from ``params``, calibrated on the images in
    ``folder`` (``size`` px centre crops); returns (params, images used, dead filters)."""
    total = len(image_files(folder))
    vgg = Vgg19(params={k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in params.items()},
                preprocess=preprocess)
    crops = _counted(calibration_images(folder, size), total, progress)
    means, n = channel_means(vgg, crops, "max")
    dead = sum(int((m <= DEAD).sum()) for m in means.values())
    return normalize_params(params, means), n, dead


def _local_source(source: str) -> tuple[Path, str]:
    """``(path, sha256)`` of a local ``--source`` file; a file carrying a published name
    must match the published hash."""
    path = Path(source).expanduser()
    check_file(path)
    try:
        md5, sha256 = file_hashes(path)
    except OSError as e:
        raise StylejaxError(f"Could not read {path} ({one_line(e)}): check its "
                            "permissions.") from None
    published = KNOWN_FILES.get(path.name)
    if published is not None:
        problem = hash_problem(md5, sha256, published.md5, published.sha256_prefix)
        if problem:
            raise StylejaxError(
                f"{path} carries the name of a published file but fails its hash check "
                f"({problem}): download it again.")
    return path, sha256


def convert(source: str = "keras", out=None, preprocess: Preprocess | None = None,
            normalize=None, normalize_size: int = 224, *, progress: Progress | None = None,
            calibration_progress: CalibrationProgress | None = None,
            notify: Notify | None = None) -> dict:
    """Converts ``source`` ("keras", "torchvision" or a file path) and writes ``out``.

    ``out`` defaults to `weights.DEFAULT_PATH`; ``preprocess`` overrides the one implied by
    the file's format. ``normalize``: a folder of images; if given, the file holds Gatys et
    al.'s normalised network calibrated on them (``normalize_size`` px centre crops, max
    pooling; see `stylejax.normalize`) and is marked ``normalized``. A named source is
    fetched into `cache_dir` (see `fetch`); ``progress(done_bytes, total_bytes)`` and
    ``notify(sentence)`` report on that, ``calibration_progress(done_images, total_images)``
    on the normalisation; nothing is printed. Returns ``{"out", "source", "checksum",
    "source_sha256"}``, plus ``"images"`` and ``"dead"`` (filters that never fired, left
    unscaled) when normalising. Raises StylejaxError, leaving ``out`` as it was.
    """
    out = Path(out) if out is not None else DEFAULT_PATH
    if out.is_dir():
        raise StylejaxError(f"--out {out} is a directory: give a file path such as "
                            f"{out / 'vgg19.msgpack'}.")
    if normalize is not None:
        image_files(normalize)  # fail before any download
        if normalize_size < 32:
            raise StylejaxError(f"--normalize-size must be >= 32 px (VGG-19 pools five "
                                f"times), got {normalize_size}.")
    if source in DOWNLOADS:
        path, sha256 = fetch(DOWNLOADS[source], progress=progress, notify=notify)
    else:
        path, sha256 = _local_source(source)
    params, implied, kind = read_weights(path)
    label = f"{kind}:{path.name}"
    extra = {}
    if normalize is not None:
        params, n, dead = _normalized(params, preprocess or implied, normalize, normalize_size,
                                      calibration_progress)
        label += f" normalized on {n} images ({normalize_size} px crops)"
        extra = {"images": n, "dead": dead}
    try:
        checksum = save_vgg19(out, params, preprocess=preprocess or implied, source=label,
                              source_sha256=sha256, normalized=normalize is not None)
    except OSError as e:
        raise StylejaxError(f"Could not write {out} ({one_line(e)}): choose another --out "
                            "path.") from None
    return {"out": out, "source": label, "checksum": checksum, "source_sha256": sha256,
            **extra}

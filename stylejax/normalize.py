"""The normalised VGG-19 of Gatys et al. (2016): the same network, rescaled so that each
filter's mean activation over a set of images and positions is 1.

For each ReLU layer l, with m_l[c] the mean of ``reluB_I`` channel c over the calibration
images and positions, the convolution before it gets its kernel and bias divided by m_l[c]
and the next convolution's kernel input slice c multiplied by m_l[c]. ReLU and both poolings
are positively homogeneous, so every activation of the new network is the original one times
a positive per-channel factor (1/m at layer l; the next layer's input is compensated), the
means are all measured on the original network in one pass, and the classifier-free network
computes the same function up to those factors. Pure: arrays in, arrays out.
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.vgg import extract_features
from stylejax.weights import CONV_NAMES, Vgg19

RELUS = tuple(name.replace("conv", "relu") for name in CONV_NAMES)
DEAD = 1e-12
"""A mean at or below this (a filter that never fires on the calibration images) is left
unscaled: there is nothing to divide by."""


@functools.partial(jax.jit, static_argnames=("pooling",))
def channel_sums(vgg: Vgg19, images, pooling: str = "max") -> dict:
    """``{reluB_I: [C]}``: each ReLU channel summed over the batch and positions.

    ``images``: [N, H, W, 3] RGB in [0, 1]. Divide by N*h*w of that layer for the mean.
    """
    feats = extract_features(vgg, images, RELUS, pooling)
    return {name: jnp.sum(f, axis=(0, 1, 2), dtype=jnp.float32) for name, f in feats.items()}


def channel_means(vgg: Vgg19, batches: Iterable, pooling: str = "max") -> tuple[dict, int]:
    """Mean activation of every ReLU channel over all images and positions of ``batches``.

    ``batches``: an iterable of [N, H, W, 3] (or [H, W, 3]) arrays in [0, 1]; every position
    of every image weighs the same. Returns ``({reluB_I: float64 [C]}, number of images)``.
    """
    sums, counts, images = {}, {}, 0
    for batch in batches:
        batch = jnp.asarray(batch, jnp.float32)
        batch = batch[None] if batch.ndim == 3 else batch
        n, h, w = batch.shape[:3]
        for name, s in channel_sums(vgg, batch, pooling).items():
            pools = int(name[4]) - 1
            sums[name] = sums.get(name, 0.0) + np.asarray(s, np.float64)
            counts[name] = counts.get(name, 0) + n * (h >> pools) * (w >> pools)
        images += n
    return {name: sums[name] / counts[name] for name in sums}, images


def normalize_params(params: dict, means: dict) -> dict:
    """VGG-19 ``params`` rescaled so that ReLU channel means ``means`` become 1 (see module doc).

    ``params``: ``{convB_I: {"kernel": [3, 3, Cin, Cout], "bias": [Cout]}}``; ``means``:
    ``{reluB_I: [Cout]}`` measured on the original network. Channels whose mean is <= `DEAD`
    keep their scale. Returns new float32 numpy params.
    """
    out, carry = {}, None  # carry: the previous layer's factors, to undo in this input
    for conv in CONV_NAMES:
        kernel = np.asarray(params[conv]["kernel"], np.float64)
        bias = np.asarray(params[conv]["bias"], np.float64)
        if carry is not None:
            kernel = kernel * carry[None, None, :, None]
        m = np.asarray(means[conv.replace("conv", "relu")], np.float64)
        scale = np.where(m > DEAD, m, 1.0)
        out[conv] = {"kernel": (kernel / scale).astype(np.float32),
                     "bias": (bias / scale).astype(np.float32)}
        carry = scale
    return out


def normalize_vgg(vgg: Vgg19, batches: Iterable, pooling: str = "max") -> tuple[Vgg19, dict]:
    """The normalised network of ``vgg``, calibrated on ``batches`` (see `channel_means`).

    Returns ``(bundle with normalized=True, {reluB_I: original mean [C]})``. Calibrate with
    max pooling, the network as trained; the result may be used with either pooling.
    """
    means, _ = channel_means(vgg, batches, pooling)
    params = normalize_params(jax.tree.map(np.asarray, vgg.params), means)
    return (Vgg19(params=jax.tree.map(jnp.asarray, params), preprocess=vgg.preprocess,
                  source=vgg.source, normalized=True), means)

"""VGG-19's layer names and the image sizes they need (no JAX: shapes only).

``convB_I`` is convolution I of block B before its ReLU, ``reluB_I`` after it, ``poolB`` the
block's 2x2 pooling.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from stylejax.errors import StylejaxError
from stylejax.weights import CONV_SPECS


def _layer_names() -> tuple[str, ...]:
    names, block = [], 1
    for conv, _, _ in CONV_SPECS:
        b = int(conv[4])
        if b != block:
            names.append(f"pool{block}")
            block = b
        names += [conv, conv.replace("conv", "relu")]
    names.append(f"pool{block}")
    return tuple(names)


LAYERS: tuple[str, ...] = _layer_names()
"""All 37 layer names in network order: conv1_1, relu1_1, conv1_2, ..., pool5."""

CHANNELS = {name: (cin, cout) for name, cin, cout in CONV_SPECS}
"""conv layer name -> (input channels, output channels)."""


def check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """Returns ``layers`` as a tuple, raising StylejaxError on an unknown name."""
    layers = tuple(layers)
    unknown = [name for name in layers if name not in LAYERS]
    if unknown or not layers:
        raise StylejaxError(
            f"Unknown VGG-19 layer name(s) {', '.join(unknown) or '(none given)'}: valid names "
            f"are convB_I / reluB_I (B=1..5; I=1..2 for blocks 1-2, 1..4 for 3-5) and "
            f"pool1..pool5.")
    return layers


def min_size(layers: Iterable[str]) -> int:
    """Smallest height/width (px) for which every layer in ``layers`` is at least 1x1."""
    pools = max(int(name[4]) if name.startswith("pool") else int(name[4]) - 1
                for name in layers)
    return 2 ** pools


def layer_input(name: str, image_shape=None) -> tuple[int, int, int, int]:
    """The [1, h, w, Cin] input of conv layer ``name`` for images of ``image_shape``
    ([N, H, W, 3], [H, W, 3] or (H, W); None: big enough for any layer)."""
    channels = CHANNELS[name][0]
    if image_shape is None:
        return (1, 1 << 16, 1 << 16, channels)
    h, w = tuple(image_shape)[-3:-1] if len(image_shape) > 2 else tuple(image_shape)
    for _ in range(int(name[4]) - 1):  # block B follows B - 1 poolings
        h, w = h // 2, w // 2
    return (1, h, w, channels)

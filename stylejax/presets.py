"""The published settings by name: `gatys` (the paper), `johnson` (jcjohnson/neural-style's
defaults) and `seed` (the seed repository), each a `LossConfig` plus its run defaults."""

from __future__ import annotations

from typing import Optional

from stylejax.errors import StylejaxError
from stylejax.losses import STYLE_LAYERS, LossConfig


PRESETS: dict[str, dict] = {
    # The paper: style relu1_1..relu5_1 with w_l = 1/5, content relu4_2, average pooling,
    # alpha/beta = 1e-3 (Fig. 2/3). It used a normalised VGG-19 (`convert_weights.py
    # --normalize`); with the raw Caffe weights the same ratio over-weights content.
    "gatys": dict(loss=dict(content_layers=("relu4_2",), style_layers=STYLE_LAYERS,
                            content_weight=1.0, style_weight=1e3, tv_weight=0.0,
                            normalization="gatys", pooling="avg"),
                  size=512, epochs=10, max_iter=100, lr=0.0, snapshot_every=1,
                  network="normalized"),
    # jcjohnson/neural-style's defaults (content_weight 5, style_weight 100 applied to every
    # style layer, tv_weight 1e-3, max pooling, 512 px, 1000 L-BFGS iterations). His TV term is
    # ½ Σ diff² on the 0-255 image (its gradient is strength·diff), so 1e-3 · ½ · 255² = 32.5
    # on our [0, 1] image; his style/content losses are MSEs exactly as in our johnson row.
    "johnson": dict(loss=dict(content_layers=("relu4_2",), style_layers=STYLE_LAYERS,
                              style_layer_weights=(1.0,) * 5, content_weight=5.0,
                              style_weight=100.0, tv_weight=32.5, normalization="johnson",
                              pooling="max"),
                    size=512, epochs=10, max_iter=100, lr=0.0, snapshot_every=1,
                    network="original"),
    # The seed repository: torchvision weights, 250 px shorter edge, fixed-step L-BFGS.
    "seed": dict(loss=dict(content_layers=("relu4_2",), style_layers=STYLE_LAYERS,
                           style_layer_weights=(1.0, 0.75, 0.2, 0.2, 0.2), content_weight=5.0,
                           style_weight=1e4, tv_weight=0.0, normalization="seed",
                           pooling="max"),
                 size=250, epochs=350, max_iter=5, lr=0.015, snapshot_every=50,
                 network="original"),
}
"""Per preset: ``loss`` (LossConfig fields), run defaults, and ``network``: the VGG-19 its
weights were chosen for, "normalized" (`convert_weights.py --normalize`) or "original"."""


def network_warning(preset: str, normalized: bool) -> Optional[str]:
    """One sentence if preset ``preset`` expects the other VGG-19 than the one loaded, else None."""
    want = PRESETS[preset]["network"]
    if (want == "normalized") == bool(normalized):
        return None
    if want == "normalized":
        return (f"the {preset} preset's weights (content 1, style 1e3) are the paper's for its "
                "normalised VGG-19; these weights are the original network, on which they "
                "under-weight style: convert with `convert_weights.py --normalize DIR`, or "
                "raise --style-weight.")
    return (f"the {preset} preset's weights were chosen for the original VGG-19 but these "
            "are the normalised network (convert_weights.py --normalize), whose activations "
            "have another scale: use --preset gatys or retune the weights.")


def preset_config(name: str, **overrides) -> LossConfig:
    """The `LossConfig` of preset ``name`` ("gatys", "johnson", "seed"), fields overridden."""
    if name not in PRESETS:
        raise StylejaxError(f"Unknown preset {name!r}: use one of {', '.join(PRESETS)}.")
    return LossConfig(**{**PRESETS[name]["loss"], **overrides})

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

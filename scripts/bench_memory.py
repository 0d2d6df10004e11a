#!/usr/bin/env python
"""Peak memory of one value+grad of the johnson loss, in this fresh process.

    python scripts/bench_memory.py jax|torch SIZE [direct|winograd]   ->  one JSON line

Each side imports only its own framework, so neither pays for the other's libraries.
Used by scripts/bench.py; the images are synthetic (memory does not depend on them).
"""

import importlib.util
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from fixtures import random_vgg_params  # noqa: E402


def main(side, size, conv="direct"):
    rng = np.random.default_rng(0)
    content, style = (rng.random((1, size, size, 3), dtype=np.float32) for _ in range(2))
    params = random_vgg_params(0)
    if side == "jax":
        import jax
        import jax.numpy as jnp

        import stylejax
        from stylejax.cpu.hostmem import compile_released
        from stylejax.vgg import prepare_kernels
        from stylejax.weights import CAFFE, Vgg19

        # Device copies, as load_vgg19 makes them; the numpy originals are then dropped (torch
        # shares them through from_numpy instead).
        vgg = Vgg19(params=jax.tree.map(jnp.asarray, params), preprocess=CAFFE)
        del params
        cfg = stylejax.preset_config("johnson", conv=conv)
        targets = stylejax.make_targets(vgg, content, style, cfg)
        vg = jax.jit(jax.value_and_grad(stylejax.loss_fn, argnums=1), static_argnames="cfg")
        x = jnp.asarray(content)
        # Kernels prepared once (Winograd domain, direct flip), as every solver epoch has them.
        vgg = prepare_kernels(vgg, cfg.layers, cfg.conv, cfg.dtype, x.shape)
        # Compiled ahead and the compiler's freed heap released, as the driver's epochs are.
        vg = compile_released(vg, vgg, x, targets, cfg=cfg)
        for _ in range(2):
            jax.block_until_ready(vg(vgg, x, targets))
        device = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    else:
        from types import SimpleNamespace

        import torch

        from torch_reference import TorchLoss, nhwc_to_torch, torch_layers

        # The johnson preset's numbers, spelled out so this side never imports jax.
        cfg = SimpleNamespace(
            content_layers=("relu4_2",), content_weights=(1.0,),
            style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
            style_weights=(1.0,) * 5, content_weight=5.0, style_weight=100.0, tv_weight=32.5,
            normalization="johnson", pooling="max")
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        layers = [(n, w.to(dev), b.to(dev)) for n, w, b in torch_layers(params)]
        loss = TorchLoss(layers, nhwc_to_torch(content).to(dev), nhwc_to_torch(style).to(dev),
                         cfg)
        x = nhwc_to_torch(content).to(dev).requires_grad_(True)
        hostmem().release_freed_memory()  # the same release as the JAX side gets
        for _ in range(2):
            x.grad = None
            loss(x).backward()
        device = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    print(json.dumps({"side": side, "size": size, "conv": conv if side == "jax" else None,
                      "device_peak_mb": device and device / 2**20,
                      "peak_rss_mb": peak_rss_mb()}))


def hostmem():
    """`stylejax.cpu.hostmem`, loaded without the package (whose import pulls in JAX)."""
    spec = importlib.util.spec_from_file_location("hostmem", ROOT / "stylejax" / "hostmem.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM restarts at exec; ru_maxrss would count the
    parent's memory that the fork copied (bench.py's, several GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])

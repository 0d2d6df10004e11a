#!/usr/bin/env python
"""Peak memory of one value+grad of the johnson loss, in this fresh process.

    python scripts/bench_memory.py jax|torch SIZE [auto|direct|winograd]   ->  one JSON line

Each side imports only its own framework, so neither pays for the other's libraries (the
torch side checks that JAX was never imported). Used by scripts/bench.py; the images are synthetic (memory does not depend on them).
"""

import importlib.util
import json
import resource
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402


def _conv_specs():
    specs, cin = [], 3
    for block, (width, n) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 4, 4, 4)), 1):
        for i in range(1, n + 1):
            specs.append((f"conv{block}_{i}", cin, width))
            cin = width
    return tuple(specs)


# VGG-19's convolutions (name, in channels, out channels), as `stylejax.weights.CONV_SPECS`
# (the JAX side checks that they agree), spelled out since importing stylejax pulls in JAX.
CONV_SPECS = _conv_specs()


def main(side, size, conv="auto"):
    rng = np.random.default_rng(0)
    content, style = (rng.random((1, size, size, 3), dtype=np.float32) for _ in range(2))
    params = random_vgg_params(0)
    if side == "jax":
        import jax
        import jax.numpy as jnp

        import stylejax
        from stylejax.cpu.kernels import prepare_kernels
        from stylejax.cpu.hostmem import compile_released, keep_step_heap
        from stylejax.execution import Execution
        from stylejax.weights import CAFFE, CONV_SPECS as SPECS, Vgg19

        assert CONV_SPECS == SPECS, "bench_memory.CONV_SPECS is out of date"
        # glibc's heap thresholds as the CLI's process sets them (the library leaves them).
        keep_step_heap()

        # Device copies, as load_vgg19 makes them; the numpy originals are then dropped (torch
        # shares them through from_numpy instead).
        vgg = Vgg19(params=jax.tree.map(jnp.asarray, params), preprocess=CAFFE)
        del params
        cfg, execution = stylejax.preset_config("johnson"), Execution(conv=conv)
        targets = stylejax.make_targets(vgg, content, style, cfg, execution=execution)
        vg = jax.jit(jax.value_and_grad(stylejax.loss_fn, argnums=1),
                     static_argnames=("cfg", "execution"))
        x = jnp.asarray(content)
        # Kernels prepared once (Winograd domain, direct flip), as every solver epoch has them.
        vgg = prepare_kernels(vgg, cfg.layers, execution, x.shape)
        # Compiled ahead and the compiler's freed heap released, as the epochs are.
        vg = compile_released(vg, vgg, x, targets, cfg=cfg, execution=execution)
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
        assert "jax" not in sys.modules, "the torch side must not pay for JAX's libraries"
        for _ in range(2):
            x.grad = None
            loss(x).backward()
        device = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    print(json.dumps({"side": side, "size": size, "conv": conv if side == "jax" else None,
                      "device_peak_mb": device and device / 2**20,
                      "peak_rss_mb": peak_rss_mb()}))


def _load_with(path: Path, name: str, stand_in: dict):
    """The module in file ``path``, loaded with ``sys.modules[name]`` a module holding
    ``stand_in`` while it runs (so its ``from name import ...`` does not import the package
    ``name`` is in), and named after its file."""
    saved = sys.modules.get(name)
    sys.modules[name] = types.ModuleType(name)
    vars(sys.modules[name]).update(stand_in)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved
    return module


def random_vgg_params(seed: int = 0) -> dict:
    """`tests/fixtures.random_vgg_params`, the weights both sides get, without importing JAX:
    the one name fixtures.py takes from stylejax, `weights.CONV_SPECS`, comes from here."""
    fixtures = _load_with(ROOT / "tests" / "fixtures.py", "stylejax.weights",
                          {"CONV_SPECS": CONV_SPECS})
    return fixtures.random_vgg_params(seed)


def hostmem():
    """`stylejax.cpu.hostmem` without importing JAX: its one import from the package,
    `xla_options.compile_lowered` (whose module imports JAX), serves only
    `compile_released`, which the torch side does not call."""
    return _load_with(ROOT / "stylejax" / "cpu" / "hostmem.py", "stylejax.cpu.xla_options",
                      {"compile_lowered": None})


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

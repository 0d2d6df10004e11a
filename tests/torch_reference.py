"""An independent PyTorch implementation of VGG-19 and of the loss formulas in DESIGN.md.

Used by the tests (in float64, as the reference our loss must agree with) and by
scripts/bench.py (in float32, as the implementation we race). It shares no code with
stylejax: only the formulas.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BLOCKS = (2, 2, 4, 4, 4)


def torch_layers(params: dict, dtype=torch.float32):
    """[(name, weight OIHW, bias)] in network order, from HWIO numpy params."""
    out = []
    for b, n in enumerate(BLOCKS, start=1):
        for i in range(1, n + 1):
            p = params[f"conv{b}_{i}"]
            w = torch.from_numpy(np.ascontiguousarray(np.transpose(p["kernel"], (3, 2, 0, 1))))
            out.append((f"conv{b}_{i}", w.to(dtype), torch.from_numpy(p["bias"]).to(dtype)))
    return out


def features(layers, x, wanted, pooling="max", scale=255.0, bgr=True,
             mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)):
    """Activations of NCHW RGB [0,1] ``x`` at ``wanted`` names; stops at the deepest one."""
    x = x * scale
    if bgr:
        x = x.flip(1)
    x = (x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)) / \
        torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out, remaining = {}, set(wanted)
    block = 1
    for name, w, b in layers:
        nb = int(name[4])
        if nb != block:
            x = F.max_pool2d(x, 2) if pooling == "max" else F.avg_pool2d(x, 2)
            if f"pool{block}" in remaining:
                out[f"pool{block}"] = x
                remaining.discard(f"pool{block}")
            block = nb
        if not remaining:
            return out
        x = F.conv2d(x, w, b, padding=1)
        if name in remaining:
            out[name] = x
            remaining.discard(name)
        x = F.relu(x)
        relu = name.replace("conv", "relu")
        if relu in remaining:
            out[relu] = x
            remaining.discard(relu)
    if remaining:
        x = F.max_pool2d(x, 2) if pooling == "max" else F.avg_pool2d(x, 2)
        out["pool5"] = x
    return out


def gram(f, normalization):
    n, c, h, w = f.shape
    m = f.reshape(n, c, h * w)
    g = m @ m.transpose(1, 2)
    return g / {"gatys": h * w, "johnson": h * w * c, "seed": 1}[normalization]


class TorchLoss:
    """The total loss of DESIGN.md for NCHW images, with targets computed at construction."""

    def __init__(self, layers, content, style, cfg, **prep):
        self.layers, self.cfg, self.prep = layers, cfg, prep
        self.names = list(dict.fromkeys(cfg.content_layers + cfg.style_layers))
        with torch.no_grad():
            fc = features(layers, content, cfg.content_layers, cfg.pooling, **prep)
            fs = features(layers, style, cfg.style_layers, cfg.pooling, **prep)
        self.p = {k: fc[k] for k in cfg.content_layers}
        self.a = {k: gram(fs[k], cfg.normalization) for k in cfg.style_layers}

    def __call__(self, x):
        cfg, norm = self.cfg, self.cfg.normalization
        f = features(self.layers, x, self.names, cfg.pooling, **self.prep)
        content = 0.0
        for name, w in zip(cfg.content_layers, cfg.content_weights):
            d = f[name] - self.p[name]
            content = content + w * (0.5 * (d * d).sum() if norm == "gatys" else (d * d).mean())
        style = 0.0
        for name, w in zip(cfg.style_layers, cfg.style_weights):
            g = gram(f[name], norm)
            c, m = g.shape[-1], f[name].shape[2] * f[name].shape[3]
            d2 = (g - self.a[name]) ** 2
            term = {"gatys": d2.sum() / (4 * c * c), "johnson": d2.mean(),
                    "seed": d2.mean() / (c * m)}[norm]
            style = style + w * term
        tv = ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum() + \
             ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum()
        return cfg.content_weight * content + cfg.style_weight * style + cfg.tv_weight * tv


def nhwc_to_torch(a, dtype=torch.float32):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(a), (0, 3, 1, 2)))).to(dtype)

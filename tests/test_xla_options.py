"""`stylejax.xla_options`: our programs run convolutions outside YNNPACK; dots inside it only
in a program of direct convolutions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import hostmem, vgg, xla_options
from stylejax.losses import LossConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")

_X = jnp.ones((1, 16, 16, 64))
_K = jnp.full((3, 3, 64, 64), 0.01)


def _conv_and_dot(x, k):
    y = vgg.conv3x3(x, k)
    return y, jnp.einsum("bnc,bcd->bnd", y.reshape(4, 64, 64), k.reshape(9, 64, 64)[:4])


def test_direct_programs_keep_ynnpack_for_dots_only_winograd_ones_none():
    jitted = jax.jit(lambda x, k, cfg: _conv_and_dot(x, k), static_argnames="cfg")
    default = jitted.lower(_X, _K, cfg=None).compile().as_text()
    # XLA's own default puts both into YNNPACK fusions.
    if default.count("__ynn_fusion") < 2:
        pytest.skip("this jaxlib's defaults don't put convolutions into YNNPACK")
    for conv, fusions in (("direct", 1), ("winograd", 0), ("auto", 0)):
        # The algorithm is read off the config argument, as the solver's programs pass it.
        compiled = hostmem.compile_released(jitted, _X, _K, cfg=LossConfig(conv=conv))
        entry = compiled.as_text()[compiled.as_text().index("\nENTRY"):]
        fused = [line for line in entry.splitlines() if "__ynn_fusion" in line]
        assert len(fused) == fusions, (conv, fused)
        assert all("dot_general" in line for line in fused)  # the dot, in YNNPACK
        assert " convolution(" in entry  # the convolution, by XLA itself (Eigen)
        for u, v in zip(jitted(_X, _K, cfg=None), compiled(_X, _K)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_a_rejected_option_falls_back_to_xla_defaults(monkeypatch):
    bad = {xla_options.YNN_OPTION: "LIBRARY_FUSION_TYPE_NO_SUCH_THING"}
    monkeypatch.setattr(xla_options, "CPU_OPTIONS", {"winograd": bad, "direct": bad})
    monkeypatch.setattr(xla_options, "_rejected", False)
    compiled = hostmem.compile_released(jax.jit(lambda x: x * 2), jnp.arange(3.0))
    np.testing.assert_allclose(compiled(jnp.arange(3.0)), [0, 2, 4])
    assert xla_options._rejected and xla_options.compiler_options() == {}


def test_a_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=")
    assert xla_options.compiler_options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    assert xla_options.compiler_options() == xla_options.CPU_OPTIONS["winograd"]  # auto
    assert xla_options.compiler_options(conv="direct") == xla_options.CPU_OPTIONS["direct"]
    assert xla_options.compiler_options("gpu") == {}

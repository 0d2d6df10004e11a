"""`stylejax.cpu.xla_options`: which of a program's convolutions and dots run in YNNPACK, by the
program's convolution algorithm and the CPU (with AVX-512 or without)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from stylejax.cpu import hostmem, xla_options
from stylejax.execution import Execution

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")

_X = jnp.ones((1, 16, 16, 64))
_K = jnp.full((3, 3, 64, 64), 0.01)


def _conv_and_dot(x, k):
    # A 3x3 'same' convolution as the layers' forward pass runs it (`cpu.kernels`), and a dot.
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, jnp.einsum("bnc,bcd->bnd", y.reshape(4, 64, 64), k.reshape(9, 64, 64)[:4])


@pytest.mark.parametrize("avx512", [False, True])
def test_ynnpack_runs_dots_of_direct_programs_and_convolutions_of_winograd_ones_on_avx512(
        monkeypatch, avx512):
    monkeypatch.setattr(xla_options, "has_avx512", lambda: avx512)
    jitted = jax.jit(lambda x, k, execution: _conv_and_dot(x, k), static_argnames="execution")
    default = jitted.lower(_X, _K, execution=None).compile().as_text()
    # XLA's own default puts both into YNNPACK fusions.
    if default.count("__ynn_fusion") < 2:
        pytest.skip("this jaxlib's defaults don't put convolutions into YNNPACK")
    # op: (its name in a YNNPACK fusion's line, its HLO opcode when XLA runs it itself)
    ops = {"dot": ("dot_general", " dot("), "conv": ("conv_general_dilated", " convolution(")}
    in_ynnpack = {"direct": "dot", "winograd": "conv" if avx512 else None}
    in_ynnpack["auto"] = in_ynnpack["winograd"]
    for conv, op in in_ynnpack.items():
        # The algorithm is read off the `Execution` argument, as the solver's programs pass it.
        compiled = hostmem.compile_released(jitted, _X, _K, execution=Execution(conv=conv))
        entry = compiled.as_text()[compiled.as_text().index("\nENTRY"):]
        fused = [line for line in entry.splitlines() if "__ynn_fusion" in line]
        assert len(fused) == (op is not None), (conv, fused)
        if op is not None:
            assert ops[op][0] in fused[0]
        for other in set(ops) - {op}:  # the other, by XLA itself (Eigen)
            assert ops[other][1] in entry, (conv, other)
        for u, v in zip(jitted(_X, _K, execution=None), compiled(_X, _K)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_has_avx512_reads_the_cpu_flags(tmp_path):
    flags = "fpu sse2 avx2 fma"
    for name, text, expected in (
            ("avx512", f"processor\t: 0\nflags\t\t: {flags} avx512f avx512bw\n", True),
            ("avx2", f"processor\t: 0\nflags\t\t: {flags} avx512_bf16x\n", False),
            ("arm", "processor\t: 0\nFeatures\t: fp asimd\n", False)):
        (tmp_path / name).write_text(text)
        assert xla_options.has_avx512(str(tmp_path / name)) is expected, name
    assert xla_options.has_avx512(str(tmp_path / "missing")) is False


def test_a_rejected_option_falls_back_to_xla_defaults(monkeypatch):
    bad = {xla_options.YNN_OPTION: "LIBRARY_FUSION_TYPE_NO_SUCH_THING"}
    monkeypatch.setattr(xla_options, "CPU_OPTIONS",
                        {(conv, avx512): bad for conv in ("winograd", "direct")
                         for avx512 in (False, True)})
    monkeypatch.setattr(xla_options, "_rejected", False)
    compiled = hostmem.compile_released(jax.jit(lambda x: x * 2), jnp.arange(3.0))
    np.testing.assert_allclose(compiled(jnp.arange(3.0)), [0, 2, 4])
    assert xla_options._rejected and xla_options.compiler_options() == {}


def test_a_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=")
    assert xla_options.compiler_options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    avx512 = xla_options.has_avx512()
    assert xla_options.compiler_options() == xla_options.CPU_OPTIONS["winograd", avx512]  # auto
    assert (xla_options.compiler_options(conv="direct")
            == xla_options.CPU_OPTIONS["direct", avx512])
    assert xla_options.compiler_options("gpu") == {}

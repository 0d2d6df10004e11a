"""The benchmark's race is fair (its PyTorch loss is ours) and its FLOP counter is right."""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stylejax
from conftest import REPO
from stylejax.execution import resolve_conv

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402


def test_conv_flop_counter_matches_a_hand_count():
    # conv1_1 on 40x32: 3->64 channels, 9 taps, multiply+add, forward and input gradient.
    assert bench.conv_flops(40, 32, ("conv1_1",)) == 2 * (2 * 9 * 3 * 64 * 40 * 32)
    # relu2_1 also runs conv1_2 (64->64) at full size and conv2_1 (64->128) after one pooling.
    hand = 2 * 9 * (3 * 64 * 40 * 32 + 64 * 64 * 40 * 32 + 64 * 128 * 20 * 16)
    assert bench.conv_flops(40, 32, ("relu2_1",)) == 2 * hand


def test_benchmark_torch_loss_equals_ours(vgg, vgg_params):
    """Same value and gradient from both racers (float32 each, so 1e-4 / 1e-3 relative)."""
    cfg = bench.bench_config()
    content, style = bench.bench_images(32)
    targets = stylejax.make_targets(vgg, content, style, cfg)
    x = jnp.asarray(content[None] * 0.9 + 0.05)
    value, grad = jax.value_and_grad(stylejax.loss_fn, argnums=1)(vgg, x, targets, cfg)
    torch, tloss, x0, _ = bench.torch_setup(vgg_params, content, style, cfg)
    xt = (x0 * 0.9 + 0.05).requires_grad_(True)
    tvalue = tloss(xt)
    tvalue.backward()
    np.testing.assert_allclose(float(value), tvalue.item(), rtol=1e-4)
    tgrad = xt.grad.numpy().transpose(0, 2, 3, 1)
    assert np.linalg.norm(np.asarray(grad) - tgrad) / np.linalg.norm(tgrad) < 1e-3


def test_memory_bench_gives_the_torch_side_the_same_weights_without_jax(vgg_params):
    import bench_memory
    from stylejax.weights import CONV_SPECS

    assert bench_memory.CONV_SPECS == CONV_SPECS
    params = bench_memory.random_vgg_params(0)
    assert list(params) == list(vgg_params)
    for name, p in params.items():
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(p[k], vgg_params[name][k])
    # Its own copy of hostmem releases as the library's does (True where glibc is).
    from stylejax.cpu import hostmem

    assert bench_memory.hostmem().release_freed_memory() == hostmem.release_freed_memory()
    # The stand-ins it loaded with are gone again: this process's modules are the real ones.
    assert sys.modules["stylejax.weights"].CONV_SPECS is CONV_SPECS
    assert sys.modules["stylejax.cpu.xla_options"].compile_lowered is not None


def test_race_reports_each_side_s_own_time_and_their_ratio(vgg, vgg_params, monkeypatch):
    """Torch's loss made 0.25 s slower: its reported time carries that and ours does not, and
    the ratio and FLOP rate are those of the reported times."""
    delay, setup = 0.25, bench.torch_setup

    def slow_torch(*args, **kwargs):
        torch, tloss, x0, sync = setup(*args, **kwargs)

        def slow(x):
            time.sleep(delay)
            return tloss(x)

        return torch, slow, x0, sync

    monkeypatch.setattr(bench, "torch_setup", slow_torch)
    r = bench.value_and_grad_race(vgg, vgg_params, 32, repeats=2)
    assert r["torch_s"] >= delay > r["stylejax_s"] > 0, r
    assert r["ratio"] == pytest.approx(r["stylejax_s"] / r["torch_s"]) and r["ratio"] < 1
    flop = bench.conv_flops(32, 32, bench.bench_config().layers)
    assert r["conv_gflop"] == pytest.approx(flop / 1e9)
    assert r["stylejax_gflops"] == pytest.approx(flop / r["stylejax_s"] / 1e9)
    assert r["torch_gflops"] == pytest.approx(flop / r["torch_s"] / 1e9)
    assert r["conv"] == resolve_conv("auto")  # the default execution's


def _trace_is_consistent(r, target):
    """The reported loss, iterations and reached are the trace's last epoch's, and the run
    stopped at the first epoch at or below the target, if any."""
    assert r["trace"] and (r["iterations"], r["loss"]) == tuple(r["trace"][-1])
    assert r["reached"] == (r["trace"][-1][1] <= target)
    assert all(loss > target for _, loss in r["trace"][:-1])


def test_time_to_loss_stops_at_the_target_or_the_budget(vgg):
    content, style = bench.bench_images(32)
    run = functools.partial(bench.time_to_loss, vgg, content, style, kind="lbfgs",
                            iterations=1)
    # A fresh L-BFGS state has no loss yet: one epoch runs whatever the budget.
    first = run(target=-np.inf, budget_s=0.0)
    _trace_is_consistent(first, -np.inf)
    assert first["iterations"] == 1 and np.isfinite(first["loss"])
    target = 0.99 * first["loss"]  # below the first epoch's loss; L-BFGS falls far below it
    reached = run(target=target, budget_s=60.0)
    _trace_is_consistent(reached, target)
    assert reached["reached"] and len(reached["trace"]) >= 2
    assert reached["trace"][0] == first["trace"][0]  # the same run, stopped later
    # The same target with no budget left after the first epoch: stopped there, not reached.
    cut = run(target=target, budget_s=0.0)
    _trace_is_consistent(cut, target)
    assert not cut["reached"] and cut["trace"] == first["trace"]
    # Seconds split into the start-up (its pieces) and the solve.
    for r in (first, reached, cut):
        assert r["seconds"] == pytest.approx(r["compile_s"] + r["solve_s"])
        assert sum(r["start_up_pieces_s"].values()) == pytest.approx(r["compile_s"])
    # The preconditioned row solves in other variables: another first step, named so.
    pre = run(target=-np.inf, budget_s=0.0, precondition="auto")
    assert pre["precondition"] == "auto" and "precondition auto" in pre["optimizer"]
    assert first["precondition"] == 0 and "precondition" not in first["optimizer"]
    assert np.isfinite(pre["loss"]) and pre["loss"] != first["loss"]


def test_time_to_loss_with_a_coarse_start_runs_both_sizes(vgg, monkeypatch):
    """The coarse-to-fine row: iterations at half size, then the full size from that image."""
    content, style = bench.bench_images(32)
    epochs, compiled_epoch = [], bench._compiled_epoch

    def counting(vgg, content, *args):
        state, epoch, seconds, pieces = compiled_epoch(vgg, content, *args)

        def counted(state):
            epochs.append(content.shape[:2])
            return epoch(state)

        return state, counted, seconds, pieces

    monkeypatch.setattr(bench, "_compiled_epoch", counting)
    kwargs = dict(target=-np.inf, kind="lbfgs", budget_s=0.0, iterations=1)
    coarse = bench.time_to_loss(vgg, content, style, coarse=2, **kwargs)
    # Two epochs of 1 at 16 px, then the one full-size epoch the budget allows.
    assert epochs == [(16, 16), (16, 16), (32, 32)]
    _trace_is_consistent(coarse, -np.inf)
    assert coarse["iterations"] == 1  # full-size iterations only
    # The start-up counts both sizes: its pieces add up to it.
    assert sum(coarse["start_up_pieces_s"].values()) == pytest.approx(coarse["compile_s"])
    # The full size starts from the coarse result, not from the content: another loss.
    epochs.clear()
    plain = bench.time_to_loss(vgg, content, style, **kwargs)
    assert epochs == [(32, 32)]
    assert np.isfinite(coarse["loss"]) and coarse["loss"] != plain["loss"]


def test_video_benchmark_reports_both_modes_and_the_flow(tmp_path):
    """bench_video.py at a toy size: a row per mode, each with a positive rate; the flow's
    seconds and the part waited for are consistent; frames per hour match s/frame."""
    import json
    import subprocess

    out = tmp_path / "video.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_video.py"), "--size",
                        "64", "--frames", "3", "--iterations", "4", "--passes", "2", "--json",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {row["mode"]: row for row in data["rows"]}
    assert set(rows) == {"flow alone", "sequential, flows given", "sequential, flow ahead",
                         "multipass"}
    for row in rows.values():
        assert row["steady_s_per_frame"] > 0 and 0 <= row["flow_waited_s"] <= row["flow_s"]
        assert abs(row["frames_per_hour"] * row["steady_s_per_frame"] - 3600) < 1e-6 * 3600
    assert rows["sequential, flow ahead"]["flow_s"] > 0  # it did compute the flows itself
    assert rows["sequential, flows given"]["flow_s"] == 0
    assert 0 < data["flow_share_serial"] < 1 and data["multipass_vs_sequential"] > 0

"""The memory plan (stylejax/plan.py): its model, its refusal, and its accuracy on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import stylejax
from conftest import REPO
from stylejax import plan
from stylejax.errors import StylejaxError
from stylejax.solvers import SolverConfig

CFG = stylejax.preset_config("johnson")


def test_components_follow_the_shapes():
    a = plan.predict(CFG, SolverConfig("lbfgs", history=100), 128, 128, platform="gpu")
    b = plan.predict(CFG, SolverConfig("lbfgs", history=100), 256, 256, platform="gpu")
    assert a["total"] == sum(v for k, v in a.items() if k != "total")
    assert b["activations"] / a["activations"] == pytest.approx(4, rel=0.02)
    assert b["params"] == a["params"] and b["runtime"] == a["runtime"]
    image = 256 * 256 * 3 * 4
    assert b["solver"] == (2 * 100 + plan.LINE_SEARCH_IMAGES) * image  # pixels: the default
    smooth = plan.predict(CFG, SolverConfig("lbfgs", precondition="auto"), 256, 256,
                          platform="gpu")
    assert smooth["solver"] - b["solver"] == plan.PRECONDITION_IMAGES * image
    matmul = plan.predict(CFG, SolverConfig("lbfgs", precondition="auto", dft="matmul"), 256,
                          256, platform="gpu")
    assert matmul["solver"] - smooth["solver"] == 2 * 8 * 2 * 256 ** 2  # the DFT matrices
    short = plan.predict(CFG, SolverConfig("lbfgs", history=5), 256, 256, platform="gpu")
    assert b["solver"] - short["solver"] == 2 * 95 * image
    cpu = plan.predict(CFG, SolverConfig("lbfgs", history=100), 256, 256, platform="cpu")
    assert cpu["solver"] == b["solver"]
    assert "winograd" not in b and cpu["winograd"] > 0  # conv "auto": Winograd on CPU only
    adam = plan.predict(CFG, SolverConfig("adam"), 256, 256, platform="gpu")
    assert adam["solver"] == plan.ADAM_IMAGES * image
    bf16 = plan.predict(CFG, SolverConfig("lbfgs"), 256, 256, platform="gpu",
                        execution=stylejax.Execution(dtype="bfloat16"))
    grads = 2 * 256 * 256 * 64 * 4  # the float32 gradient buffers do not shrink
    assert bf16["activations"] - grads == (b["activations"] - grads) / 2


def test_tiles_bound_the_device_memory():
    scfg = SolverConfig("lbfgs")
    t1 = plan.predict(CFG, scfg, 2048, 2048, tile=(512, 512), platform="cpu")
    t2 = plan.predict(CFG, scfg, 4096, 4096, tile=(512, 512), platform="cpu")
    whole = plan.predict(CFG, scfg, 2048, 2048, platform="cpu")
    assert t1["activations"] == t2["activations"] and t1["solver"] == t2["solver"]
    assert t2["host tiling buffers"] == 4 * t1["host tiling buffers"]
    assert t1["total"] < whole["total"] / 3  # the one-off style pass bounds it from below


def test_refuses_with_the_figures_and_what_to_change():
    scfg = SolverConfig("lbfgs", history=100)
    with pytest.raises(StylejaxError) as e:
        plan.check(CFG, scfg, 1024, 1024, free=2**30)
    msg = str(e.value)
    assert "1,024 MiB is free" in msg and "--tile" in msg and "--optimizer adam" in msg
    assert "--lbfgs-history" in msg and ". " not in msg and msg.endswith(".")
    table = plan.check(CFG, scfg, 64, 64, free=2**40)
    assert table["total"] < 2**40
    assert 0 < plan.free_memory() < 2**50


MEASURE = r"""
import json, sys
import jax, numpy as np
import stylejax
from stylejax import plan
from stylejax.cpu.hostmem import keep_step_heap
from stylejax.run import compiled_epoch
from stylejax.solvers import SolverConfig, init_state

def rss(field="VmRSS"):
    # VmHWM (the peak) restarts at exec; ru_maxrss would include the memory this process
    # inherited by fork from pytest (gigabytes late in a full test run).
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

size, weights, conv = int(sys.argv[1]), sys.argv[2], sys.argv[3]
keep_step_heap()  # as the command line runs
vgg = stylejax.load_vgg19(weights)
jax.block_until_ready(vgg.params)
base = rss()  # after imports and loading the weights (the params are already in here)
cfg, scfg = stylejax.preset_config("johnson"), SolverConfig("lbfgs", iterations=2, history=100)
ex = stylejax.Execution(conv)
rng = np.random.default_rng(0)
content, style = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
targets = stylejax.make_targets(vgg, content, style, cfg)
# As the loop runs it (compiled ahead, the compiler's freed heap released).
state = init_state(scfg, vgg, content[None], targets, cfg, ex)
jax.block_until_ready(compiled_epoch(vgg, targets, cfg, scfg, state, ex)(state))
peak = rss("VmHWM")
table = plan.predict(cfg, scfg, size, size, execution=ex)
print(json.dumps({"measured": peak - base, "predicted": table["total"] - table["params"]}))
"""


@pytest.mark.parametrize("size,conv", [(128, "direct"), (256, "direct"), (256, "winograd")])
def test_prediction_within_25_percent_of_measured_peak_rss(size, conv, weights_path):
    r = subprocess.run([sys.executable, "-c", MEASURE, str(size), str(weights_path), conv],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(size, conv, got)
    assert got["predicted"] == pytest.approx(got["measured"], rel=0.25), got

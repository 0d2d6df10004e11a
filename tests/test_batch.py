"""Many images and many devices: a batch equals one-by-one runs, 4 simulated devices (batch
or spatial sharding) equal 1, and the --content-dir command line.

Tolerances: a batched convolution sums in another order than a single one, so pair i of a
batch differs from its lone run by float32 rounding (~1e-7 relative after one step); L-BFGS
amplifies that slowly (measured 1.4e-5 absolute on [0, 1] pixels after 2 iterations, 1e-2
after 6 on these random weights), so the runs here are 2 iterations long.
"""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import stylejax
from conftest import on_simulated_devices, smooth_image
from stylejax import batch
from stylejax.cli.stylize import main as cli_main
from stylejax.cpu.hostmem import compile_released

CFG = stylejax.preset_config("johnson")
# 2 L-BFGS iterations, state carried over, in pixel space (the default).
RUN = dict(epochs=2, max_iter=1, history=10)
# The devices' criterion: 2 epochs of 3 iterations, with and without the preconditioner.
LONG = dict(epochs=2, max_iter=3, history=10)


@pytest.fixture(scope="module")
def pairs():
    """3 contents of one size (32x40) with 3 styles of different sizes."""
    contents = [smooth_image(32, 40, s) for s in (1, 3, 4)]
    styles = [smooth_image(48, 36, 2), smooth_image(40, 40, 5), smooth_image(36, 48, 6)]
    return contents, styles


@pytest.fixture(scope="module")
def batch_result(vgg, pairs):
    seen = []
    result = stylejax.stylize_batch(vgg, *pairs, CFG, **RUN,
                                    callback=lambda e, im, l: seen.append((e, im.shape, l)))
    return result, seen


def test_batch_of_three_equals_three_single_runs(vgg, pairs, batch_result):
    result, seen = batch_result
    assert result.images.shape == (3, 32, 40, 3) and result.losses.shape == (2, 3)
    assert [(e, shape) for e, shape, _ in seen] == [(1, (3, 32, 40, 3)), (2, (3, 32, 40, 3))]
    for i, (content, style) in enumerate(zip(*pairs)):
        alone = stylejax.stylize(vgg, content, style, CFG, **RUN)
        np.testing.assert_allclose(result.images[i], alone.image[0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(result.losses[:, i], alone.losses, rtol=1e-5)
        assert np.abs(result.images[i] - content).max() > 0.05  # it did optimize
    assert np.all(result.losses[1] < result.losses[0])


def test_finished_lanes_stay_frozen(vgg, pairs, batch_result):
    """The line searches of the pairs take different numbers of evaluations, yet each pair
    matches its lone run (previous test): a vmapped while_loop holds finished lanes."""
    import jax
    import jax.numpy as jnp

    contents, styles = pairs
    scfg = stylejax.SolverConfig("lbfgs", iterations=1, history=10)  # as RUN
    targets = jax.tree.map(lambda *a: jnp.stack(a), *[
        stylejax.make_targets(vgg, c, s, CFG) for c, s in zip(contents, styles)])
    # Compiled as stylize_batch compiles them (its compiler options, mesh=None).
    images = jnp.asarray(np.stack(contents)[:, None])
    state = compile_released(batch.init_batch_state, scfg, vgg, images, targets, CFG,
                             mesh=None)(vgg, images, targets)
    epoch = compile_released(batch.run_batch_epoch, state, vgg, targets, cfg=CFG, scfg=scfg,
                             mesh=None)
    for _ in range(2):
        state = epoch(state, vgg, targets)
    evaluations = np.asarray(state.inner.num_fun_eval)
    assert len(set(evaluations.tolist())) > 1, evaluations
    np.testing.assert_allclose(np.asarray(state.image)[:, 0], batch_result[0].images,
                               rtol=0, atol=1e-6)
    # The pairs share one copy of the VGG weights: no convolution became a grouped one (as
    # vmap makes of a convolution whose kernel was broadcast to every pair).
    hlo = batch.run_batch_epoch.lower(state, vgg, targets, cfg=CFG, scfg=scfg,
                                      mesh=None).compile().as_text()
    assert " convolution(" in hlo and "feature_group_count" not in hlo


def test_batch_argument_errors(vgg, pairs):
    contents, styles = pairs
    with pytest.raises(stylejax.StylejaxError, match="one size"):
        stylejax.stylize_batch(vgg, [contents[0], smooth_image(40, 40, 9)], styles[0], CFG,
                               **RUN)
    with pytest.raises(stylejax.StylejaxError, match="one style per content"):
        stylejax.stylize_batch(vgg, contents, styles[:2], CFG, **RUN)
    with pytest.raises(stylejax.StylejaxError, match="Unknown sharding"):
        stylejax.stylize_batch(vgg, contents, styles, CFG, shard="diagonal", **RUN)


# Runs with 4 simulated CPU devices (the flag must be set before JAX starts).
FOUR_DEVICES = r"""
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
import stylejax
from stylejax import batch, devices as dev
from conftest import smooth_image, xla_compiles

out = {"devices": len(jax.devices())}
vgg = stylejax.load_vgg19(os.environ["WEIGHTS"])
cfg = stylejax.preset_config("johnson")
pairs = np.load(os.environ["PAIRS"], allow_pickle=False)
contents, styles = [pairs[f"c{i}"] for i in range(3)], [pairs[f"s{i}"] for i in range(3)]

# Batch sharding: 3 pairs padded to 4 lanes, one per device.
compiles = xla_compiles("run_batch_epoch")
result = stylejax.stylize_batch(vgg, contents, styles, cfg, epochs=2, max_iter=1, history=10,
                                shard="batch")
np.save(os.environ["BATCH_OUT"], result.images)
out["epoch_compiles"] = xla_compiles("run_batch_epoch") - compiles  # once for both epochs
# The criterion's runs: 2 epochs x 3 iterations, with and without the preconditioner.
for pre in (0, "auto"):
    long = stylejax.stylize_batch(vgg, contents, styles, cfg, epochs=2, max_iter=3,
                                  history=10, shard="batch", precondition=pre)
    np.savez(os.environ["LONG_OUT"] + f"{pre}.npz", images=long.images, losses=long.losses)
# The same program by hand (3 pairs + a copy), to look at its placement and collectives.
mesh = dev.make_mesh("batch", 4)
scfg = stylejax.SolverConfig("lbfgs", iterations=1, history=10)
four = list(zip(contents, styles)) + [(contents[-1], styles[-1])]
targets = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]),
                       *[stylejax.make_targets(vgg, c, s, cfg) for c, s in four])
images = np.stack([c[None] for c, _ in four])
targets, images, shared = *dev.place((targets, images), mesh), dev.replicate(vgg, mesh)
state = batch.init_batch_state(scfg, shared, images, targets, cfg, mesh=mesh)
out["batch_shards"] = sorted(s.data.shape for s in state.image.addressable_shards)
hlo = batch.run_batch_epoch.lower(state, shared, targets, cfg=cfg, scfg=scfg,
                                  mesh=mesh).compile().as_text()
out["batch_gathers"] = hlo.count("all-gather")

# Spatial sharding of one 128 px image: loss and gradient of the solver's first evaluation.
content, style = smooth_image(128, 128, 11), smooth_image(64, 64, 12)
targets = jax.tree.map(lambda a: np.asarray(a)[None],
                       stylejax.make_targets(vgg, content, style, cfg))
# In pixel space: the preconditioner's DFT (matrix products when rows are split) gathers
# each image to every device, which would hide a gather of activations here.
scfg = stylejax.SolverConfig("lbfgs", iterations=1, history=2)
# (Under a spatial mesh conv "auto" runs direct: the unsharded reference says so explicitly.)
ref = batch.init_batch_state(scfg, vgg, jnp.asarray(content[None, None]),
                             jax.tree.map(jnp.asarray, targets), cfg,
                             stylejax.Execution("direct"))
mesh = dev.make_mesh("spatial", 1)
args = (scfg, dev.replicate(vgg, mesh), *dev.place((content[None, None], targets), mesh), cfg,
        None)
hlo = batch.init_batch_state.lower(*args, mesh=mesh).compile().as_text()
sharded = batch.init_batch_state(*args, mesh=mesh)
np.savez(os.environ["SPATIAL_OUT"], ref_value=ref.value, ref_grad=ref.inner.grad,
         value=sharded.value, grad=sharded.inner.grad)
out["grad_shards"] = sorted(s.data.shape for s in sharded.inner.grad.addressable_shards)
out["halo_exchange"] = "collective-permute" in hlo
out["gathers"] = hlo.count("all-gather")
print(json.dumps(out))
"""


def test_four_devices_equal_one(tmp_path, weights_path, vgg, pairs, batch_result):
    """Results do not depend on the device count: a batch over 4 simulated devices equals
    one-by-one runs on one, with and without the preconditioner (each device runs its own
    pairs; before, several devices silently turned the preconditioner off: final losses 15%
    apart). Spatial sharding splits each image and still computes the same gradient."""
    contents, styles = pairs
    np.savez(tmp_path / "pairs.npz", **{f"c{i}": c for i, c in enumerate(contents)},
             **{f"s{i}": s for i, s in enumerate(styles)})
    info = on_simulated_devices(FOUR_DEVICES, 4, WEIGHTS=weights_path,
                                PAIRS=tmp_path / "pairs.npz", BATCH_OUT=tmp_path / "batch.npy",
                                SPATIAL_OUT=tmp_path / "sp.npz", LONG_OUT=tmp_path / "long")
    assert info["devices"] == 4
    assert info["batch_shards"] == [[1, 1, 32, 40, 3]] * 4  # one lane on each device
    assert info["epoch_compiles"] == 1
    assert info["batch_gathers"] == 0  # each device keeps its own images' activations
    np.testing.assert_allclose(np.load(tmp_path / "batch.npy"), batch_result[0].images,
                               rtol=0, atol=1e-4)
    # L-BFGS's line search may amplify float32 rounding over 6 iterations (bitwise equality
    # is not required): each pair's loss within 1e-3 and its pixels within 1e-3 on average
    # of its lone run. The preconditioner switched off would miss by far (15%).
    for pre in (0, "auto"):
        long = np.load(tmp_path / f"long{pre}.npz")
        for i, (content, style) in enumerate(zip(contents, styles)):
            alone = stylejax.stylize(vgg, content, style, CFG, precondition=pre, **LONG)
            np.testing.assert_allclose(long["losses"][:, i], alone.losses, rtol=1e-3)
            assert np.abs(long["images"][i] - alone.image[0]).mean() <= 1e-3, (pre, i)
    # Spatial: each device holds 32 of the 128 rows; XLA exchanged halos between them.
    assert info["grad_shards"] == [[1, 1, 32, 128, 3]] * 4
    # Rows travel between neighbours only; a gather of whole activations would defeat the
    # point (each device holding the full image).
    assert info["halo_exchange"] and info["gathers"] == 0
    sp = np.load(tmp_path / "sp.npz")
    np.testing.assert_allclose(sp["value"], sp["ref_value"], rtol=1e-5)
    scale = np.abs(sp["ref_grad"]).max()
    np.testing.assert_allclose(sp["grad"], sp["ref_grad"], rtol=1e-4, atol=1e-5 * scale)


def _save(path, image):
    Image.fromarray((image * 255).astype(np.uint8)).save(path)


def test_folder_run_writes_one_result_per_image(tmp_path, weights_path, capsys):
    src, out = tmp_path / "frames", tmp_path / "out"
    src.mkdir()
    _save(src / "a.jpg", smooth_image(48, 64, 5))
    _save(src / "b.png", smooth_image(48, 64, 7))
    _save(src / "c.png", smooth_image(64, 48, 8))  # another size: its own batch
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    _save(tmp_path / "style.png", smooth_image(40, 40, 6))
    # Two shallow layers keep the three compilations (two sizes, one lone run) quick.
    flags = ["--weights", weights_path, "--size", 64, "--epochs", 2, "--max-iter", 2,
             "--lbfgs-history", 10, "--batch-size", 2, "--content-layers", "relu2_1",
             "--style-layers", "relu1_1,relu2_1"]
    code = cli_main(list(map(str, ["--content-dir", src, "--style", tmp_path / "style.png",
                                      "--out", out, *flags])))
    err = capsys.readouterr().err
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "losses.csv",
                                                     "snapshots"]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        f"{n}_{e:04d}.png" for n in "abc" for e in (1, 2)]
    assert np.asarray(Image.open(out / "c.png")).shape == (64, 48, 3)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "broken.png" in warnings[0] and "notes.txt" in warnings[1]
    # The folder's result for a.jpg is what a one-image run makes of it.
    code = cli_main(list(map(str, [src / "a.jpg", tmp_path / "style.png",
                                      "--out", tmp_path / "one", *flags])))
    assert code == 0, capsys.readouterr().err
    alone = np.asarray(Image.open(tmp_path / "one" / "final.png"), np.int16)
    assert np.abs(np.asarray(Image.open(out / "a.png"), np.int16) - alone).max() <= 1
    # --resume skips what is done; a folder with no image is one sentence.
    (out / "c.png").unlink()
    assert cli_main(list(map(str, ["--content-dir", src, "--style", tmp_path / "style.png",
                                      "--out", out, "--resume", *flags]))) == 0
    assert "1 image(s)" in capsys.readouterr().out and (out / "c.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    assert cli_main(list(map(str, ["--content-dir", empty, "--style",
                                      tmp_path / "style.png", "--out", out, *flags]))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "holds no image" in err[-1]


def test_throughput_reports_images_per_hour(vgg, monkeypatch):
    """Images per hour from the second epoch's time (the first compiles), by hand: 2 pairs,
    1000 iterations an image, 5 iterations in 2.0 s -> 0.4 s an iteration -> 18 images/h."""
    calls = []

    def fake(vgg, contents, styles, cfg, **kw):
        calls.append((len(contents), kw["epochs"], kw["max_iter"], kw["shard"]))
        return batch.BatchResult(images=np.zeros((2, 32, 32, 3)), seconds=[9.0, 2.0])

    monkeypatch.setattr(batch, "stylize_batch", fake)
    t = batch.throughput(vgg, size=32, batch=2, iterations=5, per_image=1000)
    assert calls == [(2, 2, 5, "auto")]
    assert t["seconds_per_iteration"] == pytest.approx(0.4)
    assert t["images_per_hour"] == pytest.approx(18.0)
    assert t["compile_s"] == pytest.approx(7.0)

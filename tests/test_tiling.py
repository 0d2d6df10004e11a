"""Tiling (stylejax/tiling.py): the grid, the blend, seams, and equality with the untiled run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import stylejax
from conftest import smooth_image
from stylejax.tiling import axis_starts, feather, stylize_tiled, tile_grid
from test_driver import run_cli


@pytest.mark.parametrize("length,tile,overlap", [(96, 48, 16), (100, 48, 12), (2048, 512, 128)])
def test_axis_starts_cover_every_pixel_with_whole_tiles(length, tile, overlap):
    for offset in range(0, tile - overlap, 5):
        starts = axis_starts(length, tile, overlap, offset)
        assert starts[0] == 0 and starts[-1] == length - tile
        covered = np.zeros(length, int)
        for s in starts:
            assert 0 <= s <= length - tile  # whole tiles only: one shape, one compile
            covered[s:s + tile] += 1
        assert covered.min() >= 1
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert axis_starts(40, 64, 16, 3) == [0]


def test_grid_moves_each_epoch_and_is_reproducible():
    grids = [tile_grid(96, 96, (48, 48), 16, rng) for rng in [np.random.default_rng(7)] * 4]
    again = [tile_grid(96, 96, (48, 48), 16, rng) for rng in [np.random.default_rng(7)] * 4]
    assert grids == again
    assert len({tuple(g) for g in grids}) > 1  # the seams move
    assert tile_grid(96, 96, (48, 48), 16) == tile_grid(96, 96, (48, 48), 16)  # no rng: fixed


def test_feather_ramps_only_towards_neighbours():
    w = feather(0, 48, 96, 16)
    assert w[0] == 1 and w[-1] == pytest.approx(1 / 17) and np.all(w > 0)
    w = feather(30, 48, 96, 16)
    assert w[0] == pytest.approx(1 / 17) and w[24] == 1 and w[-1] == pytest.approx(1 / 17)
    assert np.all(np.diff(w[:16]) > 0)
    assert np.all(feather(48, 48, 96, 16)[-16:] == 1)  # the image's edge: no ramp


def test_tile_as_large_as_the_image_equals_the_untiled_run(vgg, content_image, style_image):
    cfg = stylejax.preset_config("johnson")
    kw = dict(epochs=2, max_iter=2, init="noise", seed=1)
    plain = stylejax.stylize(vgg, content_image, style_image, cfg, **kw)
    tiled = stylize_tiled(vgg, content_image, style_image, cfg, tile=64, **kw)
    assert tiled.tile == content_image.shape[:2]
    assert np.array_equal(tiled.image, plain.image)
    assert tiled.losses == plain.losses


def _seam_profile(image, grid, tile, axis):
    """Mean |difference| of neighbouring pixels along ``axis``: (across the last epoch's tile
    borders, everywhere else)."""
    d = np.abs(np.diff(image, axis=axis)).mean(axis=(1 - axis, 2))  # per gap between px
    n = image.shape[axis]
    borders = set()
    for corner in grid:
        s = corner[axis]
        if s > 0:
            borders.add(s - 1)  # the gap between px s-1 and s
        if s + tile < n:
            borders.add(s + tile - 1)
    inside = [i for i in range(n - 1) if i not in borders]
    return d[sorted(borders)].mean(), d[inside].mean()


@pytest.fixture(scope="module")
def seam_runs(vgg):
    cfg = stylejax.preset_config("johnson")
    content, style = smooth_image(96, 96, 11), smooth_image(48, 48, 12)
    kw = dict(tile=48, overlap=16, epochs=3, max_iter=4, seed=3)
    return (stylize_tiled(vgg, content, style, cfg, **kw),
            stylize_tiled(vgg, content, style, cfg, feathered=False, **kw), content)


def test_tiled_run_has_no_visible_seams(seam_runs):
    result, _, content = seam_runs
    image = result.image[0]
    assert not np.allclose(image, content, atol=0.02)  # it did stylize
    assert len(result.grids[-1]) > 1 and len({tuple(g) for g in result.grids}) > 1
    for axis in (0, 1):
        across, inside = _seam_profile(image, result.grids[-1], 48, axis)
        assert across <= inside, (axis, across, inside)


def test_hard_pasted_tiles_do_show_seams(seam_runs):
    """The seam measure can fail: without feathering the borders stand out."""
    result, hard, _ = seam_runs
    ratios = [np.divide(*_seam_profile(hard.image[0], hard.grids[-1], 48, axis))
              for axis in (0, 1)]
    soft = [np.divide(*_seam_profile(result.image[0], result.grids[-1], 48, axis))
            for axis in (0, 1)]
    assert max(ratios) > 1.0 and max(ratios) > max(soft)


def test_cli_tile_runs_and_plan_only_prints(tmp_path, weights_path):
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray((smooth_image(96, 96, 11) * 255).astype(np.uint8)).save(content)
    Image.fromarray((smooth_image(48, 48, 12) * 255).astype(np.uint8)).save(style)
    out = tmp_path / "run"
    r = run_cli("stylize.py", content, style, "--weights", weights_path, "--size", 96,
                "--epochs", 2, "--max-iter", 2, "--tile", 48, "--tile-overlap", 16,
                "--style-scale", 0.5, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out / "final.png")).shape == (96, 96, 3)
    assert (out / "snapshot_0002.png").is_file() and (out / "losses.json").is_file()
    plan_out = tmp_path / "plan"
    r = run_cli("stylize.py", content, style, "--weights", weights_path, "--size", 96,
                "--tile", 48, "--plan", "--out", plan_out)
    assert r.returncode == 0, r.stderr
    assert "predicted peak" in r.stdout and "free on the device" in r.stdout
    assert "tiles of 48x48" in r.stdout and not plan_out.exists()


def test_cli_refuses_up_front_when_it_will_not_fit(tmp_path, weights_path):
    content = tmp_path / "c.png"
    Image.fromarray((smooth_image(48, 64, 5) * 255).astype(np.uint8)).save(content)
    out = tmp_path / "run"
    r = run_cli("stylize.py", content, content, "--weights", weights_path, "--size", 4096,
                "--lbfgs-history", 1000, "--out", out)
    assert r.returncode == 2
    assert r.stderr.startswith("error: This run needs about") and "--tile" in r.stderr
    assert "--optimizer adam" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()

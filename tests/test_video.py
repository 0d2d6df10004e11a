"""Video (stylejax.video, stylejax.flow, scripts/stylize_video.py) on a synthetic clip whose
motion is known: a smooth random texture seen through a 64 px window that moves by SHIFT px
a frame, so frame k(p) = frame k−1(p + SHIFT) exactly (the backward flow is SHIFT, the
forward flow −SHIFT)."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

import stylejax
from stylejax import colour, temporal
from conftest import REPO, xla_compiles

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")
from stylejax import flow as optflow  # noqa: E402  (needs cv2)

SIZE, FRAMES, SHIFT = 64, 4, (2, 1)  # px; SHIFT = (dx, dy) per frame


def make_clip(n=FRAMES, size=SIZE, shift=SHIFT, seed=0) -> np.ndarray:
    """[n, size, size, 3] float32: a blurred-noise texture (features ~4 px across, which the
    flow can follow) seen through a window moving by ``shift`` px a frame."""
    rng = np.random.default_rng(seed)
    m = size + n * max(shift) + 8
    big = gaussian_filter(rng.uniform(0, 1, (m, m, 3)), (1.5, 1.5, 0))
    big = (big - big.min()) / (big.max() - big.min())
    dx, dy = shift
    return np.stack([big[4 + k * dy:4 + k * dy + size, 4 + k * dx:4 + k * dx + size]
                     for k in range(n)]).astype(np.float32)


def true_flows(n=FRAMES, size=SIZE, shift=SHIFT):
    back = np.broadcast_to(np.asarray(shift, np.float32), (n - 1, size, size, 2))
    return -back, back


def numpy_warp(image, flow):
    """The independent reference: scipy's linear ``map_coordinates`` at p + flow(p), edges
    repeated (``mode="nearest"``), in float64."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + flow[..., 1], xx + flow[..., 0]]
    return np.stack([map_coordinates(image[..., c].astype(np.float64), coords, order=1,
                                     mode="nearest") for c in range(image.shape[-1])], -1)


@pytest.fixture(scope="module")
def clip():
    return make_clip()


def test_warp_matches_scipy_bilinear_sampling():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (9, 11, 3)).astype(np.float32)
    flow = rng.uniform(-4, 4, (9, 11, 2)).astype(np.float32)  # many samples leave the image
    got = np.asarray(temporal.warp(image, flow))
    # float32 bilinear weights against float64: a few ulps of values in [0, 1].
    np.testing.assert_allclose(got, numpy_warp(image, flow), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(temporal.warp(image[None], flow))[0], got, atol=0)
    inside = (np.mgrid[0:9, 0:11][1] + flow[..., 0] >= 0) & (
        np.mgrid[0:9, 0:11][1] + flow[..., 0] <= 10) & (
        np.mgrid[0:9, 0:11][0] + flow[..., 1] >= 0) & (np.mgrid[0:9, 0:11][0] + flow[..., 1] <= 8)
    np.testing.assert_array_equal(np.asarray(temporal.valid_mask(flow)), inside)


def test_temporal_loss_value_and_gradients_match_numpy():
    """(1/D) Σ c (x − warp(x_prev))², D = H·W·3; d/dx = 2c(x − ω)/D exactly; d/dx_prev by
    central differences of the float64 numpy reference."""
    rng = np.random.default_rng(2)
    h, w = 7, 8
    x = rng.uniform(0, 1, (1, h, w, 3)).astype(np.float32)
    prev = rng.uniform(0, 1, (1, h, w, 3)).astype(np.float32)
    flow = rng.uniform(-1.5, 1.5, (h, w, 2)).astype(np.float32)
    c = (rng.uniform(size=(h, w)) > 0.3).astype(np.float32)

    def reference(x, prev):
        d = x[0].astype(np.float64) - numpy_warp(prev[0], flow)
        return np.sum(c[..., None] * d * d) / (h * w * 3)

    value, (gx, gp) = jax.value_and_grad(temporal.temporal_loss, argnums=(0, 1))(x, prev, flow, c)
    np.testing.assert_allclose(float(value), reference(x, prev), rtol=1e-5)
    omega = numpy_warp(prev[0], flow)
    np.testing.assert_allclose(np.asarray(gx)[0], 2 * c[..., None] * (x[0] - omega) / (h * w * 3),
                               rtol=1e-5, atol=1e-8)
    eps = 1e-3
    for idx in [(0, 0, 0, 0), (0, 3, 4, 1), (0, 6, 7, 2), (0, 2, 5, 0)]:
        up, down = prev.astype(np.float64).copy(), prev.astype(np.float64).copy()
        up[idx] += eps
        down[idx] -= eps
        fd = (reference(x, up) - reference(x, down)) / (2 * eps)  # exact: linear in prev
        np.testing.assert_allclose(float(gp[idx]), fd, rtol=1e-4, atol=1e-7)


def test_loss_gains_the_temporal_term_only_when_the_targets_carry_it(vgg, clip):
    cfg = stylejax.LossConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                              temporal_weight=7.0)
    targets = stylejax.make_targets(vgg, clip[0], clip[1], cfg)
    x = jnp.asarray(clip[2])[None]
    plain = stylejax.loss_terms(vgg, x, targets, cfg)
    assert set(plain) == {"content", "style", "tv"}
    warped, c = temporal.warp(clip[1][None], true_flows()[1][0]), np.ones((1, SIZE, SIZE, 1))
    terms = stylejax.loss_terms(vgg, x, {**targets, "temporal": {"warped": warped,
                                                                 "weights": c}}, cfg)
    expected = 7.0 * np.mean((clip[2].astype(np.float64) - np.asarray(warped)[0]) ** 2)
    np.testing.assert_allclose(float(terms["temporal"]), expected, rtol=1e-5)
    for k in plain:
        assert float(terms[k]) == float(plain[k])


def numpy_consistency(forward, backward):
    """Ruder et al.'s rule written out in numpy (float64), as the docstring states it."""
    fwd = numpy_warp(forward, backward)
    sq = lambda v: np.sum(v * v, -1)  # noqa: E731
    bad = sq(fwd + backward) > 0.01 * (sq(fwd) + sq(backward)) + 0.5
    grads = np.gradient(backward[..., 0]) + np.gradient(backward[..., 1])
    bad |= sum(g * g for g in grads) > 0.01 * sq(backward) + 0.002
    h, w = backward.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    xs, ys = xx + backward[..., 0], yy + backward[..., 1]
    bad |= (xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1)
    return np.where(bad, 0.0, 1.0)


def test_consistency_weights_match_the_rule():
    """A square moving right by 3 px over a still background: the pixels it uncovers fail the
    forward-backward check, its edges are motion boundaries; elsewhere c = 1."""
    h = w = 24
    forward = np.zeros((h, w, 2), np.float32)
    backward = np.zeros((h, w, 2), np.float32)
    forward[8:16, 6:14, 0] = 3.0   # frame k-1's square moves into frame k
    backward[8:16, 9:17, 0] = -3.0  # frame k's square came from 3 px to the left
    c = np.asarray(temporal.consistency_weights(forward, backward))
    np.testing.assert_array_equal(c, numpy_consistency(forward, backward))
    assert c[2, 2] == 1 and c[12, 12] == 1  # background, square's inside
    assert c[12, 7] == 0  # uncovered background: the forward flow there points elsewhere
    assert c[12, 9] == 0 and c[12, 16] == 0  # motion boundaries


@pytest.mark.parametrize("method", optflow.METHODS)
def test_flow_recovers_the_translation(clip, method):
    forward, backward = optflow.video_flows(clip, method)
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the border the window left
    assert np.abs(backward[inner] - np.asarray(SHIFT)).max() < 0.5
    assert np.abs(forward[inner] + np.asarray(SHIFT)).max() < 0.5
    c = np.asarray(temporal.consistency_weights(forward[0], backward[0]))
    assert c[8:-8, 8:-8].mean() > 0.95  # a rigid translation is consistent


def test_warp_by_the_true_flow_gives_the_next_frame(clip):
    forward, backward = true_flows()
    for k in range(1, FRAMES):
        warped = np.asarray(temporal.warp(clip[k - 1], backward[k - 1]))
        valid = np.asarray(temporal.valid_mask(backward[k - 1]))
        assert valid.mean() > 0.9
        np.testing.assert_allclose(warped[valid], clip[k][valid], atol=1e-6)  # integer shift
        c = np.asarray(temporal.consistency_weights(forward[k - 1], backward[k - 1]))
        np.testing.assert_array_equal(c.astype(bool), valid)


def warped_difference(frames, flows):
    """Mean over frames k >= 2 of Σ c (x_k − warp(x_{k−1}))² / (3 Σ c)."""
    out = []
    for k in range(1, len(frames)):
        c = np.asarray(temporal.consistency_weights(flows[0][k - 1], flows[1][k - 1]))
        w = np.asarray(temporal.warp(frames[k - 1], flows[1][k - 1]))
        out.append(np.sum(c[..., None] * (frames[k] - w) ** 2) / (3 * c.sum()))
    return float(np.mean(out))


def test_temporal_term_makes_the_stylized_frames_consistent(vgg, clip):
    """With the temporal term the stylized frames, warped by the flow, differ from the next
    ones far less than without it (measured ratio 0.019 at weight 1e7 and 6 iterations;
    asserted < 0.2).
    The solver epoch compiles once per video, and not at all for a second video of the same
    shapes and settings."""
    style = make_clip(1, 48, seed=5)[0]
    cfg = stylejax.preset_config("johnson")
    flows = true_flows()
    run = lambda tw: stylejax.stylize_video(vgg, clip, style, cfg, epochs=1, max_iter=6,  # noqa
                                            flow=flows, temporal_weight=tw)
    compiles = xla_compiles("run_epoch")
    free = run(0.0)
    assert xla_compiles("run_epoch") - compiles == 1  # 4 frames, one compile
    held = run(1e7)
    compiles = xla_compiles("run_epoch")
    again = run(1e7)
    assert xla_compiles("run_epoch") - compiles == 0
    np.testing.assert_array_equal(again.frames, held.frames)
    assert held.frames.shape == clip.shape and len(held.losses) == FRAMES
    assert held.losses[0] == free.losses[0]  # frame 1 is a still image either way
    ratio = warped_difference(held.frames, flows) / warped_difference(free.frames, flows)
    assert ratio < 0.2, ratio
    assert np.abs(held.frames - clip).mean() > 0.01  # and they are stylized, not the input


def test_stylize_video_command_writes_frames_log_and_video(tmp_path, weights_path, clip):
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(clip):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(folder / f"f{k:02d}.png")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8) + 128).save(tmp_path / "style.png")
    args = [sys.executable, str(REPO / "scripts" / "stylize_video.py"), str(folder),
            str(tmp_path / "style.png"), "--weights", str(weights_path), "--size", "64",
            "--epochs", "1", "--max-iter", "2", "--content-layers", "relu2_1",
            "--style-layers", "relu1_1,relu2_1", "--fps", "12"]
    r = subprocess.run(args + ["--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"{k:05d}.png" for k in range(1, FRAMES + 1)]
    assert [int(row.split(",")[0]) for row in
            (out / "losses.csv").read_text().splitlines()[1:]] == [1, 2, 3, 4]
    assert len(list((out / "flow").glob("*.npz"))) == 2 * (FRAMES - 1)
    with av.open(str(out / "in.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (SIZE, SIZE, 12)
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == FRAMES
    # A frame of another size is refused, naming it, before anything is written.
    Image.fromarray(np.zeros((60, 64, 3), np.uint8)).save(folder / "f02.png")
    r = subprocess.run(args + ["--out", str(tmp_path / "bad")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "f02.png" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_first_frame_may_get_more_epochs_and_long_term_references(vgg, clip):
    """``first_epochs`` gives frame 1 (which starts from scratch) its own epochs, the paper's
    2:1; with long-term offsets 1, 2 each later frame still runs one compiled epoch."""
    style = make_clip(1, 48, seed=5)[0]
    cfg = stylejax.LossConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    forward, backward = true_flows()
    flows = {1: (forward, backward),  # frames 2 apart moved twice as far
             2: (2 * forward[:FRAMES - 2], 2 * backward[:FRAMES - 2])}
    compiles = xla_compiles("run_epoch")
    result = stylejax.stylize_video(vgg, clip, style, cfg, epochs=1, first_epochs=2,
                                    max_iter=2, flow=flows, long_term=(1, 2),
                                    temporal_weight=1e6)
    assert xla_compiles("run_epoch") - compiles == 1
    assert [len(e) for e in result.epoch_losses] == [2, 1, 1, 1]
    # Frame 2 has one reference (frame 1), frames 3-4 two; a pixel is held once at most.
    assert result.weights[0] == 0 and 0.8 < result.weights[1] <= 1 and \
        0.8 < result.weights[3] <= 1


def test_colours_preserved_over_the_clip(vgg, clip):
    """--preserve-colors for video: "luminance" stylizes each frame's luminance and gives it
    back its own chroma (I, Q of the YIQ space) wherever Y was not clamped; "histogram"
    moves the style's colour statistics onto the whole clip's before stylizing."""
    style = make_clip(1, 48, seed=5)[0][..., ::-1]  # other colours than the clip's
    cfg = stylejax.preset_config("johnson")
    run = lambda mode: stylejax.stylize_video(  # noqa: E731
        vgg, clip, style, cfg, epochs=1, max_iter=4, flow=true_flows(),
        temporal_weight=1e7, preserve_colors=mode)
    kept = run("luminance").frames
    chroma = lambda x: np.asarray(colour.rgb_to_yiq(x))[..., 1:]  # noqa: E731
    assert np.mean(np.abs(chroma(kept) - chroma(clip)) < 1e-3) > 0.95
    assert np.abs(kept - clip).mean() > 0.005  # the luminance did change
    matched = stylejax.video.colour_clip("histogram", clip, [style])[1][0]
    pixels = matched.reshape(-1, 3)
    np.testing.assert_allclose(pixels.mean(0), clip.reshape(-1, 3).mean(0), atol=1e-4)
    np.testing.assert_allclose(np.cov(pixels.T), np.cov(clip.reshape(-1, 3).T), atol=1e-4)
    assert run("histogram").frames.shape == clip.shape

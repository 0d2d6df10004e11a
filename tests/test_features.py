"""Beyond the 2016 paper: colour preservation, several styles, style scale, coarse-to-fine,
spatial masks and the normalised VGG-19 (Gatys et al. 2017 and the 2016 paper's network).

Colour maths is checked against numpy written out here from the published coefficients;
masked Grams against numpy sums; the normalised network against its defining properties.
To keep XLA compilations few, every VGG test uses the same shallow loss (relu1_1, relu2_1)
and a handful of image sizes; command-line runs go through `cli.stylize.main` in-process, so
they share compiled programs.
"""

from __future__ import annotations

import dataclasses
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tqdm
from flax import serialization
from PIL import Image

import stylejax
from conftest import smooth_image, xla_compiles
from fixtures import write_keras_h5
from stylejax import colour, images, run
from stylejax.cli import convert, inputs, options
from stylejax.cli import stylize as cli_stylize
from stylejax.cli.outputs import CHECKPOINT
from stylejax.losses import LossConfig, gram, layer_masks, masked_gram
from stylejax.presets import network_warning
from stylejax.vgg import LAYERS, extract_features

SHALLOW = LossConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                     content_weight=5.0, style_weight=100.0, tv_weight=1.0)
SHALLOW_FLAGS = ("--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1")
# Published YIQ coefficients (FCC NTSC), typed in again so the test does not reuse ours.
YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                [0.211456, -0.522591, 0.311135]])
# A uint8 round trip moves each RGB channel by <= 0.5/255, so I or Q by at most the row's
# absolute sum times that.
CHROMA_ATOL = np.abs(YIQ[1:]).sum(1).max() * 0.5 / 255 + 1e-6


def to_u8(a):
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def iq(rgb):
    return np.asarray(rgb, np.float64) @ YIQ[1:].T


@pytest.fixture(scope="module")
def content():
    return smooth_image(32, 64, 21)


@pytest.fixture(scope="module")
def styles():
    return smooth_image(40, 40, 22), smooth_image(40, 40, 23)[::-1].copy()


# ---------------------------------------------------------------- colour (numpy by hand)


def test_yiq_matches_published_coefficients_and_inverts():
    rgb = np.random.default_rng(0).uniform(0, 1, (5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(colour.rgb_to_yiq(rgb), rgb @ YIQ.T, atol=1e-6)
    np.testing.assert_allclose(colour.yiq_to_rgb(colour.rgb_to_yiq(rgb)), rgb, atol=1e-5)
    grey = colour.luminance_image(rgb)
    np.testing.assert_allclose(grey[..., 0], rgb @ YIQ[0], atol=1e-6)
    np.testing.assert_allclose(iq(grey), 0.0, atol=1e-6)  # grey has no chroma


def test_restore_chroma_keeps_the_content_chroma_to_uint8_rounding():
    rng = np.random.default_rng(1)
    content = rng.integers(0, 256, (24, 24, 3)).astype(np.float32) / 255
    styled = rng.uniform(-0.2, 1.2, (24, 24, 3)).astype(np.float32)  # far too bright/dark too
    out = np.asarray(colour.restore_chroma(styled, content))
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(iq(out), iq(content), atol=1e-5)
    np.testing.assert_allclose(iq(to_u8(out) / 255.0), iq(content), atol=CHROMA_ATOL)
    # Where the content's colour allows it, the luminance is the styled image's.
    y_out, y_styled = out @ YIQ[0], styled @ YIQ[0]
    inside = np.abs(y_out - y_styled) < 1e-5
    assert inside.mean() > 0.3
    assert np.abs(iq(styled) - iq(content)).max() > 0.1  # the styled chroma really differed


def test_match_color_moves_mean_and_covariance_onto_the_content():
    rng = np.random.default_rng(2)
    content = smooth_image(30, 20, 3)
    style = (rng.uniform(0, 1, (25, 35, 3)) * [0.3, 1.0, 0.6]).astype(np.float32)
    out = np.asarray(colour.match_color(style, content), np.float64).reshape(-1, 3)
    c = content.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.mean(0), c.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(out.T, bias=True), np.cov(c.T, bias=True), atol=2e-5)
    assert np.abs(np.cov(style.reshape(-1, 3).T) - np.cov(c.T)).max() > 1e-2
    # A grey style has a singular covariance: still finite, still the content's mean.
    grey = np.repeat(style[..., :1], 3, axis=2)
    out = np.asarray(colour.match_color(grey, content)).reshape(-1, 3)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.mean(0), c.mean(0), atol=1e-4)


def test_match_luminance_matches_mean_and_spread():
    content, style = smooth_image(20, 30, 4), smooth_image(26, 26, 5) * 0.5
    out = np.asarray(colour.match_luminance(style, content))
    yc, yo = content @ YIQ[0], out[..., 0]
    np.testing.assert_allclose([yo.mean(), yo.std()], [yc.mean(), yc.std()], rtol=1e-4)
    np.testing.assert_allclose(out[..., 0], out[..., 2])  # grey


# ---------------------------------------------------------------- masks


def test_masked_gram_by_hand_and_all_ones_is_gram():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    masks = rng.uniform(0, 1, (2, 4, 5)).astype(np.float32)
    for norm, post in (("gatys", 1.0), ("johnson", 1 / 3), ("seed", 20.0)):
        g = np.asarray(masked_gram(f, masks, norm))
        assert g.shape == (2, 2, 3, 3)
        for n in range(2):
            for r in range(2):
                w = masks[r].reshape(-1) ** 2
                m = f[n].reshape(-1, 3)
                want = (m * w[:, None]).T @ m / w.sum() * post
                np.testing.assert_allclose(g[n, r], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(masked_gram(f, np.ones((1, 4, 5)), norm)[:, 0],
                                   gram(f, norm), rtol=1e-5)


def test_layer_masks_follow_the_features_through_pooling(vgg):
    mask = np.random.default_rng(7).uniform(0, 1, (2, 37, 50)).astype(np.float32)
    names = ("relu1_1", "pool1", "relu2_1", "relu3_1", "pool3")
    out = layer_masks(mask, names)
    feats = extract_features(vgg, np.zeros((1, 37, 50, 3), np.float32), names)
    for name in names:
        assert out[name].shape[1:] == feats[name].shape[1:3], name
    by_hand = mask[:, :36, :50].reshape(2, 18, 2, 25, 2).mean((2, 4))
    np.testing.assert_allclose(out["relu2_1"], by_hand, rtol=1e-6)
    np.testing.assert_allclose(out["relu1_1"], mask)


def test_label_masks_split_grey_levels():
    labels = np.array([[0.0, 0.1, 0.45, 0.55, 0.9, 1.0]], np.float32)
    m = images.label_masks(labels, 3)
    np.testing.assert_array_equal(m.argmax(0), [[0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(m.sum(0), 1)
    np.testing.assert_array_equal(images.label_masks(labels, 1)[0], labels)


def test_full_mask_for_style_one_equals_the_unmasked_loss(vgg, content, styles):
    ones = np.ones(content.shape[:2], np.float32)
    plain = stylejax.make_targets(vgg, content, styles[0], SHALLOW)
    masked = stylejax.make_targets(vgg, content, list(styles), SHALLOW, [2, 5],
                                   content_masks=np.stack([ones, 0 * ones]),
                                   style_masks=[np.ones(styles[0].shape[:2]), None])
    x = jnp.asarray(smooth_image(32, 64, 24)[None])
    vg = jax.value_and_grad(stylejax.loss_fn, argnums=1)
    (a, ga), (b, gb) = vg(vgg, x, plain, SHALLOW), vg(vgg, x, masked, SHALLOW)
    np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
    np.testing.assert_allclose(gb, ga, rtol=1e-4, atol=1e-6 * np.abs(ga).max())
    other = stylejax.make_targets(vgg, content, styles[1], SHALLOW)
    assert abs(float(stylejax.loss_fn(vgg, x, other, SHALLOW)) - float(a)) > 1e-3 * float(a)


def test_gradients_vanish_outside_the_region_of_weighted_styles(vgg, content, styles):
    cfg = LossConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                     content_weight=0.0, style_weight=100.0, tv_weight=0.0)
    left = np.zeros(content.shape[:2], np.float32)
    left[:, :32] = 1
    x = jnp.asarray(smooth_image(32, 64, 25)[None])
    cases = {"blend weight 0 on the right": ([1, 0], np.stack([left, 1 - left])),
             "no mask on the right": ([1, 1], np.stack([left, 0 * left]))}
    for name, (weights, masks) in cases.items():
        targets = stylejax.make_targets(vgg, content, list(styles), cfg, weights,
                                        content_masks=masks)
        g = np.abs(np.asarray(jax.grad(stylejax.loss_fn, argnums=1)(vgg, x, targets, cfg)))
        # relu2_1 at column 15 (the last of the left half) sees input columns up to 35.
        assert g[0, :, 36:].max() == 0.0, name
        assert (g[0, :, :30].sum((0, 2)) > 0).all(), name


def test_style_mask_takes_the_gram_from_the_masked_part(vgg, styles):
    style = styles[0]
    top = np.zeros(style.shape[:2], np.float32)
    top[:20] = 1
    t = stylejax.make_targets(vgg, style, [style], SHALLOW, style_masks=[top])
    feats = extract_features(vgg, style, SHALLOW.style_layers)
    by_hand = {"relu1_1": top, "relu2_1": top.reshape(20, 2, 20, 2).mean((1, 3))}
    for name, f in feats.items():
        m = np.asarray(f[0], np.float64).reshape(-1, f.shape[-1])
        w = by_hand[name].reshape(-1) ** 2
        want = (m * w[:, None]).T @ m / w.sum() / f.shape[-1]  # johnson: region mean / C
        np.testing.assert_allclose(t["style"][name], want, rtol=1e-4, atol=1e-6)
        whole = np.asarray(gram(f, "johnson")[0])
        assert np.abs(whole - want).max() > 1e-2 * np.abs(want).max()  # the mask mattered


# ---------------------------------------------------------------- library: blend, scales


def test_blend_weights_at_the_library_level(vgg, content, styles):
    run = lambda style, w=None: stylejax.stylize(  # noqa: E731
        vgg, content, style, SHALLOW, epochs=1, max_iter=3, style_blend_weights=w).image
    one = run(styles[0])
    blended = stylejax.make_targets(vgg, content, [styles[0], styles[0]], SHALLOW, [3, 7])
    for name, want in stylejax.make_targets(vgg, content, styles[0], SHALLOW)["style"].items():
        np.testing.assert_allclose(blended["style"][name], want, rtol=1e-5, atol=1e-7)
    # 0.3 G + 0.7 G rounds apart from G, and three L-BFGS steps amplify that to 4e-4-2.1e-3
    # (the most where a pixel sits at a line-search or ReLU boundary).
    np.testing.assert_allclose(run([styles[0], styles[0]], [3, 7]), one, atol=4e-3)
    np.testing.assert_array_equal(run(list(styles), [1, 0]), one)
    assert np.abs(run(list(styles), [0, 1]) - one).max() > 1e-3


def test_coarse_to_fine_feeds_each_scale_and_compiles_once_per_scale(vgg, content, styles,
                                                                      monkeypatch):
    cfg = dataclasses.replace(SHALLOW, tv_weight=0.5)  # a config no other test uses
    seen, made = [], []
    real_init, real_targets = run.initial_image, run.make_targets
    monkeypatch.setattr(run, "initial_image",
                        lambda init, c, seed=0: seen.append((init, np.shape(c)[-3:-1])) or
                        real_init(init, c, seed))
    monkeypatch.setattr(run, "make_targets",
                        lambda vgg, c, s, *a: made.append(s) or real_targets(vgg, c, s, *a))
    ends = []
    compiled = xla_compiles("run_epoch")
    result = stylejax.stylize(vgg, content, styles[0], cfg, epochs=2, max_iter=2,
                              scales=(32, 64), init="noise", seed=4,
                              preserve_colors="histogram",
                              callback=lambda e, img, loss: ends.append(img))
    assert xla_compiles("run_epoch") - compiled == 2  # 2 scales x 2 epochs: 2 compiles
    assert result.image.shape == (1, 32, 64, 3)
    assert result.sizes == [(16, 32)] * 2 + [(32, 64)] * 2
    assert seen[0][0] == "noise" and seen[0][1] == (16, 32)
    np.testing.assert_array_equal(seen[1][0], ends[1])  # scale 1's result starts scale 2
    assert seen[1][1] == (32, 64)
    # Histogram mode: the style VGG saw has the content's (that scale's) colour statistics.
    c = content.reshape(-1, 3).astype(np.float64)
    s = np.asarray(made[-1][0], np.float64).reshape(-1, 3)
    np.testing.assert_allclose(s.mean(0), c.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(s.T, bias=True), np.cov(c.T, bias=True), atol=2e-5)


def test_style_scale_sizes_the_style_relative_to_the_content(files):
    style = np.zeros((40, 80, 3), np.float32)
    stage = run.stage_inputs(np.zeros((30, 60, 3), np.float32), [style], (15, 30),
                                style_scale=0.5)
    assert stage.content.shape == (15, 30, 3) and stage.styles[0].shape == (8, 15, 3)
    stage = run.stage_inputs(np.zeros((30, 60, 3), np.float32), [style], (15, 30))
    assert stage.styles[0].shape == (20, 40, 3)  # scaled with the content: 30/60 of 40x80
    args = options.build_parser().parse_args(["c.png", "s.png", "--size", "64",
                                             "--style-scale", "0.5"])
    rc = options.run_config(args)
    content, style = inputs.prepare_images(rc, files["content"], files["s1"], 10 ** 6)
    assert content.shape == (48, 64, 3) and style.shape == (32, 32, 3)  # 0.5 x 64 px


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    f = {"content": d / "content.png", "s1": d / "s1.png", "s2": d / "s2.png",
         "cmask": d / "cmask.png", "smask": d / "smask.png"}
    Image.fromarray(to_u8(smooth_image(48, 64, 31))).save(f["content"])
    Image.fromarray(to_u8(smooth_image(40, 40, 32))).save(f["s1"])
    Image.fromarray(to_u8(smooth_image(40, 40, 33)[:, ::-1])).save(f["s2"])
    label = np.zeros((48, 64), np.uint8)
    label[:, 32:] = 255  # left: style 1, right: style 2
    Image.fromarray(label).save(f["cmask"])
    top = np.zeros((40, 40), np.uint8)
    top[:20] = 255
    Image.fromarray(top).save(f["smask"])
    return f


def cli(capsys, *args):
    code = cli_stylize.main([str(a) for a in args])
    return code, capsys.readouterr()


def test_cli_everything_together(tmp_path, files, weights_path, capsys, monkeypatch):
    seen = []
    real_init = run.initial_image
    monkeypatch.setattr(run, "initial_image",
                        lambda init, c, seed=0: seen.append(init) or real_init(init, c, seed))
    out = tmp_path / "all"
    code, io = cli(capsys, files["content"], "--style", files["s1"], files["s2"],
                   "--style-blend-weights", "3", "7", "--content-mask", files["cmask"],
                   "--style-masks", "none", files["smask"], "--preserve-colors", "luminance",
                   "--scales", "32,64", "--epochs", 2, "--max-iter", 2, "--init", "noise",
                   "--seed", 3, "--preset", "gatys", *SHALLOW_FLAGS, "--weights", weights_path,
                   "--out", out)
    assert code == 0, io.err
    assert "warning: the gatys preset" in io.err and "normalised" in io.err
    assert "over 2 scales" in io.out
    final = np.asarray(Image.open(out / "final.png"))
    assert final.shape == (48, 64, 3)
    assert np.asarray(Image.open(out / "snapshot_0002.png")).shape == (24, 32, 3)
    log = json.loads((out / "losses.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2, 3, 4]
    assert seen[0] == "noise" and np.shape(seen[1]) == (1, 24, 32, 3)
    content = images.load_image(files["content"])
    np.testing.assert_allclose(iq(final / 255.0), iq(content), atol=CHROMA_ATOL)
    assert np.abs(final / 255.0 @ YIQ[0] - content @ YIQ[0]).max() > 0.02  # it did transfer


def test_cli_blend_weights_one_zero_equal_the_first_style_alone(tmp_path, files, weights_path,
                                                                capsys):
    common = ("--size", 48, "--epochs", 1, "--max-iter", 3, *SHALLOW_FLAGS,
              "--preserve-colors", "histogram", "--weights", weights_path)
    runs = {"alone": (files["s1"],), "blend": (files["s1"], files["s2"],
                                               "--style-blend-weights", "1,0")}
    for name, styles in runs.items():
        code, io = cli(capsys, files["content"], *styles, *common, "--out", tmp_path / name)
        assert code == 0, io.err
        assert "warning" not in io.err  # johnson preset, original network
    assert (tmp_path / "alone" / "final.png").read_bytes() == \
        (tmp_path / "blend" / "final.png").read_bytes()


def test_cli_resume_across_scales_equals_a_straight_run(tmp_path, files, weights_path, capsys,
                                                        monkeypatch, vgg):
    common = (files["content"], files["s1"], "--scales", "32,48", "--epochs", 2,
              "--max-iter", 2, *SHALLOW_FLAGS, "--weights", weights_path)
    code, io = cli(capsys, *common, "--out", tmp_path / "straight")
    assert code == 0, io.err
    want = (tmp_path / "straight" / "final.png").read_bytes()
    # The library's stylize() with the same settings makes the same image: one loop.
    rc = options.run_config(options.build_parser().parse_args(list(map(str, common))))
    content, style = inputs.prepare_images(rc, files["content"], files["s1"], 10 ** 6)
    lib = stylejax.stylize(vgg, content, style, rc.loss, epochs=2, max_iter=2,
                           scales=(32, 48))
    png = np.asarray(Image.open(tmp_path / "straight" / "final.png"), np.int16)
    assert np.abs(png - np.round(np.clip(lib.image[0], 0, 1) * 255)).max() <= 1
    real = cli_stylize.stylize_epochs
    for stop_after in (2, 3):  # at the end of scale 1, and inside scale 2
        count = [0]

        def interrupted(*a, **kw):  # Ctrl-C once epoch `stop_after` is logged
            for item in real(*a, **kw):
                yield item
                count[0] += 1
                if count[0] == stop_after:
                    raise KeyboardInterrupt

        out = tmp_path / f"stop{stop_after}"
        monkeypatch.setattr(cli_stylize, "stylize_epochs", interrupted)
        code, io = cli(capsys, *common, "--out", out)
        assert code == 130 and not (out / "final.png").exists(), io.err
        monkeypatch.setattr(cli_stylize, "stylize_epochs", real)
        code, io = cli(capsys, *common, "--out", out, "--resume")
        assert code == 0, io.err
        assert (out / "final.png").read_bytes() == want, stop_after
        assert [e["epoch"] for e in json.loads((out / "losses.json").read_text())] == \
            [1, 2, 3, 4]
    code, io = cli(capsys, *common[:5], 3, *common[6:], "--out", out, "--resume")
    assert code == 2 and "epochs" in io.err  # with --scales, --epochs is fixed


def test_cli_signal_between_epochs_still_leaves_a_checkpoint(tmp_path, files, weights_path,
                                                              capsys, monkeypatch):
    """A Ctrl-C that lands during an epoch's bookkeeping (here: in the progress bar's update,
    in an epoch that writes no snapshot) stops after that epoch with its checkpoint."""
    class SignalOnFirstUpdate(tqdm.tqdm):
        def update(self, n=1):
            super().update(n)
            if self.n == 1:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli_stylize, "tqdm", SignalOnFirstUpdate)
    out = tmp_path / "out"
    code, io = cli(capsys, files["content"], files["s1"], "--scales", "32,48", "--epochs", 2,
                   "--max-iter", 2, "--snapshot-every", 4, *SHALLOW_FLAGS,
                   "--weights", weights_path, "--out", out)
    assert code == 130 and "--resume" in io.err, io.err
    record = serialization.msgpack_restore((out / CHECKPOINT).read_bytes())
    assert record["epoch"] == len(json.loads((out / "losses.json").read_text())) == 1
    assert (out / "last.png").is_file() and not (out / "final.png").exists()


@pytest.mark.parametrize("args, message", [
    (("{s1}", "--style", "{s2}"), "not both"),
    (("{s1}", "{s2}", "--style-blend-weights", "1"), "needs 2 non-negative"),
    (("{s1}", "--style-blend-weights", "-1"), "needs 1 non-negative"),
    (("{s1}", "--scales", "64,32"), "increasing"),
    (("{s1}", "--scales", "32,64", "--size", "48"), "disagrees"),
    (("{s1}", "{s2}", "--style-masks", "{smask}"), "one mask per style"),
    (("{s1}", "--content-mask", "{cmask}", "{cmask}"), "one label image or one mask"),
    (("{s1}", "--content-mask", "{smask}"), "different shape"),
    (("{s1}", "--scales", "8,64", "--style-layers", "relu3_1"), "at scale 1 of 2"),
    ((), "at least one style"),
])
def test_cli_errors_are_one_sentence_and_write_nothing(tmp_path, files, weights_path, capsys,
                                                       args, message):
    out = tmp_path / "out"
    argv = [files["content"]] + [a.format(**files) for a in args]
    code, io = cli(capsys, *argv, "--weights", weights_path, "--out", out)
    assert code == 2 and message in io.err, io.err
    assert io.err.startswith("error: ") and io.err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------- the normalised network


def test_convert_normalize_rebuilds_the_papers_network(tmp_path, vgg_params, vgg, capsys):
    source = tmp_path / "vgg19_random.h5"
    write_keras_h5(source, vgg_params)
    calib = tmp_path / "calibration"
    calib.mkdir()
    for i in range(3):
        Image.fromarray(to_u8(smooth_image(40 + 8 * i, 48, 40 + i))).save(calib / f"{i}.jpg")
    (calib / "notes.txt").write_text("not an image, skipped\n")
    out = tmp_path / "normalized.msgpack"
    code = convert.main(["--source", str(source), "--out", str(out), "--normalize", str(calib),
                         "--normalize-size", "32"])
    io = capsys.readouterr()
    assert code == 0, io.err
    nvgg = stylejax.load_vgg19(out)
    assert nvgg.normalized and not vgg.normalized and "normalized on 3 images" in nvgg.source

    crops = np.stack(list(images.calibration_images(calib, 32)))
    relus = tuple(n for n in LAYERS if n.startswith("relu"))
    before = extract_features(vgg, crops, relus)
    after = extract_features(nvgg, crops, relus)
    live = 0
    for name in relus:
        # A nearly dead channel (mean far below the layer's median) is rescaled as much, so
        # float32 rounding in the convolutions before it (which differs between CPUs) shows.
        mean = np.asarray(before[name]).mean((0, 1, 2))
        alive = mean > 1e-3 * np.median(mean[mean > 0])
        np.testing.assert_allclose(np.asarray(after[name]).mean((0, 1, 2))[alive], 1.0,
                                   atol=1e-3, err_msg=name)
        live += alive.sum()
    assert live > 0.8 * sum(np.asarray(f).shape[-1] for f in before.values())

    image = smooth_image(32, 40, 50)
    for pooling in ("max", "avg"):  # either pooling: ReLU and pooling are homogeneous
        a = extract_features(vgg, image, LAYERS, pooling)
        b = extract_features(nvgg, image, LAYERS, pooling)
        for name in LAYERS:
            x = np.asarray(a[name], np.float64).reshape(-1, a[name].shape[-1])
            y = np.asarray(b[name], np.float64).reshape(-1, b[name].shape[-1])
            used = np.abs(x).max(0) > 0
            k = (x * y).sum(0)[used] / (x * x).sum(0)[used]
            assert (k > 0).all(), name
            np.testing.assert_allclose(y[:, used], x[:, used] * k, rtol=2e-3,
                                       atol=2e-4 * np.abs(y).max(), err_msg=f"{pooling} {name}")

    assert network_warning("gatys", True) is None and network_warning("johnson", False) is None
    assert "normalised" in network_warning("gatys", False)
    assert "original" in network_warning("seed", True)


def test_convert_normalize_errors_write_nothing(tmp_path, vgg_params, capsys):
    source = tmp_path / "vgg19_random.h5"
    write_keras_h5(source, vgg_params)
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "missing", "is not a folder"),
                            (tmp_path / "empty", "holds no images")):
        out = tmp_path / "n.msgpack"
        code = convert.main(["--source", str(source), "--out", str(out), "--normalize",
                             str(folder)])
        io = capsys.readouterr()
        assert code == 2 and message in io.err and io.err.count("\n") == 1
        assert not out.exists()

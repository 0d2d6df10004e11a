"""stylejax.images: loading whatever images users have, and resizing / saving them.

Every test builds its own tiny image with Pillow or numpy in a temporary folder.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stylejax import images
from stylejax.errors import StylejaxError
from stylejax.images import (contact_sheet, ensure_writable_dir, fit_size, load_image, resize,
                             save_image, to_uint8)

ORIENTATION = 0x0112


def rgb_array(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def quadrants(h, w):
    """uint8 [h, w, 3]: red, green / blue, white quadrants (easy to follow through rotations)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 255)
    return a


def png_bytes(arr, bits, color_type):
    """A minimal PNG encoder, for layouts Pillow cannot write (16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = np.ascontiguousarray(arr, ">u2" if bits == 16 else "u1").reshape(h, -1).tobytes()
    stride = len(raw) // h
    data = b"".join(b"\0" + raw[i * stride:(i + 1) * stride] for i in range(h))

    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def check_rgb(a, h, w):
    assert a.dtype == np.float32 and a.shape == (h, w, 3)
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0


def one_sentence(message):
    assert message and "\n" not in message and message.endswith(".")
    assert "Traceback" not in message


# ---------------------------------------------------------------- odd but valid images


def test_rgb_png_round_trips_exactly(tmp_path):
    a = rgb_array(20, 30)
    Image.fromarray(a).save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got, a / 255.0, atol=1e-6)


def test_grayscale_is_repeated_into_three_channels(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    got = load_image(tmp_path / "g.png")
    check_rgb(got, 20, 25)
    np.testing.assert_allclose(got, np.repeat(g[..., None], 3, 2) / 255.0, atol=1e-6)


def test_grayscale_alpha_is_composited_over_white(tmp_path):
    la = np.zeros((20, 24, 2), np.uint8)
    la[..., 0] = 40
    la[:, :12, 1] = 255  # left half opaque dark grey, right half fully transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = load_image(tmp_path / "la.png")
    check_rgb(got, 20, 24)
    np.testing.assert_allclose(got[:, :12], 40 / 255.0, atol=1e-6)
    np.testing.assert_allclose(got[:, 12:], 1.0)


def test_rgba_is_composited_over_white(tmp_path):
    a = np.zeros((20, 30, 4), np.uint8)
    a[..., :3] = (200, 30, 10)
    a[:, :10, 3] = 255  # opaque: keeps its colour
    a[:, 10:20, 3] = 0  # transparent: white
    a[:, 20:, 3] = 128  # half: in between
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got[:, :10], np.broadcast_to([200 / 255, 30 / 255, 10 / 255],
                                                            (20, 10, 3)), atol=1e-6)
    np.testing.assert_allclose(got[:, 10:20], 1.0)
    half = got[0, 25]
    assert np.all(half > got[0, 0] - 1e-6) and np.all(half < 1.0)
    np.testing.assert_allclose(half, (np.array([200, 30, 10]) * 128 + 255 * 127) / 255 / 255,
                               atol=2 / 255)


def test_palette_without_transparency(tmp_path):
    rgb = quadrants(20, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4) \
        .save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    got = load_image(tmp_path / "p.png")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got, rgb / 255.0, atol=1e-6)


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    p = Image.new("P", (30, 20), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    p.paste(1, (0, 0, 15, 20))  # left half: opaque red (index 1); right: index 0, transparent
    p.save(tmp_path / "p.png", transparency=0)
    reread = Image.open(tmp_path / "p.png")
    assert reread.mode == "P" and "transparency" in reread.info
    got = load_image(tmp_path / "p.png")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got[:, :15], np.broadcast_to([1.0, 0.0, 0.0], (20, 15, 3)))
    np.testing.assert_allclose(got[:, 15:], 1.0)


def test_grayscale_colour_key_transparency_is_white(tmp_path):
    g = np.full((20, 20), 7, np.uint8)
    g[:, 10:] = 100
    Image.fromarray(g, "L").save(tmp_path / "g.png", transparency=7)
    got = load_image(tmp_path / "g.png")
    np.testing.assert_allclose(got[:, :10], 1.0)
    np.testing.assert_allclose(got[:, 10:], 100 / 255.0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_grayscale_scales_by_bit_depth(tmp_path, fmt):
    a = np.zeros((20, 30), np.uint16)
    a[:, :10] = 65535
    a[:, 10:20] = 32768
    a[:, 20:] = 0
    Image.frombytes("I;16", (30, 20), a.astype("<u2").tobytes()).save(tmp_path / f"x.{fmt}")
    assert Image.open(tmp_path / f"x.{fmt}").mode in ("I;16", "I;16B", "I;16L", "I")
    got = load_image(tmp_path / f"x.{fmt}")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got[:, :10], 1.0)
    np.testing.assert_allclose(got[:, 10:20], 32768 / 65535, atol=1e-6)
    np.testing.assert_allclose(got[:, 20:], 0.0)


def test_dark_16bit_image_stays_dark(tmp_path):
    # Every value <= 255: deciding the scale from the values would make this image bright.
    a = np.tile(np.linspace(0, 200, 30).astype(np.uint16), (20, 1))
    (tmp_path / "dark.png").write_bytes(png_bytes(a, 16, 0))
    got = load_image(tmp_path / "dark.png")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got[..., 0], a / 65535.0, atol=1e-6)
    assert got.max() < 0.01


def test_mode_I_without_bit_depth_is_taken_as_16bit():
    img = Image.new("I", (4, 3), 32768)
    np.testing.assert_allclose(images._to_rgb(img), 32768 / 65535, atol=1e-6)


def test_16bit_rgb_png(tmp_path):
    a = np.zeros((20, 24, 3), np.uint16)
    a[..., 0], a[..., 1], a[..., 2] = 65535, 32768, 0
    (tmp_path / "rgb16.png").write_bytes(png_bytes(a, 16, 2))
    got = load_image(tmp_path / "rgb16.png")
    check_rgb(got, 20, 24)
    np.testing.assert_allclose(got[0, 0], [1.0, 0.5, 0.0], atol=1 / 255)


def test_16bit_grayscale_alpha_png(tmp_path):
    a = np.zeros((20, 24, 2), np.uint16)
    a[..., 0] = 0
    a[:, :12, 1] = 65535  # left: opaque black; right: transparent
    (tmp_path / "la16.png").write_bytes(png_bytes(a, 16, 4))
    got = load_image(tmp_path / "la16.png")
    check_rgb(got, 20, 24)
    np.testing.assert_allclose(got[:, :12], 0.0, atol=1 / 255)
    np.testing.assert_allclose(got[:, 12:], 1.0, atol=1 / 255)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    got = load_image(tmp_path / "c.jpg")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got.mean(axis=(0, 1)), [1.0, 0.0, 0.0], atol=0.05)


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2), (1, 0)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    a = quadrants(24, 40)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=100, subsampling=0)
    got = load_image(tmp_path / "r.jpg")
    want = np.rot90(a, turns) / 255.0  # turns=-1: a quarter turn clockwise
    check_rgb(got, *want.shape[:2])
    assert np.abs(got - want).mean() < 0.03


def test_damaged_exif_does_not_lose_the_picture(tmp_path, monkeypatch):
    Image.fromarray(rgb_array(20, 30)).save(tmp_path / "x.png")

    def broken(img):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    check_rgb(load_image(tmp_path / "x.png"), 20, 30)


def test_float_tiff(tmp_path):
    f = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    f[0, 0], f[0, 1], f[0, 2] = 2.0, -1.0, np.nan
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    got = load_image(tmp_path / "f.tif")
    check_rgb(got, 20, 30)
    np.testing.assert_allclose(got[1:, :, 0], f[1:], atol=1e-6)
    np.testing.assert_allclose(got[0, :3, 0], [1.0, 0.0, 0.0])


def test_bilevel_and_rgba_tiff(tmp_path):
    Image.new("1", (30, 20), 1).save(tmp_path / "b.png")
    np.testing.assert_allclose(load_image(tmp_path / "b.png"), 1.0)
    a = np.zeros((20, 30, 4), np.uint8)  # transparent black
    Image.fromarray(a, "RGBA").save(tmp_path / "t.tif")
    np.testing.assert_allclose(load_image(tmp_path / "t.tif"), 1.0)


# ---------------------------------------------------------------- files that are not images


def expect_error(path, *phrases, **kw):
    with pytest.raises(StylejaxError) as info:
        load_image(path, **kw)
    message = str(info.value)
    one_sentence(message)
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nope.jpg", "No such image", "nope.jpg")


def test_directory(tmp_path):
    expect_error(tmp_path, "directory")


def test_text_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are my notes, not a picture\n")
    expect_error(tmp_path / "notes.jpg", "not an image")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    expect_error(tmp_path / "empty.png", "empty")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_truncated_image(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(rgb_array(40, 40)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own warnings must not reach the user
        expect_error(path, "truncated")


def test_corrupt_png_checksum(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rgb_array(20, 20)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[40] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    (tmp_path / "bad.png").write_bytes(bytes(data))
    expect_error(tmp_path / "bad.png", "bad.png")


def test_over_max_pixels(tmp_path):
    Image.fromarray(rgb_array(30, 40)).save(tmp_path / "big.png")
    expect_error(tmp_path / "big.png", "40x30", "1000", "--max-pixels", max_pixels=1000)
    check_rgb(load_image(tmp_path / "big.png", max_pixels=1200), 30, 40)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads any file")
def test_unreadable_file(tmp_path):
    Image.fromarray(rgb_array(10, 10)).save(tmp_path / "x.png")
    (tmp_path / "x.png").chmod(0)
    try:
        expect_error(tmp_path / "x.png", "permission denied")
    finally:
        (tmp_path / "x.png").chmod(0o644)


# ---------------------------------------------------------------- property: only StylejaxError

_FORMATS = {"PNG": ("L", "LA", "RGB", "RGBA", "P", "I;16"),
            "JPEG": ("L", "RGB", "CMYK"),
            "TIFF": ("L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK")}
_CASES = [(fmt, mode) for fmt, modes in _FORMATS.items() for mode in modes]
_BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}


def _make(mode, w, h, rng, transparent):
    if mode == "I;16":
        return Image.frombytes(mode, (w, h), rng.integers(0, 65536, (h, w), dtype="<u2").tobytes())
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(2, 17)))
        if transparent:
            img.info["transparency"] = 0
        return img
    data = rng.integers(0, 256, (h, w, _BANDS[mode]), dtype=np.uint8)
    return Image.frombytes(mode, (w, h), data.tobytes())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("property")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(_CASES), h=st.integers(1, 64), w=st.integers(1, 64),
       seed=st.integers(0, 2 ** 16), orientation=st.sampled_from([None, 1, 3, 6, 8]),
       transparent=st.booleans(),
       damage=st.one_of(st.none(), st.floats(0.0, 0.99), st.integers(0, 10_000)))
def test_load_image_returns_rgb_or_raises_stylejax_error(scratch, case, h, w, seed,
                                                        orientation, transparent, damage):
    fmt, mode = case
    rng = np.random.default_rng(seed)
    img = _make(mode, w, h, rng, transparent)
    kw = {}
    if orientation is not None and fmt in ("JPEG", "PNG"):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kw["exif"] = exif
    if fmt == "PNG" and mode == "P" and transparent:
        kw["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    data = buf.getvalue()
    if isinstance(damage, float):
        data = data[: int(len(data) * damage)]  # truncated
    elif isinstance(damage, int):
        flipped = bytearray(data)
        flipped[damage % len(data)] ^= 0x5A  # one damaged byte
        data = bytes(flipped)
    path = scratch / f"img.{fmt.lower()}"
    path.write_bytes(data)
    try:
        got = load_image(path)
    except StylejaxError as e:
        one_sentence(str(e))
        assert damage is not None, f"a valid {fmt} {mode} image was refused: {e}"
        return
    if damage is not None:  # a damaged header may change the size or the orientation
        check_rgb(got, *got.shape[:2])
        return
    swap = kw.get("exif") is not None and orientation in (6, 8)
    check_rgb(got, *((w, h) if swap else (h, w)))


# ---------------------------------------------------------------- resize, fit_size, to_uint8


def test_fit_size():
    assert fit_size(300, 400, 200) == (150, 200)
    assert fit_size(300, 400, 200, "short") == (200, 267)
    assert fit_size(400, 300, 200) == (200, 150)
    assert fit_size(1, 1000, 10) == (1, 10)  # never 0 px
    assert fit_size(64, 64, 64) == (64, 64)


def test_resize_shape_range_and_identity():
    a = np.random.default_rng(0).uniform(0, 1, (20, 30, 3)).astype(np.float32)
    assert resize(a, 20, 30) is a
    for h, w in [(40, 60), (7, 5), (1, 1)]:
        r = resize(a, h, w)
        assert r.shape == (h, w, 3) and r.dtype == np.float32
        assert r.min() >= 0.0 and r.max() <= 1.0
    flat = np.full((10, 12, 3), 0.25, np.float32)
    np.testing.assert_allclose(resize(flat, 33, 17), 0.25, atol=1e-5)
    np.testing.assert_allclose(resize(a, 10, 15).mean(axis=(0, 1)), a.mean(axis=(0, 1)),
                               atol=0.02)


def test_to_uint8_clips_rounds_and_drops_batch_axis():
    a = np.array([[[-0.5, 0.0, 0.5], [1.0, 2.0, 0.2]]], np.float32)
    np.testing.assert_array_equal(to_uint8(a), [[[0, 0, 128], [255, 255, 51]]])
    assert to_uint8(a[None]).shape == (1, 2, 3)
    assert to_uint8(np.full((2, 2, 3), np.nan)).max() == 0


# ---------------------------------------------------------------- save_image, contact_sheet


def test_save_image_round_trips_atomically(tmp_path):
    a = rgb_array(20, 30) / 255.0
    path = tmp_path / "sub" / "dir" / "x.png"  # folders are created
    save_image(path, a[None].astype(np.float32))
    save_image(path, a)  # overwriting is fine too
    np.testing.assert_allclose(load_image(path), a, atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_save_image_failure_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        save_image(tmp_path / "x.png", np.zeros((4, 4, 5), np.float32))  # 5 channels
    assert list(tmp_path.iterdir()) == []


def test_contact_sheet():
    frames = [np.zeros((20, 30, 3), np.float32), np.ones((40, 40, 3), np.float32)]
    sheet = contact_sheet(frames, ["content", "epoch 1"], height=32)
    assert sheet.dtype == np.float32 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[0] == 32 + 16
    assert sheet.shape[1] >= round(30 * 32 / 20) + 32
    assert sheet.min() >= 0.0 and sheet.max() <= 1.0
    assert sheet[:32, :10].max() == 0.0  # the black frame is there
    with pytest.raises(ValueError):
        contact_sheet([], [])


# ---------------------------------------------------------------- output folders


def test_ensure_writable_dir(tmp_path):
    assert ensure_writable_dir(tmp_path) == tmp_path
    new = tmp_path / "a" / "b"
    assert ensure_writable_dir(new) == new
    assert not (tmp_path / "a").exists()  # created by the first save, not before
    (tmp_path / "file").write_text("x")
    with pytest.raises(StylejaxError, match="file"):
        ensure_writable_dir(tmp_path / "file")
    with pytest.raises(StylejaxError, match="not a folder"):
        ensure_writable_dir(tmp_path / "file" / "sub")

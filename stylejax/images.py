"""Loading, resizing and saving images (Pillow). Arrays are float32 RGB in [0, 1], [H, W, 3]."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from stylejax.errors import StylejaxError
from stylejax.weights import atomic_write_bytes

DEFAULT_MAX_PIXELS = 64_000_000  # decoding guard: a 8000x8000 image is 768 MB as float32


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 RGB [0, 1]; transparency is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as float32 RGB [H, W, 3] in [0, 1].

    EXIF orientation is applied; alpha is composited over white; grayscale, palette, CMYK and
    16-bit images are converted. Raises StylejaxError with one sentence for a missing path, a
    directory, a file that is not an image, a truncated image, or one over ``max_pixels``.
    """
    path = Path(path)
    if not path.exists():
        raise StylejaxError(f"No such image: {path}.")
    if path.is_dir():
        raise StylejaxError(f"{path} is a directory, not an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise StylejaxError(
                        f"{path} is {img.width}x{img.height} px, over the limit of {max_pixels} "
                        "pixels: resize it first or raise --max-pixels.")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except StylejaxError:
        raise
    except UnidentifiedImageError:
        raise StylejaxError(f"{path} is not an image Pillow can read.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise StylejaxError(f"{path} is too large to decode safely: resize it first.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise StylejaxError(f"{path} is damaged or truncated ({e}).") from None


def fit_size(height: int, width: int, size: int, edge: str = "long") -> tuple[int, int]:
    """(h, w) scaled so that the ``edge`` ("long" or "short") side is ``size`` px."""
    side = max(height, width) if edge == "long" else min(height, width)
    scale = size / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes [H, W, 3] float image to [height, width, 3] (Lanczos; bicubic-smooth upsampling)."""
    if image.shape[:2] == (height, width):
        return image
    channels = [Image.fromarray(image[..., c].astype(np.float32), mode="F")
                .resize((width, height), Image.LANCZOS) for c in range(3)]
    return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0.0, 1.0)


def to_uint8(image) -> np.ndarray:
    """[H, W, 3] (or [1, H, W, 3]) float in [0, 1] -> uint8, clipped and rounded."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 4:
        a = a[0]
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def save_image(path, image) -> None:
    """Writes ``image`` ([H, W, 3] or [1, H, W, 3] float in [0, 1]) as a PNG, atomically."""
    atomic_write_bytes(path, encode_png(image))


def contact_sheet(frames, labels, height: int = 160) -> np.ndarray:
    """The ``frames`` (float [H, W, 3] each) side by side, each scaled to ``height`` px, with
    its label written under it. Returns a float [height + 16, W_total, 3] image."""
    tiles = []
    for frame, label in zip(frames, labels):
        f = to_uint8(frame)
        w = max(1, round(f.shape[1] * height / f.shape[0]))
        tile = Image.new("RGB", (max(w, 8 * len(label) + 4), height + 16), "white")
        tile.paste(Image.fromarray(f).resize((w, height), Image.LANCZOS), (0, 0))
        ImageDraw.Draw(tile).text((2, height + 2), label, fill="black")
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1).astype(np.float32) / 255.0


def ensure_writable_dir(path) -> Path:
    """Creates ``path`` if needed and checks it can be written; StylejaxError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StylejaxError(f"Cannot create the output folder {path} ({e.strerror}).") from None
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise StylejaxError(f"Cannot write to the output folder {path}.")
    return path

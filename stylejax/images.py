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


def _int_scale(img: Image.Image) -> float:
    """The white level of an integer grayscale image, from its mode and bit depth (never from
    its values: a dark 16-bit image must stay dark)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    # Mode "I" is a 32-bit container. PNG (and most formats) use it for 16-bit samples;
    # TIFF records the real depth in BitsPerSample (tag 258).
    bits = 16
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        try:
            bps = tags.get(258)
            bits = int(max(bps) if isinstance(bps, (tuple, list)) else bps or 16)
        except (TypeError, ValueError):
            bits = 16
    return float(2 ** min(max(bits, 1), 31) - 1)


def _to_rgb(img: Image.Image, white: float | None = None) -> np.ndarray:
    """Any Pillow mode -> float32 RGB [0, 1]; transparency is composited over white.

    ``white``: the white level of integer grayscale ("I", "I;16*") images (default: from the
    mode). Float ("F") images are taken to be in [0, 1]."""
    if img.mode == "F" or img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            a = a / (white or _int_scale(img))
        a = np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return np.repeat(a[..., None], 3, axis=2).astype(np.float32)
    if img.mode in ("1", "L", "P", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette or colour-key transparency
    if img.mode == "La":
        img = img.convert("L")  # premultiplied: no alpha left to composite
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white_bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white_bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _exif_transpose(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF Orientation tag says; unchanged if the EXIF is unreadable."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # damaged EXIF must not cost the user the picture itself
        return img


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as float32 RGB [H, W, 3] in [0, 1].

    EXIF orientation is applied; alpha (and palette or colour-key transparency) is composited
    over white; grayscale, palette, CMYK, 16-bit (scaled by its bit depth: 65535 is white)
    and float images (taken to be in [0, 1]) are converted. Raises StylejaxError with one
    sentence for a missing path, a directory, an empty file, a file that is not an image, a
    damaged or truncated image, or one over ``max_pixels``.
    """
    path = Path(path)
    if not path.exists():
        raise StylejaxError(f"No such image: {path}.")
    if path.is_dir():
        raise StylejaxError(f"{path} is a directory, not an image file.")
    if not path.is_file():
        raise StylejaxError(f"{path} is not a regular file, so it cannot be read as an image.")
    try:
        if path.stat().st_size == 0:
            raise StylejaxError(f"{path} is empty (0 bytes), not an image.")
        with warnings.catch_warnings():
            # Pillow warns about damaged EXIF and such on stderr; we have our own pixel limit.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise StylejaxError(
                        f"{path} is {img.width}x{img.height} px, over the limit of {max_pixels} "
                        "pixels: resize it first or raise --max-pixels.")
                img.load()
                white = _int_scale(img) if img.mode.startswith("I") else None
                img = _exif_transpose(img)
                try:
                    return _to_rgb(img, white)
                except (ValueError, OSError) as e:
                    raise StylejaxError(f"{path} has colour mode {img.mode}, which cannot be "
                                        f"converted to RGB ({e}).") from None
    except StylejaxError:
        raise
    except PermissionError:
        raise StylejaxError(f"{path} cannot be read: permission denied.") from None
    except UnidentifiedImageError:
        raise StylejaxError(f"{path} is not an image file Pillow can read.") from None
    except Image.DecompressionBombError:
        raise StylejaxError(f"{path} has more pixels than Pillow will decode safely: "
                            "resize it first.") from None
    except MemoryError:
        raise StylejaxError(f"{path} is too large to decode in the available memory: "
                            "resize it first.") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        detail = " ".join(str(e).split()).rstrip(".") or type(e).__name__
        raise StylejaxError(f"{path} is damaged or truncated ({detail}).") from None


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
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def save_image(path, image) -> None:
    """Writes ``image`` ([H, W, 3] or [1, H, W, 3] float in [0, 1]) as a PNG, atomically
    (a temporary file beside ``path``, then a rename); creates the folder if needed."""
    atomic_write_bytes(path, encode_png(image))


def contact_sheet(frames, labels, height: int = 160) -> np.ndarray:
    """The ``frames`` (float [H, W, 3] each) side by side, each scaled to ``height`` px, with
    its label written under it. Returns a float [height + 16, W_total, 3] image."""
    if not len(frames):
        raise ValueError("contact_sheet needs at least one frame.")
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
    """Checks that ``path`` is, or can be created as, a writable folder; StylejaxError otherwise.

    A missing folder is not created here: the first file saved into it creates it (see
    `save_image`), so a run that fails before writing anything leaves nothing behind.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise StylejaxError(f"Cannot use {path} as the output folder: it is a file.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StylejaxError(f"Cannot write to the output folder {path}: permission denied.")
        return path
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if ancestor is None or not ancestor.is_dir():
        raise StylejaxError(f"Cannot create the output folder {path}: {ancestor} is a file, "
                            "not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StylejaxError(f"Cannot create the output folder {path}: {ancestor} is not "
                            "writable.")
    return path


# ---------------------------------------------------------------- masks


def load_mask(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads a mask image as float32 [H, W] in [0, 1]: its luminance, white = 1, black = 0
    (alpha is composited over white, as for every image). Errors as `load_image`."""
    rgb = load_image(path, max_pixels)
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes a [H, W] mask to [height, width] (bilinear, area-averaging when shrinking;
    no ringing, so a mask stays in [0, 1] and a flat region stays flat)."""
    mask = np.asarray(mask, np.float32)
    if mask.shape == (height, width):
        return mask
    img = Image.fromarray(mask, mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


def label_masks(labels: np.ndarray, regions: int) -> np.ndarray:
    """A grey label image [H, W] in [0, 1] -> ``regions`` binary masks [regions, H, W].

    With R >= 2 regions, pixel p belongs to region i (0-based) whose grey level i/(R-1) is
    nearest: black is the first region, white the last, evenly spaced greys between. With
    R = 1 the image itself is the (soft) mask.
    """
    labels = np.asarray(labels, np.float32)
    if regions == 1:
        return labels[None]
    index = np.clip(np.rint(labels * (regions - 1)), 0, regions - 1).astype(np.int64)
    return (index[None] == np.arange(regions)[:, None, None]).astype(np.float32)


# ---------------------------------------------------------------- calibration images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


def image_files(folder) -> list[Path]:
    """The image files (by suffix, case-insensitive) directly in ``folder``, sorted by name.
    Raises StylejaxError for a missing folder or one without images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylejaxError(f"{folder} is not a folder: pass a folder of calibration images.")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise StylejaxError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                            "put some photographs there.")
    return files


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] -> [size, size, 3]: the shorter side scaled to ``size``, then the centre
    cut out (ImageNet's evaluation crop)."""
    h, w = fit_size(*image.shape[:2], size, "short")
    image = resize(image, max(h, size), max(w, size))
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top: top + size, left: left + size]


def calibration_images(folder, size: int = 224, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Yields each image of ``folder`` (see `image_files`) as a [size, size, 3] centre crop,
    one at a time, so that a large folder never sits in memory."""
    for path in image_files(folder):
        yield center_crop(load_image(path, max_pixels), size)

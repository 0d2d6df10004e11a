"""The published VGG-19 files and their download: address, published hash, cache, progress.

A download goes to ``<dest>.part`` and is renamed to its final name only once it is complete
and matches the published hash, so an interrupted or rejected download never leaves a file
that looks usable; the ``.part`` file is deleted on any failure (and a stale one, left by a
killed process, is overwritten by the next attempt).

``$STYLEJAX_CACHE`` (default ``~/.cache/stylejax``) holds the downloads.
``$STYLEJAX_TEST_DOWNLOAD_URL`` replaces the download address; it exists for the test suite
(which serves files from 127.0.0.1 or points at a closed port); the hash check still applies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from stylejax.convert.files import one_line
from stylejax.errors import StylejaxError

Progress = Callable[[int, Optional[int]], None]
"""``progress(done, total)``: bytes received so far and the expected total (None if the
server does not say)."""
Notify = Callable[[str], None]
"""``notify(sentence)``: what the library is doing (using the cache, downloading)."""


@dataclasses.dataclass(frozen=True)
class Published:
    """A public weight file: where it lives and the hash its publisher gives for it."""

    kind: str  # "keras" or "torchvision"
    url: str
    md5: str | None = None  # of the whole file (Keras publishes MD5s)
    sha256_prefix: str | None = None  # leading hex digits of the SHA-256 (torch.hub style)

    @property
    def filename(self) -> str:
        """The last part of ``url``: the name the file is cached under."""
        return self.url.rsplit("/", 1)[-1]


KERAS_NOTOP = Published(
    "keras",
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    md5="253f8cb515780f3b799900260a226db6")
KERAS_TOP = Published(
    "keras",
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    md5="cbe5617147190e668d6c5d5026f83318")
TORCHVISION_VGG19 = Published(
    "torchvision", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    sha256_prefix="dcbb9e9d")

DOWNLOADS: dict[str, Published] = {"keras": KERAS_NOTOP, "torchvision": TORCHVISION_VGG19}
"""What ``--source keras`` / ``--source torchvision`` download."""
KNOWN_FILES: dict[str, Published] = {
    p.filename: p for p in (KERAS_NOTOP, KERAS_TOP, TORCHVISION_VGG19)}
"""Local files carrying a published name are checked against the published hash."""

TEST_URL_ENV = "STYLEJAX_TEST_DOWNLOAD_URL"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$STYLEJAX_CACHE``, else ``~/.cache/stylejax``."""
    return Path(os.environ.get("STYLEJAX_CACHE") or Path.home() / ".cache" / "stylejax")


def file_hashes(path) -> tuple[str, str]:
    """(MD5, SHA-256) of a file as hex strings, read in 1 MiB chunks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def hash_problem(md5: str, sha256: str, want_md5: str | None,
                 want_sha256_prefix: str | None) -> str | None:
    """None if the hex digests ``md5``/``sha256`` match what is wanted (a whole MD5, the
    leading hex digits of the SHA-256; None: not checked), else what differs, in words."""
    if want_md5 and md5 != want_md5.lower():
        return f"MD5 {md5}, published {want_md5}"
    if want_sha256_prefix and not sha256.startswith(want_sha256_prefix.lower()):
        return f"SHA-256 {sha256[:16]}..., published {want_sha256_prefix}..."
    return None


def expected_hash(md5: str | None, sha256_prefix: str | None) -> str:
    """The published hash in words ("its MD5 is ...", "its SHA-256 begins with ..."), or ""."""
    parts = ([f"its MD5 is {md5}"] if md5 else []) + (
        [f"its SHA-256 begins with {sha256_prefix}"] if sha256_prefix else [])
    return " and ".join(parts)


def download(url: str, dest, md5: str | None = None, sha256_prefix: str | None = None,
             timeout: float = 60.0, progress: Progress | None = None) -> str:
    """Downloads ``url`` to ``dest``; returns the file's SHA-256 (hex).

    The bytes go to ``<dest>.part``, which is renamed to ``dest`` only when complete and
    matching ``md5`` (whole-file MD5) and ``sha256_prefix`` (leading hex digits of the
    SHA-256); on any failure it is deleted. ``timeout`` is per network operation, in s.
    ``progress(done_bytes, total_bytes)`` is called once the server answers and after every
    1 MiB chunk (``total_bytes`` is None when the server does not send a length).
    Raises StylejaxError on a network failure (saying the address, the expected hash and
    ``--source PATH``), a short read, a hash mismatch or an unwritable ``dest``.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    expected = expected_hash(md5, sha256_prefix)

    def network_error(reason) -> StylejaxError:
        yourself = f"download it yourself ({expected})" if expected else "download it yourself"
        return StylejaxError(
            f"Could not download {url} ({reason}): check your connection, or {yourself} and "
            "pass it with --source PATH.")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        md5_h, sha_h, got = hashlib.md5(), hashlib.sha256(), 0
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise network_error(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise network_error(one_line(e.reason if e.reason is not None else e)) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise network_error(one_line(e)) from None
        with resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress is not None:
                progress(0, total)
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise network_error(one_line(e)) from None
                if not chunk:
                    break
                f.write(chunk)
                md5_h.update(chunk)
                sha_h.update(chunk)
                got += len(chunk)
                if progress is not None:
                    progress(got, total)
        if total is not None and got != total:
            raise network_error(f"the connection closed after {got} of {total} bytes")
        problem = hash_problem(md5_h.hexdigest(), sha_h.hexdigest(), md5, sha256_prefix)
        if problem:
            raise StylejaxError(
                f"The download of {url} fails its hash check ({problem}), so it was deleted: "
                "try again, or download it yourself and pass --source PATH.")
        os.replace(part, dest)
        return sha_h.hexdigest()
    except OSError as e:  # the cache directory or the .part file could not be written
        raise StylejaxError(
            f"Could not save the download to {part} ({one_line(e)}): set STYLEJAX_CACHE to "
            "a writable directory.") from None
    finally:
        if part.exists():
            part.unlink()


def fetch(published: Published, directory=None, progress: Progress | None = None,
          notify: Notify | None = None) -> tuple[Path, str]:
    """Returns ``(path, sha256)`` of ``published`` in the cache (``directory``, default
    `cache_dir`), downloading it if missing or damaged.

    ``progress`` is passed to `download`; ``notify(sentence)`` hears whether the cached copy
    is used or the file is downloaded (nothing is printed here).
    """
    directory = Path(directory) if directory is not None else cache_dir()
    dest = directory / published.filename
    say = notify or (lambda sentence: None)
    if dest.is_file():
        md5, sha256 = file_hashes(dest)
        if hash_problem(md5, sha256, published.md5, published.sha256_prefix) is None:
            say(f"Using cached {dest}")
            return dest, sha256
        say(f"Cached {dest} fails its hash check; downloading it again.")
        dest.unlink()
    url = os.environ.get(TEST_URL_ENV) or published.url
    say(f"Downloading {published.url}")
    sha256 = download(url, dest, md5=published.md5, sha256_prefix=published.sha256_prefix,
                      progress=progress)
    return dest, sha256

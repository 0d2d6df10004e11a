"""Local weight files before they are read: is the file usable, and which format do its
leading bytes say it is in. Also the one-line form of an exception used in messages."""

from __future__ import annotations

from pathlib import Path

from stylejax.errors import StylejaxError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""The first object of torch's legacy (pre-zip) stream."""
TORCH_PROTOCOL_VERSION = 1001
_TORCH_MAGIC_PICKLED = b"\x8a\x0a" + TORCH_MAGIC.to_bytes(10, "little")  # LONG1 opcode


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of at most 200 characters (its type name if it has no text)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def detect_format(path) -> str:
    """"hdf5", "torch-zip", "torch-legacy" or "unknown", from the file's leading bytes.

    Raises OSError if the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if head.startswith(HDF5_SIGNATURE):
            return "hdf5"
        for offset in (512, 1024, 2048, 4096):  # HDF5 allows a user block before it
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return "hdf5"
    if head.startswith(ZIP_SIGNATURE):
        return "torch-zip"
    if head.startswith(b"\x80") and _TORCH_MAGIC_PICKLED in head[:32]:
        return "torch-legacy"
    return "unknown"


def check_file(path: Path) -> None:
    """Raises StylejaxError unless ``path`` is an existing, readable, non-empty file."""
    if not path.exists():
        raise StylejaxError(f"{path} does not exist: check the path given to --source.")
    if path.is_dir():
        raise StylejaxError(f"{path} is a directory: pass the weight file itself to --source.")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise StylejaxError(f"Could not read {path} ({one_line(e)}): check its permissions.") \
            from None
    if empty:
        raise StylejaxError(f"{path} is empty: download it again.")

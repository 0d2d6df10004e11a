"""``stylejax-convert`` / ``python scripts/convert_weights.py``: downloads (or reads) public
VGG-19 weights and converts them for stylejax.

    python scripts/convert_weights.py                       # Keras (original Caffe) weights
    python scripts/convert_weights.py --source torchvision
    python scripts/convert_weights.py --source path/to/vgg19.h5 --out weights/vgg19.msgpack
    python scripts/convert_weights.py --normalize DIR --out weights/vgg19_normalized.msgpack

Status lines and progress bars go to stderr, the one-line result to stdout. A StylejaxError
(bad file, failed download, ...) becomes one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from stylejax.convert import DOWNLOADS, convert
from stylejax.errors import StylejaxError
from stylejax.weights import CAFFE, DEFAULT_PATH, TORCHVISION

PREPROCESS_CHOICES = {"caffe": CAFFE, "torchvision": TORCHVISION}


class _Bar:
    """A tqdm bar on stderr behind a library ``progress(done, total)`` callback; it opens on
    the first call (when the total is known) and disappears when closed."""

    def __init__(self, desc: str, **tqdm_kwargs):
        self._desc, self._kwargs, self._bar = desc, tqdm_kwargs, None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._desc, file=sys.stderr, leave=False,
                             **self._kwargs)
        self._bar.update(done - self._bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Download (or read) public VGG-19 weights and convert them for stylejax.")
    parser.add_argument(
        "--source", default="keras", metavar="keras|torchvision|PATH",
        help="'keras' (default: the original Caffe weights as published by Keras), "
             "'torchvision', or a local .h5/.pth file (format detected from its content); "
             "without a network, download the file yourself and pass its path")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help=f"where to write the converted file (default {DEFAULT_PATH})")
    parser.add_argument(
        "--preprocess", choices=sorted(PREPROCESS_CHOICES), default=None,
        help="override the input preprocessing recorded in the file (default: the one of "
             "the source: caffe for Keras files, torchvision for .pth files)")
    parser.add_argument(
        "--normalize", metavar="DIR", default=None,
        help="write Gatys et al.'s normalised VGG-19 instead: each filter scaled so that its "
             "mean activation over the images in DIR is 1 (a few hundred photographs, e.g. "
             "ImageNet validation images)")
    parser.add_argument("--normalize-size", type=int, default=224, metavar="PX",
                        help="calibration crop size in px (default 224)")
    return parser


def _say(sentence: str) -> None:
    print(sentence, file=sys.stderr)


def main(argv=None) -> int:
    """Runs the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status:
    0 written, 2 refused (one ``error:`` line on stderr, nothing written), 130 interrupted."""
    args = build_parser().parse_args(argv)
    published = DOWNLOADS.get(args.source)
    try:
        with _Bar(published.filename if published else "download", unit="B", unit_scale=True,
                  unit_divisor=1024) as download_bar, \
                _Bar("calibrating", unit="image") as calibration_bar:
            result = convert(args.source, args.out,
                             preprocess=PREPROCESS_CHOICES.get(args.preprocess),
                             normalize=args.normalize, normalize_size=args.normalize_size,
                             progress=download_bar, calibration_progress=calibration_bar,
                             notify=_say)
    except StylejaxError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    print(f"Wrote {result['out']} from {result['source']} "
          f"(checksum {result['checksum'][:12]}).")
    if result.get("dead"):
        print(f"{result['dead']} filters never fired on the calibration images and keep "
              "their scale.")
    return 0

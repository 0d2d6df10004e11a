#!/usr/bin/env python
"""Downloads public VGG-19 weights and converts them for stylejax (see `stylejax.cli.convert`).

    python scripts/convert_weights.py                       # Keras (original Caffe) weights
    python scripts/convert_weights.py --source torchvision
    python scripts/convert_weights.py --source path/to/vgg19.h5 --out weights/vgg19.msgpack

Offline: download the file yourself (the error message gives its address and hash) and pass
it with --source PATH.
"""

import sys

import _bootstrap  # noqa: F401

from stylejax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())

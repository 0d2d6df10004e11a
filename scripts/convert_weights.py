#!/usr/bin/env python
"""Downloads public VGG-19 weights and converts them for stylejax (see `stylejax.convert`).

    python scripts/convert_weights.py                       # Keras (original Caffe) weights
    python scripts/convert_weights.py --source torchvision
    python scripts/convert_weights.py --source path/to/vgg19.h5 --out weights/vgg19.msgpack
"""

import sys

try:
    import stylejax  # noqa: F401
except ImportError:  # run from a checkout without installing
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylejax.convert import main

if __name__ == "__main__":
    sys.exit(main())

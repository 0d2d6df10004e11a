"""Converts public VGG-19 weight files to stylejax's format (``weights/vgg19.msgpack``).

Sources (see DESIGN.md, "Weights"), one reader module each:

* `stylejax.convert.keras`: Keras ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (the
  original Oxford/Caffe weights; BGR, 0-255, mean-subtracted input), in the 2016, Keras 3
  and native ``.weights.h5`` layouts.
* `stylejax.convert.torchvision`: torchvision ``vgg19-dcbb9e9d.pth`` (RGB, mean/std input),
  in torch's legacy (pre-zip) serialization or the zip archive of newer ``torch.save``, read
  without torch through the allow-list unpickler of `stylejax.convert.unpickle`.

`stylejax.convert.files` tells the formats apart by their leading bytes;
`stylejax.convert.downloads` knows the published addresses and hashes and downloads into
``$STYLEJAX_CACHE`` (default ``~/.cache/stylejax``), checking the hash before use;
`stylejax.convert.pipeline` ties them together (`convert`). The library prints nothing:
progress and status go to callbacks. The command line is `stylejax.cli.convert`
(``python scripts/convert_weights.py [--source keras|torchvision|PATH] [--out PATH]``).
"""

from stylejax.convert.downloads import (DOWNLOADS, KERAS_NOTOP, KERAS_TOP, KNOWN_FILES,
                                        TEST_URL_ENV, TORCHVISION_VGG19, Published, cache_dir,
                                        download, expected_hash, fetch, file_hashes)
from stylejax.convert.files import detect_format
from stylejax.convert.keras import read_keras_h5
from stylejax.convert.pipeline import PREPROCESS, convert, read_weights
from stylejax.convert.torchvision import TORCHVISION_CONV_INDICES, read_torchvision_pth

__all__ = [
    "DOWNLOADS", "KERAS_NOTOP", "KERAS_TOP", "KNOWN_FILES", "PREPROCESS", "TEST_URL_ENV",
    "TORCHVISION_CONV_INDICES", "TORCHVISION_VGG19", "Published", "cache_dir", "convert",
    "detect_format", "download", "expected_hash", "fetch", "file_hashes", "read_keras_h5",
    "read_torchvision_pth", "read_weights",
]

"""stylejax: neural style transfer (Gatys, Ecker & Bethge, CVPR 2016) as a functional JAX program.

The public API, re-exported; importing it changes no process-wide setting and loads no
command-line code (that is `stylejax.cli`).
"""

from stylejax.batch import BatchResult, stylize_batch
from stylejax.colour import match_color, match_luminance, restore_chroma
from stylejax.cpu.kernels import prepare_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution
from stylejax.losses import (LossConfig, gram, loss_fn, loss_terms, make_targets, masked_gram,
                             temporal_term)
from stylejax.normalize import normalize_vgg
from stylejax.presets import preset_config
from stylejax.run import Epoch, StylizeResult, stylize, stylize_epochs
from stylejax.solvers import SolverConfig, fresh_state, init_state, run_epoch
from stylejax.tiling import TiledResult, stylize_tiled
from stylejax.temporal import temporal_loss, warp
from stylejax.video import VideoResult, stylize_video
from stylejax.vgg import LAYERS, extract_features
from stylejax.weights import Vgg19, load_vgg19

__all__ = [
    "LAYERS", "LossConfig", "Execution", "SolverConfig", "StylejaxError", "StylizeResult",
    "Epoch", "Vgg19", "extract_features", "fresh_state", "gram", "init_state", "load_vgg19",
    "loss_fn", "loss_terms", "make_targets", "preset_config", "run_epoch", "stylize",
    "stylize_epochs", "match_color", "match_luminance", "restore_chroma", "masked_gram",
    "normalize_vgg", "BatchResult", "stylize_batch", "TiledResult", "stylize_tiled",
    "prepare_kernels", "VideoResult", "stylize_video", "temporal_loss", "temporal_term", "warp",
]

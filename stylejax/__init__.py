"""stylejax: neural style transfer (Gatys, Ecker & Bethge, CVPR 2016) as a functional JAX program."""

from stylejax.batch import BatchResult, stylize_batch
from stylejax.colour import match_color, match_luminance, restore_chroma
from stylejax.driver import StylizeResult, stylize
from stylejax.errors import StylejaxError
from stylejax.losses import (LossConfig, gram, loss_fn, loss_terms, make_targets, masked_gram,
                              preset_config)
from stylejax.normalize import normalize_vgg
from stylejax.solvers import SolverConfig, fresh_state, init_state, run_epoch
from stylejax.vgg import LAYERS, extract_features, prepare_kernels, with_winograd_kernels
from stylejax.weights import Vgg19, load_vgg19

__all__ = [
    "LAYERS", "LossConfig", "SolverConfig", "StylejaxError", "StylizeResult", "Vgg19",
    "extract_features", "fresh_state", "gram", "init_state", "load_vgg19", "loss_fn", "loss_terms",
    "make_targets", "preset_config", "run_epoch", "stylize",
    "match_color", "match_luminance", "restore_chroma", "masked_gram", "normalize_vgg",
    "BatchResult", "stylize_batch", "prepare_kernels", "with_winograd_kernels",
]

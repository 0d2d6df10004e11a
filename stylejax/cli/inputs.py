"""Loading a command line's images and masks, sized as its flags say."""

from __future__ import annotations

import numpy as np

import stylejax.images as imageio
from stylejax.cli.options import RunConfig
from stylejax.errors import StylejaxError
from stylejax.run import check_stages, stage_sizes


def prepare_images(rc: RunConfig, content_path, style_path, max_pixels):
    """Loads and resizes the content and style images; returns float [H, W, 3] arrays.

    ``style_path`` may be a list; then the styles come back as a list. Every coarse-to-fine
    scale is checked for images too small for the layers.
    """
    several = isinstance(style_path, (list, tuple))
    content = imageio.load_image(content_path, max_pixels)
    styles = [imageio.load_image(p, max_pixels) for p in (style_path if several
                                                          else [style_path])]
    h, w = imageio.fit_size(*content.shape[:2], rc.size, rc.edge)
    content = imageio.resize(content, h, w)
    for i, style in enumerate(styles):
        if rc.style_to_content_size:
            styles[i] = imageio.resize(style, h, w)
        else:
            styles[i] = imageio.resize(style, *imageio.fit_size(
                *style.shape[:2], max(1, round(max(h, w) * rc.style_scale)), "long"))
    hint = " (raise the smallest --scales value or --style-scale)" if rc.scales else \
        " (raise --size or --style-scale)"
    check_stages(content.shape, [s.shape for s in styles],
                 stage_sizes(h, w, rc.scales, rc.edge), rc.loss.layers, None, hint)
    return (content, styles) if several else (content, styles[0])


def _mask_for(path, shape, what, max_pixels, regions=None):
    """Loads mask(s) for an image of ``shape``: [h, w], or [regions, h, w] from a label image."""
    mask = imageio.load_mask(path, max_pixels)
    mh, mw = mask.shape
    h, w = shape[:2]
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise StylejaxError(f"The {what} {path} is {mw}x{mh} px, a different shape from its "
                            f"image ({w}x{h} after resizing): draw it over that image.")
    masks = imageio.label_masks(mask, regions) if regions else mask[None]
    out = np.stack([imageio.resize_mask(m, h, w) for m in masks])
    return out if regions else out[0]


def prepare_masks(args, content, styles, max_pixels):
    """``(content_masks [R, H, W] or None, style_masks [[h, w] or None] or None)`` from the
    --content-mask and --style-masks paths, resized to the prepared images."""
    content_masks = style_masks = None
    if args.content_mask:
        if len(args.content_mask) == 1:
            content_masks = _mask_for(args.content_mask[0], content.shape, "content mask",
                                      max_pixels, len(styles))
        else:
            content_masks = np.stack([_mask_for(p, content.shape, "content mask", max_pixels)
                                      for p in args.content_mask])
    if args.style_masks:
        style_masks = [None if p.lower() == "none" else
                       _mask_for(p, s.shape, "style mask", max_pixels)
                       for p, s in zip(args.style_masks, styles)]
    return content_masks, style_masks

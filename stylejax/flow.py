"""Optical flow between video frames with OpenCV (`opencv-python-headless`, the ``video``
extra): DIS (Kroeger et al. 2016; ``dis-medium``, OpenCV's MEDIUM preset and the default, and
``dis-fine``: that preset refined down to full resolution with denser patches, as OpenCV has no
FINE preset) or Farnebäck (2003). Imported only by the video path (`stylejax.__init__` does
not import it).

Flows follow OpenCV's (and `stylejax.video`'s) convention: ``optical_flow(a, b)`` [H, W, 2]
holds at each pixel p of ``a`` the displacement (dx, dy) with ``a(p) ≈ b(p + f(p))``.
"""

from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np

from stylejax.errors import StylejaxError

METHODS = ("dis-medium", "dis-fine", "farneback")
DEFAULT_METHOD = "dis-medium"



def _dis(method: str):
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if method == "dis-fine":  # MEDIUM stops at half resolution with a 3 px patch stride
        dis.setFinestScale(0)
        dis.setPatchStride(2)
        dis.setGradientDescentIterations(50)
    return dis


def _grey(image) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> [H, W] uint8 luminance (what OpenCV's flows take)."""
    rgb = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise StylejaxError(f"Unknown optical flow {method!r}: use one of {', '.join(METHODS)}.")
    return method


def optical_flow(a, b, method: str = DEFAULT_METHOD) -> np.ndarray:
    """The flow [H, W, 2] float32 of image ``a`` into image ``b`` (both [H, W, 3] float in
    [0, 1], one size), by ``method``: "dis-medium", "dis-fine" or "farneback" (OpenCV's
    ``calcOpticalFlowFarneback(pyr_scale=0.5, levels=3, winsize=15, iterations=3,
    poly_n=5, poly_sigma=1.2)``)."""
    check_method(method)
    ga, gb = _grey(a), _grey(b)
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    else:
        flow = _dis(method).calc(ga, gb, None)
    return np.asarray(flow, np.float32)


def flow_function(method: str = DEFAULT_METHOD) -> Callable:
    """``flow(a, b)`` by ``method``: the ``flow`` argument of `stylejax.video.stylize_video`."""
    check_method(method)
    return lambda a, b: optical_flow(a, b, method)


def video_flows(frames, method: str = DEFAULT_METHOD,
                progress: Optional[Callable] = None) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward), each [T−1, H, W, 2] float32, for ``frames`` [T, H, W, 3]: entry
    k−1 is the flow of frame k−1 into frame k, and of frame k into frame k−1.
    ``progress()`` is called after each pair of frames."""
    check_method(method)
    t, h, w = np.shape(frames)[:3]
    forward = np.zeros((max(t - 1, 0), h, w, 2), np.float32)
    backward = np.zeros_like(forward)
    for k in range(1, t):
        forward[k - 1] = optical_flow(frames[k - 1], frames[k], method)
        backward[k - 1] = optical_flow(frames[k], frames[k - 1], method)
        if progress is not None:
            progress()
    return forward, backward

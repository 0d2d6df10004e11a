#!/usr/bin/env python
"""Stylize a video: `python scripts/stylize_video.py INPUT STYLE --out DIR [flags]` (see --help)."""

import sys

import _bootstrap  # noqa: F401

from stylejax.cli.video import main

if __name__ == "__main__":
    sys.exit(main())

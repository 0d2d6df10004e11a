#!/usr/bin/env python
"""Stylize an image: `python scripts/stylize.py CONTENT STYLE [flags]` (see --help)."""

import sys

import _bootstrap  # noqa: F401

from stylejax.cli.stylize import main

if __name__ == "__main__":
    sys.exit(main())

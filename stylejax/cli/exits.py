"""How every command line ends: a `StylejaxError` as one ``error:`` line and exit 2, Ctrl-C as
one line saying what was kept and exit 130; never a traceback for either."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from stylejax.errors import StylejaxError


def guarded(body: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]],
            interrupted: str) -> int:
    """``body(argv)``'s exit status, with the errors a user can act on turned into one line on
    stderr (``interrupted``: what Ctrl-C leaves behind, one sentence)."""
    try:
        return body(argv)
    except StylejaxError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; {interrupted}", file=sys.stderr)
        return 130

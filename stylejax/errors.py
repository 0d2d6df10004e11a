"""The one exception type a user is meant to read."""


class StylejaxError(Exception):
    """A problem the user can act on; its message is one sentence saying what to do.

    Command-line entry points print the message (no traceback) and exit non-zero.
    """

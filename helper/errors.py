"""User-facing errors: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing or mismatched file, no data offline).

    The message is a single line that says what is wrong, which file or flag, and what to do.
    Entry scripts wrap their ``main`` with :func:`exit_on_user_error`.
    """


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Run ``main``; on :class:`UserError` print ``error: <message>`` to stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper

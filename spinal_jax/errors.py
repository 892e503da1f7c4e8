"""The one exception type for expected failures a user can fix (bad config, missing data, damaged files).

The command-line entry points (``train.py``, ``python -m spinal_jax.evaluate``, ``.convert``, ``.predict``,
``.reproduce``) print its message on one line and exit with status 2, without a traceback
(``SPINAL_TRACEBACK=1`` shows it). Its message names the problem and the fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

TRACEBACK_ENV = "SPINAL_TRACEBACK"


class UserError(ValueError):
    """An expected failure: the message says what is wrong and how to fix it.

    A ValueError, so callers that catch bad values keep working."""


def exit_with_message(err: BaseException, prefix: str = "error") -> NoReturn:
    """Print ``prefix: message`` to stderr and exit 2 (re-raise when ``$SPINAL_TRACEBACK`` is set)."""
    if os.environ.get(TRACEBACK_ENV):
        raise err
    print(f"{prefix}: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_cli(main: Callable[[], Any], expected: tuple[type[BaseException], ...] = ()) -> Any:
    """Run ``main()``; a :class:`UserError` (or one of ``expected``) becomes one line and exit status 2."""
    try:
        return main()
    except (UserError, *expected) as err:
        exit_with_message(err)

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


def cli_logging() -> None:
    """Command-line logging: spinal_jax's own messages at INFO with a time stamp, other libraries' (absl,
    Orbax: chatty) at WARNING."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    package_log = logging.getLogger("spinal_jax")
    package_log.setLevel(logging.INFO)
    package_log.addHandler(handler)
    package_log.propagate = False


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

"""The data layer's two expected failures; both are :class:`spinal_jax.errors.UserError` (the command-line
entry points print the message on one line and exit with status 2) and ``ValueError`` (for callers that
catch that)."""

from __future__ import annotations

from spinal_jax.errors import UserError


class DataConfigError(UserError, ValueError):
    """A data config field has a bad value; the message names the field and the values it accepts."""


class DataPreparationError(UserError, ValueError):
    """A data set cannot be found, prepared or read; the message names the files and the fix."""

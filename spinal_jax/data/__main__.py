"""Prepare a data set: ``python -m spinal_jax.data [--replace] FIELD=VALUE ...``.

FIELDs are data config fields (``default_data_config()``), e.g. ``name=mnist data_dir=/data/tfds
manual_dir=/data/mnist``, or for Quick Draw ``classes=apple,cat per_class_cap=1000``; tuple fields take
comma-separated values. The data set is prepared if it is not yet; ``--replace`` deletes the prepared
copy first and prepares it again (after a damaged or incomplete copy). Prints the prepared folder.
A bad field or missing file is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from spinal_jax.data.config import default_data_config, validate_data_config
from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.prepare import prepare_dataset
from spinal_jax.errors import run_cli

_FLOAT_TUPLES = ("mean", "std")


def parse_field(assignment: str) -> tuple[str, Any]:
    """``'FIELD=VALUE'`` -> (field, value typed like the field's default)."""
    key, sep, text = assignment.partition("=")
    defaults = default_data_config()
    if not sep or key not in defaults:
        raise DataConfigError(
            f"{assignment!r}: give FIELD=VALUE with a data config field; known fields: {sorted(defaults)}."
        )
    default = defaults[key]
    try:
        if isinstance(default, bool):
            return key, {"true": True, "false": False}[text.lower()]
        if isinstance(default, tuple):
            parts = [p for p in text.split(",") if p]
            return key, tuple(float(p) for p in parts) if key in _FLOAT_TUPLES else tuple(parts)
        return key, type(default)(text)
    except (KeyError, ValueError) as err:
        raise DataConfigError(f"data.{key}: {text!r} is not a {type(default).__name__}.") from err


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), prepare, and print the prepared version folder."""
    parser = argparse.ArgumentParser(
        prog="python -m spinal_jax.data",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("fields", nargs="+", metavar="FIELD=VALUE")
    parser.add_argument("--replace", action="store_true", help="delete the prepared copy and prepare again")
    args = parser.parse_args(argv)
    config = validate_data_config({**dict(parse_field(a) for a in args.fields), "prepare": True})
    print(prepare_dataset(config, replace=args.replace).path)


if __name__ == "__main__":
    run_cli(main)

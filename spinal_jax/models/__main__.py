"""Print every registered model with its parameter counts for both heads.

    python -m spinal_jax.models [--num-classes N] [--json]

SpinalNet's claim is about weights, so the table shows the head's parameters and its share of the model.
Counts are of trainable parameters (BatchNorm scale/bias included, running statistics not), from
``jax.eval_shape``: nothing is allocated or computed.
"""

from __future__ import annotations

import argparse
import json

from spinal_jax.models.summary import model_table


def _format(rows: list[dict]) -> str:
    header = (
        f"{'model':<18} {'classes':>7} {'input':>11} {'default total':>14} {'default head':>13} "
        f"{'share':>6} {'spinal total':>13} {'spinal head':>12} {'share':>6} {'head change':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        d, s = r["default"], r["spinal"]
        change = (s["head"] - d["head"]) / d["head"] if d["head"] else float("nan")
        lines.append(
            f"{r['name']:<18} {r['num_classes']:>7} {'x'.join(map(str, r['input_shape'])):>11} "
            f"{d['total']:>14,} {d['head']:>13,} {d['head'] / d['total']:>6.1%} "
            f"{s['total']:>13,} {s['head']:>12,} {s['head'] / s['total']:>6.1%} {change:>+11.1%}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes for every model (default: each model's usual count)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = model_table(args.num_classes)
    print(json.dumps(rows, indent=1) if args.json else _format(rows))


if __name__ == "__main__":
    main()

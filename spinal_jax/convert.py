"""Convert torchvision/timm ImageNet weights into an Orbax checkpoint of the Flax backbone.

    python -m spinal_jax.convert wide_resnet101_2-32ee1156.pth ckpt/wrn101 --arch wide_resnet101_2

Writes ``DST/state`` (Orbax StandardSave of ``{'params', 'batch_stats'}``) and ``DST/meta`` (JSON:
arch, num_classes, head, source). Train from it with ``--config.pretrained=DST``. A file that cannot be
converted (missing, empty, damaged, of another arch) is reported on stderr as ``error: ...`` (the
file, the problem and the fix), exit status 2, without a traceback (``SPINAL_TRACEBACK=1`` shows it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

import jax

from spinal_jax.errors import TRACEBACK_ENV, UserError
from spinal_jax.pretrained import SUPPORTED_ARCHS, convert_file, save_converted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter on ``argv`` (default: ``sys.argv[1:]``); returns the exit status (0, or 2 on
    an error the user can fix, printed as one ``error:`` message on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m spinal_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="torchvision/timm weights: .pth, .pt, .bin or .safetensors")
    parser.add_argument("dst", help="output directory (must not exist)")
    parser.add_argument(
        "--arch", choices=SUPPORTED_ARCHS, help="architecture (default: detected from the file)"
    )
    args = parser.parse_args(argv)
    try:
        variables, arch = convert_file(args.src, args.arch)
        meta = save_converted(args.dst, variables, arch, {"source": os.path.basename(args.src)})
    except (UserError, ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    print(f"{arch}: {count:,} parameters, {meta['num_classes']} classes -> {os.path.abspath(args.dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

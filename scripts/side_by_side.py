"""Our training-step benchmark and the PyTorch reference harness, in one call on one card, with ratios.

    python scripts/side_by_side.py --suite mnist     # VGG-5 / SpinalVGG-5, batch 100
    python scripts/side_by_side.py --suite imagenet  # ResNet-50 (+ spinal), batch 256, bf16
    python scripts/side_by_side.py --suite all --json side_by_side.json

The PyTorch harness is ``torch_anchor.py`` from ``--anchors`` (default ``<repo>/../shared/anchors``);
it runs in a subprocess, then ours runs in this process, so both see the same card and the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spinal_jax import bench  # noqa: E402

# (torch anchor model, torch modes, our workload, batch, our dtype, our modes, recipe)
SUITES = {
    "mnist": [
        ("vgg5", "fp32,amp", "vgg5:default", 100, "float32,bfloat16", "step,scan", "adam"),
        ("vgg5_spinal", "fp32,amp", "vgg5:spinal", 100, "float32,bfloat16", "step,scan", "adam"),
    ],
    "imagenet": [
        ("resnet50", "amp,compile", "resnet50:default", 256, "bfloat16", "step", "sgd"),
        ("resnet50_spinal", "amp,compile", "resnet50:spinal", 256, "bfloat16", "step", "sgd"),
    ],
    "vgg16": [
        ("vgg16", "amp", "vgg16_bn:default", 128, "bfloat16", "step", "sgd"),
        # The anchor's VGG-16 spinal head: w=4096, dropout 0.5, no BatchNorm.
        (
            "vgg16_spinal",
            "amp",
            "vgg16_bn:spinal:spinal_width=4096:spinal_bn=false",
            128,
            "bfloat16",
            "step",
            "sgd",
        ),
    ],
}
# The headline workload alone: ResNet-50 + spinal head against torch.compile + AMP.
SUITES["resnet50_spinal"] = [
    ("resnet50_spinal", "compile", "resnet50:spinal", 256, "bfloat16", "step", "sgd")
]
SUITES["all"] = SUITES["mnist"] + SUITES["imagenet"] + SUITES["vgg16"]


def run_torch(anchors: Path, model: str, modes: str, batch: int, steps: int, windows: int) -> list[dict]:
    cmd = [
        sys.executable,
        str(anchors / "torch_anchor.py"),
        "--models",
        model,
        "--modes",
        modes,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--windows",
        str(windows),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not records:
        records = [{"impl": "torch", "model": model, "error": out.stderr[-500:]}]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="mnist", choices=sorted(SUITES))
    parser.add_argument(
        "--anchors", default=os.environ.get("SPINAL_ANCHORS", str(REPO.parent / "shared" / "anchors"))
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    env = bench.environment()
    print(json.dumps(env), flush=True)
    rows = []
    for torch_model, torch_modes, workload, batch, dtypes, modes, recipe in SUITES[args.suite]:
        torch_records = run_torch(
            Path(args.anchors), torch_model, torch_modes, batch, args.steps, args.windows
        )
        for r in torch_records:
            print(json.dumps(r), flush=True)
        best_torch = max((r.get("img_s_median", 0) for r in torch_records), default=0)
        for dtype in dtypes.split(","):
            for mode in modes.split(","):
                ours = bench.run_workload(
                    bench.Workload.parse(workload),
                    batch=batch,
                    dtype=dtype,
                    mode=mode,
                    steps_per_window=args.steps,
                    windows=args.windows,
                    recipe=recipe,
                )
                print(json.dumps(ours), flush=True)
                rows.append(
                    {
                        "torch": torch_records,
                        "jax": ours,
                        "ratio_vs_best_torch": round(ours["img_s_median"] / best_torch, 2)
                        if best_torch
                        else None,
                    }
                )
    print(
        f"\n{'workload':<52} {'mode':>5} {'dtype':>9} {'jax img/s':>10} {'best torch img/s':>17} {'ratio':>6}"
    )
    for row in rows:
        j = row["jax"]
        best = max((r.get("img_s_median", 0) for r in row["torch"]), default=0)
        print(
            f"{j['workload']:<52} {j['mode']:>5} {j['dtype']:>9} {j['img_s_median']:>10,.0f} {best:>17,.0f} "
            f"{row['ratio_vs_best_torch'] or float('nan'):>6.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

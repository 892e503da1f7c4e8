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


def config(spec: str) -> str:
    """``--config=`` a file of configs/ (with its ``:ARG``), wherever this script is run from."""
    return f"--config={REPO / 'configs' / spec}"


# The ImageNet rows train as the anchor does: SGD momentum 0.9, weight decay 1e-4, no Nesterov.
RESNET = ("--config.data.batch_size=256", "--config.optim.nesterov=False")
# VGG-16-BN at 224 x 224 with 1000 classes, on the transfer recipe (SGD momentum 0.9) with the anchor's decay.
VGG16 = (
    "--config.model.name=vgg16_bn",
    "--config.model.num_classes=1000",
    "--config.data.image_size=224",
    "--config.data.batch_size=128",
    "--config.optim.weight_decay=0.0001",
)
# (torch anchor model, torch modes, our bench arguments: a config file[:ARG], its overrides and the sweeps)
SUITES = {
    "mnist": [
        (
            "vgg5",
            "fp32,amp",
            (config("mnist_vgg5.py:default"), "--dtypes=float32,bfloat16", "--modes=step,scan"),
        ),
        (
            "vgg5_spinal",
            "fp32,amp",
            (config("mnist_vgg5.py:spinal"), "--dtypes=float32,bfloat16", "--modes=step,scan"),
        ),
    ],
    "imagenet": [
        (
            "resnet50",
            "amp,compile",
            (config("imagenet_resnet50.py:default"), *RESNET, "--dtypes=bfloat16"),
        ),
        (
            "resnet50_spinal",
            "amp,compile",
            (config("imagenet_resnet50.py:spinal"), *RESNET, "--dtypes=bfloat16"),
        ),
    ],
    "vgg16": [
        ("vgg16", "amp", (config("transfer_cifar10_wrn.py:default"), *VGG16, "--dtypes=bfloat16")),
        # The anchor's VGG-16 spinal head: w=4096, dropout 0.5, no BatchNorm.
        (
            "vgg16_spinal",
            "amp",
            (
                config("transfer_cifar10_wrn.py:spinal"),
                *VGG16,
                "--config.model.kwargs.spinal_width=4096",
                "--config.model.kwargs.spinal_bn=False",
                "--dtypes=bfloat16",
            ),
        ),
    ],
}
# The headline workload alone: ResNet-50 + spinal head against torch.compile + AMP.
SUITES["resnet50_spinal"] = [
    (
        "resnet50_spinal",
        "compile",
        (config("imagenet_resnet50.py:spinal"), *RESNET, "--dtypes=bfloat16"),
    )
]
SUITES["all"] = SUITES["mnist"] + SUITES["imagenet"] + SUITES["vgg16"]


def batch_size(bench_args: tuple[str, ...]) -> int:
    """The global batch our bench arguments train with (the config's unless overridden), for the anchor."""
    config = bench.workload_configs(bench.parse_flags(bench_args))[0]
    return config.data.batch_size


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
    for torch_model, torch_modes, bench_args in SUITES[args.suite]:
        torch_records = run_torch(
            Path(args.anchors), torch_model, torch_modes, batch_size(bench_args), args.steps, args.windows
        )
        for r in torch_records:
            print(json.dumps(r), flush=True)
        best_torch = max((r.get("img_s_median", 0) for r in torch_records), default=0)
        timing = (f"--steps={args.steps}", f"--windows={args.windows}")
        for ours in bench.run_benchmarks(bench.parse_flags([*bench_args, *timing])):
            ratio = round(ours["img_s_median"] / best_torch, 2) if best_torch else None
            rows.append({"torch": torch_records, "jax": ours, "ratio_vs_best_torch": ratio})
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

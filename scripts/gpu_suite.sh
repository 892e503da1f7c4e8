#!/usr/bin/env bash
# The GPU measurements of docs/PERFORMANCE.md, ours and the PyTorch anchor in the same call on the same card.
#
#   bash scripts/gpu_suite.sh OUTDIR STAGE...     stages: env mnist resnet resnet_torch resnet_spinal_torch protocol
#
# Expects: python3 with jax[cuda], flax, optax, torch (the GPU image); ml_collections etc. either installed
# or carried as wheels in .whl/ (installed into /tmp/site); the PyTorch harnesses in $ANCHORS (default
# ../shared/anchors, or .gpu/anchors when carried); MNIST prepared for tfds in $SPINAL_TFDS_DIR for the
# protocol stage (e.g. SPINAL_TFDS_DIR=.gpu/tfds, carried).
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUTDIR STAGE...}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
anchors=${ANCHORS:-../shared/anchors}
[ -d "$anchors" ] || anchors=.gpu/anchors
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    env)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      python3 -c "import jax, flax, optax, torch; print(jax.__version__, flax.__version__, optax.__version__, \
torch.__version__, jax.devices())" ;;
    mnist)  # VGG-5 / SpinalVGG-5, batch 100: torch eager fp32/AMP vs ours step/scan fp32/bf16
      python3 scripts/side_by_side.py --suite mnist --anchors "$anchors" --steps 100 --windows 5 \
        --json "$out/side_by_side_mnist.json" ;;
    resnet)  # ResNet-50 +/- spinal head, batch 256, bf16: ours only
      python3 -m spinal_jax.bench --config configs/imagenet_resnet50.py --heads spinal,default \
        --config.data.batch_size=256 --config.optim.nesterov=False --dtypes bfloat16 --modes step \
        --steps 20 --windows 5 --json "$out/bench_resnet.json" ;;
    resnet_torch)  # the same, side by side with torch.compile + AMP + channels_last
      python3 scripts/side_by_side.py --suite imagenet --anchors "$anchors" --steps 20 --windows 5 \
        --json "$out/side_by_side_imagenet.json" ;;
    resnet_spinal_torch)  # ResNet-50 + spinal head, ours vs torch.compile + AMP bf16 + channels_last
      python3 scripts/side_by_side.py --suite resnet50_spinal --anchors "$anchors" --steps 20 --windows 5 \
        --json "$out/side_by_side_resnet50_spinal.json" ;;
    protocol)  # SpinalVGG-5 MNIST reference protocol: 200 epochs on all 60k, scanned, device augmentation, bf16
      rm -rf /tmp/protocol
      timeout "${PROTOCOL_TIMEOUT:-330}" python3 -m spinal_jax.bench --config configs/mnist_vgg5_fast.py:bf16,paper \
        --modes tta --target 0.995 --workdir /tmp/protocol --json "$out/protocol.json" 2>&1 | grep -v -i warn | tail -20
      cp /tmp/protocol/metrics.jsonl "$out/protocol_metrics.jsonl" 2>/dev/null ;;
    *) echo "unknown stage $stage" ;;
  esac
done

#!/usr/bin/env bash
# The GPU path, checked on a machine with an NVIDIA GPU and network access:
#   benchmarks/gpu_check.sh /path/to/mirror [dataset]
# Installs TensorFlow's CUDA build (the `gpu` extra), trains one short run, and
# fails unless training ran on the GPU. Prints the summary's train block.
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${1:?usage: $0 MIRROR_DIR [DATASET]}
dataset=${2:-mnist}
make install
.venv/bin/python -m pip install --quiet -e ".[gpu]"
.venv/bin/python -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('GPUs:', gpus); assert gpus"
store=$(mktemp -d)
.venv/bin/mnist-pipeline run --dataset "$dataset" --mirror "$mirror" --epochs 3 \
  --artifacts-dir "$store" --json | tail -n 1 >"$store/summary.json"
.venv/bin/python - "$store/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
print(json.dumps(summary["train"], indent=1), summary["metrics"])
assert summary["train"]["device"] == "GPU", "training did not run on the GPU"
PY

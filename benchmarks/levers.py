"""Training throughput of the tutorial's CNN under each lever, measured side by side.

    python benchmarks/levers.py --mirror /usr/share/datasets/fashion-mnist --dataset fashion_mnist \
        [--images 16384] [--repeats 3] [--levers NAME ...]

Each lever is one way of running the same model (tasks/train.py's build_model,
Adam, sparse cross-entropy) over the same images: a batch size, XLA
(`jit_compile`), `steps_per_execution`, TensorFlow's thread settings, a cached
tf.data pipeline, TensorFlow's oneDNN kernels (`TF_ENABLE_ONEDNN_OPTS`). Each runs in a fresh process (thread settings and XLA are
per process), the levers in a rotated order on each repeat, and reports
training images per second over two epochs after a warm-up, as GFLOP/s
(about 14.8 MFLOP per image, forward and backward) against a matmul peak
measured in the same run. Throughput only: which recipe reaches what accuracy
is tune_defaults.py's and vs_keras.py's question.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from pathlib import Path

import pandas as pd

from vs_keras import FLOP_PER_IMAGE

_HERE = Path(__file__).resolve().parent
# The children import the project's modules and this folder's.
_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_HERE.parent), str(_HERE), os.environ.get("PYTHONPATH", "")])}

# TensorFlow's oneDNN kernels, off by default on x86 CPUs without AVX-512 (this machine's).
_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "1"}
_NO_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "0"}

# name: (batch size, compile options, threads (intra, inter) or None, cache the pipeline, environment)
LEVERS = {
    "batch 32 (the tutorial)": (32, {}, None, False, _NO_ONEDNN),
    "batch 32, steps_per_execution 16": (32, {"steps_per_execution": 16}, None, False, _NO_ONEDNN),
    "batch 32, jit_compile": (32, {"jit_compile": True}, None, False, _NO_ONEDNN),
    "batch 128": (128, {}, None, False, _NO_ONEDNN),
    "batch 256": (256, {}, None, False, _NO_ONEDNN),
    "batch 256, steps_per_execution 16": (256, {"steps_per_execution": 16}, None, False, _NO_ONEDNN),
    "batch 256, jit_compile": (256, {"jit_compile": True}, None, False, _NO_ONEDNN),
    "batch 256, 2 intra-op / 1 inter-op threads": (256, {}, (2, 1), False, _NO_ONEDNN),
    "batch 256, tf.data cache": (256, {}, None, True, _NO_ONEDNN),
    "batch 512": (512, {}, None, False, _NO_ONEDNN),
    "batch 32, oneDNN": (32, {}, None, False, _ONEDNN),
    "batch 64, oneDNN": (64, {}, None, False, _ONEDNN),
    "batch 128, oneDNN": (128, {}, None, False, _ONEDNN),
    "batch 256, oneDNN": (256, {}, None, False, _ONEDNN),
    "batch 512, oneDNN": (512, {}, None, False, _ONEDNN),
}

_CHILD = """
import json, sys, time
import numpy as np
import tensorflow as tf
import keras
from pathlib import Path
from tasks import idx
from tasks.train import build_model
batch, options, threads, cache, mirror, dataset, images = json.loads(sys.argv[1])
if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads[0])
    tf.config.threading.set_inter_op_parallelism_threads(threads[1])
x, y = (idx.read(idx.locate(Path(mirror), idx.FILES[role]), role).array for role in ("train_images", "train_labels"))
x, y = (x[:images].reshape(-1, 28, 28, 1) / 255.0).astype("float32"), y[:images]
keras.utils.set_random_seed(0)
model = build_model()
model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **options)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
data = (data.cache() if cache else data).prefetch(tf.data.AUTOTUNE)
model.fit(data.take(10), epochs=1, verbose=0)  # traces and compiles
start = time.perf_counter()
model.fit(data, epochs=2, verbose=0)
print(json.dumps({"images_per_s": 2 * len(y) / (time.perf_counter() - start)}))
"""


def _peak() -> float:
    """The faster of TensorFlow's two matmul kernels (Eigen's, oneDNN's), in GFLOP/s."""
    code = "from vs_keras import matmul_peak_gflops; print(matmul_peak_gflops())"
    found = []
    for environment in (_NO_ONEDNN, _ONEDNN):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**_ENV, **environment})
        found.append(float(done.stdout.strip().splitlines()[-1]))
    return max(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--images", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levers", nargs="+", choices=sorted(LEVERS), default=list(LEVERS))
    args = parser.parse_args()

    rows, peaks = [], []
    for repeat in range(args.repeats):
        peaks.append(_peak())
        order = args.levers[repeat % len(args.levers):] + args.levers[:repeat % len(args.levers)]
        for name in order:
            batch, options, threads, cache, environment = LEVERS[name]
            spec = json.dumps([batch, options, threads, cache, args.mirror, args.dataset, args.images])
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True,
                                  env={**_ENV, **environment})
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
            rows.append({"lever": name, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"{name}: {rows[-1]['images_per_s']:.0f} images/s ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)

    table = pd.DataFrame(rows).groupby("lever", sort=False)["images_per_s"].agg(["median", "min", "max"])
    table = table.reindex(args.levers)
    peak = float(pd.Series(peaks).median())
    table["vs batch 32"] = table["median"] / table["median"].iloc[0]
    table["GFLOP/s"] = table["median"] * FLOP_PER_IMAGE / 1e9
    table["of peak"] = (table["GFLOP/s"] / peak).map("{:.0%}".format)
    table = table.rename(columns={"median": "images/s", "min": "images/s min", "max": "images/s max"})
    print(f"{args.dataset}, {args.images} training images, {args.repeats} repeats (medians); "
          f"matmul peak {peak:.0f} GFLOP/s (median of {len(peaks)}, 2048 x 2048 float32)")
    print(table.to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()

"""The pipeline's train stage against the tutorial's plain Keras script, side by side on the same data.

    python benchmarks/vs_keras.py --mirror /usr/share/datasets/fashion-mnist --dataset fashion_mnist \
        [--seeds 0 1 2] [--epochs 10] [--recipe BATCH:RATE:SCHEDULE:EPOCHS ...]

Per seed, alternating which goes first, each in this process but one:
- script:   the tutorial's code (NumPy arrays, model.fit, Adam 1e-3, batch 32, test as validation),
            with the oneDNN kernels the pipeline turns on;
- script, TF defaults: the same code in a process of its own, as `python script.py` runs it
            (TensorFlow's defaults: oneDNN off on x86 CPUs without AVX-512);
- tutorial: the train stage at the tutorial's settings (--validation-split 0, constant 1e-3, batch 32);
- each recipe (default: the pipeline's defaults), validated on its held-out split.
Each is then scored on the test split. It prints epoch times and their ratios to
the script's, training time against the tutorial recipe's and the script's as shipped, test accuracy, and
the training throughput in GFLOP/s (about 14.8 MFLOP per image, forward and
backward) against a matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

FLOP_PER_IMAGE = 14.8e6  # forward and backward, the tutorial's CNN


def matmul_peak_gflops(size: int = 2048, repeats: int = 20) -> float:
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    tf.linalg.matmul(a, b).numpy()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        c = tf.linalg.matmul(a, b)
    c.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def keras_script(arrays: dict[str, np.ndarray], epochs: int, seed: int) -> dict:
    """The tutorial's script, as written there: scale, reshape, Sequential, compile, fit, evaluate."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x_train = (arrays["train_images"] / 255.0).reshape(-1, 28, 28, 1)
    x_test = (arrays["test_images"] / 255.0).reshape(-1, 28, 28, 1)
    y_train, y_test = arrays["train_labels"], arrays["test_labels"]
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test), callbacks=[Timer()], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"epoch_seconds": seconds, "test_accuracy": accuracy, "train_images": len(y_train)}


def script_as_shipped(arrays: dict[str, np.ndarray], epochs: int, seed: int, folder: str) -> dict:
    """keras_script in a new process with TensorFlow's own settings, not the pipeline's."""
    data = os.path.join(folder, "arrays.npz")
    if not os.path.exists(data):
        np.savez(data, **arrays)
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, __file__, "--script-only", data, str(epochs), str(seed)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the script's process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage(store: str, raw, validation_split: float, params) -> dict:
    """The pipeline's own stages, without Prefect: preprocess, train, evaluate."""
    from flows.stages import evaluate_model, preprocess_dataset, train_model

    data = preprocess_dataset.fn(store, raw, None, validation_split)
    model = train_model.fn(store, data, params)
    metrics = evaluate_model.fn(store, model, data)
    return {"epoch_seconds": model.epoch_seconds, "test_accuracy": metrics.test_accuracy,
            "validation_accuracy": model.validation_accuracy, "train_images": data.train_count}


def main() -> None:
    if sys.argv[1:2] == ["--script-only"]:  # script_as_shipped's process: nothing of the pipeline imported
        data, epochs, seed = sys.argv[2:]
        with np.load(data) as arrays:
            print(json.dumps(keras_script(dict(arrays), int(epochs), int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=10, help="the tutorial's epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", nargs="*", default=[], metavar="BATCH:RATE:SCHEDULE:EPOCHS",
                        help="recipes to try besides the pipeline's default")
    args = parser.parse_args()
    # Imported here, not above: the pipeline's modules turn oneDNN on, and script_as_shipped's process must not.
    from flows.config import RECIPES, train_params
    from flows.stages import download_dataset

    store = tempfile.mkdtemp(prefix="vs-keras-")
    raw = download_dataset.fn(store, args.dataset, args.mirror)
    arrays = raw.at(store).arrays()
    peak = matmul_peak_gflops()
    tutorial = train_params(**{**RECIPES["tutorial"], "epochs": args.epochs})
    recipes = {"default": train_params()}
    for text in args.recipe:
        batch, rate, schedule, epochs = text.split(":")
        recipes[text] = train_params(batch_size=int(batch), learning_rate=float(rate), lr_schedule=schedule,
                                     epochs=int(epochs))
    rows = []
    for seed in args.seeds:
        runs = [("script", lambda: keras_script(arrays, args.epochs, seed)),
                ("script, TF defaults", lambda: script_as_shipped(arrays, args.epochs, seed, store)),
                ("tutorial", lambda: stage(store, raw, 0.0, tutorial.model_copy(update={"seed": seed})))]
        runs += [(name, lambda p=params: stage(store, raw, 0.1, p.model_copy(update={"seed": seed})))
                 for name, params in recipes.items()]
        for name, run in runs if seed % 2 == 0 else runs[::-1]:  # alternate the order
            result = run()
            seconds = result.pop("epoch_seconds")
            rows.append({"seed": seed, "run": name, "epochs": len(seconds), "epoch_s": float(np.mean(seconds)),
                         "train_s": float(np.sum(seconds)), **result,
                         "gflops": FLOP_PER_IMAGE * result["train_images"] / float(np.mean(seconds)) / 1e9})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby("run", sort=False).mean(numeric_only=True).drop(columns="seed")
    table["epoch_vs_script"] = table["epoch_s"] / table.loc["script", "epoch_s"]
    table["train_vs_tutorial"] = table["train_s"] / table.loc["tutorial", "train_s"]
    table["train_vs_shipped_script"] = table["train_s"] / table.loc["script, TF defaults", "train_s"]
    table["of_peak"] = table["gflops"] / peak
    print(f"\n{args.dataset} from {args.mirror}, seeds {args.seeds}, matmul peak {peak:.0f} GFLOP/s "
          "(test accuracy from the test split; validation accuracy from the recipe's held-out 10%)")
    print(table.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()

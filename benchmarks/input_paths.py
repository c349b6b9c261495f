"""The train stage's input path against the tutorial script's, alone, at batch 32, in one process.

    PYTHONPATH=. python benchmarks/input_paths.py --mirror /usr/share/datasets/fashion-mnist [--repeats 2]

The same model (tasks/train.py's build_model, Adam 1e-3, sparse cross-entropy,
oneDNN on as in the pipeline) fed three ways, one epoch each, no validation:
- NumPy float32 arrays through `model.fit` (the script's way; Keras shuffles);
- the stage's `epoch_order` pipeline (tf.data shuffle of the whole split, batch, prefetch);
- NumPy-shuffled arrays through `tf.data` (batch, prefetch).
Each model is warmed up (traced) first; then the paths alternate, their order
reversed on every other repeat. Prints each epoch's seconds and the medians.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from in_process import training_split, tutorial_model
from tasks.train import epoch_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import tensorflow as tf

    x, y = training_split(args.mirror)
    train = tf.data.Dataset.from_tensor_slices((x, y))

    def shuffled_arrays(epoch: int):
        order = np.random.default_rng(epoch).permutation(len(x))
        return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(32).prefetch(tf.data.AUTOTUNE)

    paths = {
        "NumPy arrays, model.fit": lambda model, epoch: model.fit(x, y, batch_size=32, epochs=1, verbose=0),
        "epoch_order (the stage's)": lambda model, epoch: model.fit(
            epoch_order(train, len(x), 0, epoch, 32), epochs=1, verbose=0, shuffle=False),
        "NumPy-shuffled, tf.data": lambda model, epoch: model.fit(
            shuffled_arrays(epoch), epochs=1, verbose=0, shuffle=False),
    }
    models = {}
    for name, fit in paths.items():
        models[name] = tutorial_model()
        fit(models[name], 0)  # warm-up: traces the train step
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(args.repeats):
        for name in list(paths) if repeat % 2 == 0 else list(paths)[::-1]:
            start = time.perf_counter()
            paths[name](models[name], repeat + 1)
            seconds[name].append(time.perf_counter() - start)
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    print(f"\n{len(x)} images an epoch, batch 32")
    for name, values in seconds.items():
        print(f"{name}: median {np.median(values):.2f} s an epoch ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()

"""TensorFlow, imported quietly, and the device it trains on."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from itertools import takewhile
from typing import Iterator, Optional

# What TensorFlow's C++ start-up writes straight to the terminal when a machine has no CUDA driver.
_NO_DRIVER_NOISE = re.compile(rb"Could not find cuda drivers|failed call to cuInit|"
                              rb"All log messages before absl::InitializeLog\(\) is called")
# Its note that oneDNN's kernels are on, which it writes once for each of its libraries, whatever
# TF_CPP_MIN_LOG_LEVEL says: passed on once in a process.
_ONEDNN_NOTE = re.compile(rb"oneDNN custom operations are on")
_noted: list[bytes] = []


@contextmanager
def _without_no_driver_noise() -> Iterator[None]:
    """Hold back what is written to stderr's file descriptor; pass on all but the no-driver lines and a repeated
    oneDNN note."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught:
                if _ONEDNN_NOTE.search(line):
                    if _noted:
                        continue
                    _noted.append(line)
                if not _NO_DRIVER_NOISE.search(line):
                    os.write(2, line)


def tensorflow():
    """TensorFlow, imported and its GPUs listed, without its no-driver lines on a machine without CUDA."""
    # Its C++ notices (the CPU's features) left out; its warnings and errors shown. The caller's level stands.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _without_no_driver_noise():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf


def select_device() -> str:
    """Every visible GPU, its memory grown as needed: "GPU", "4 GPUs", or "CPU" when there is none."""
    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # TensorFlow was initialised earlier in this process; its choice stands
    return "CPU" if not gpus else "GPU" if len(gpus) == 1 else f"{len(gpus)} GPUs"


def strategy_name(gpus: int, tf_config: Optional[str]) -> str:
    """Which `tf.distribute` strategy trains: several hosts (TF_CONFIG), several GPUs, or one device."""
    if tf_config:
        return "MultiWorkerMirroredStrategy"
    return "MirroredStrategy" if gpus > 1 else "default"


def distribution():
    """The strategy of strategy_name() for this machine; "default" is TensorFlow's own, one device."""
    tf = tensorflow()
    # Physical devices: listing logical ones would start TensorFlow's runtime, after which
    # MultiWorkerMirroredStrategy can no longer configure its collective ops.
    name = strategy_name(len(tf.config.list_physical_devices("GPU")), os.environ.get("TF_CONFIG"))
    return tf.distribute.get_strategy() if name == "default" else getattr(tf.distribute, name)()


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, from the driver's list and CUDA_VISIBLE_DEVICES, without TensorFlow."""
    try:
        found = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return found
    # CUDA stops at the first invalid entry.
    listed = takewhile(lambda device: device.strip() and not device.strip().startswith("-"), chosen.split(","))
    return min(found, len(list(listed)))

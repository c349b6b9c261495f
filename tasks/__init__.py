"""The pipeline's stages, one module each, and the pieces they share."""

import os

# TensorFlow's oneDNN kernels train the tutorial's CNN about 1.4x faster at batch 32, and 2.1x at
# batch 256, on x86 CPUs without AVX-512, where TensorFlow leaves them off (BENCHMARKS.md, "The
# throughput levers"). Read once, when TensorFlow is imported: TF_ENABLE_ONEDNN_OPTS=0 keeps them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

"""Running a trained model over many images: the batch size every inference pass uses (the
teacher's cache, evaluation, export and the validation passes of training) and the loop."""

from __future__ import annotations

import numpy as np

# A ResNet-20 batch's activations dominate the peak: over the 3,500 training digits on 2 CPU
# cores, teacher.predict peaked 1,131 MiB at 512, 906 at 256, 858 at 128, 823 at 64.
INFERENCE_BATCH_SIZE = 128


def predict_logits(model, x, batch_size: int = INFERENCE_BATCH_SIZE) -> np.ndarray:
    """The model's outputs (inference mode) for every row of ``x``, as float64.

    Plain calls rather than model.predict: predict compiles a new function per model, which
    for a dozen models costs time and floods the log with retracing warnings."""
    import keras

    parts = [keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64)

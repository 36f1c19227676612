"""A trained model's logits: computed over many images in inference mode, and calibrated by a
temperature (Guo et al. 2017's temperature scaling: one scalar T per shipped model, fitted on the
validation split, that divides its logits; T > 0 keeps every argmax, so accuracy never changes).

The temperature is fitted here because neither Keras nor scikit-learn fits one for a multi-class
logits model (scikit-learn's CalibratedClassifierCV wraps estimators, not logits).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# The batch of every inference pass (the teacher's cache, evaluation, export, validation while
# training): a ResNet-20 batch's activations dominate the peak memory (docs/performance.md).
INFERENCE_BATCH_SIZE = 128
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 0.02 to 50, far beyond what models need.
LOG_T_BOUND = 4.0


def predict_logits(model, x, batch_size: int = INFERENCE_BATCH_SIZE) -> np.ndarray:
    """The model's outputs (inference mode) for every row of ``x``, as float64. Plain calls rather
    than model.predict, which compiles a new function per model (time, and retracing warnings)."""
    import keras

    parts = [keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation NLL of softmax(logits / T), rounded to 6 digits so
    that the exported model and metrics/evaluate.json carry the same number."""
    labels = np.asarray(labels)
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                             bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded",
                             options={"xatol": 1e-7})
    return round(float(np.exp(result.x)), 6)


def with_temperature(model, temperature: float):
    """``model`` followed by a division of its logits by ``temperature``: a Keras Rescaling
    layer (built in, so the saved model loads with safe_mode and converts to TFLite)."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name="image")
    logits = keras.layers.Rescaling(1.0 / temperature, name="temperature_scaling")(model(inputs))
    return keras.Model(inputs, logits, name=f"{model.name}_calibrated")

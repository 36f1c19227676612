"""Test-set evaluation of trained models."""

from __future__ import annotations

import keras
import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss


def evaluate_model(model: keras.Model, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Accuracy, cross-entropy loss and parameter count of a logits model on (x, y)."""
    logits = model.predict(x, batch_size=512, verbose=0).astype(np.float64)
    return {
        "accuracy": round(float(accuracy_score(y, logits.argmax(axis=1))), 6),
        "loss": round(float(log_loss(y, softmax(logits, axis=1), labels=range(num_classes))), 6),
        "params": int(model.count_params()),
    }

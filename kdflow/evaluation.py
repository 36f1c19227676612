"""Test-set evaluation of trained models and the paired statistics of the KD gain."""

from __future__ import annotations

import math

import keras
import numpy as np
from scipy import stats
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss


def _r(value: float) -> float:
    return round(float(value), 6)


def evaluate_model(model: keras.Model, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Accuracy, cross-entropy loss and parameter count of a logits model on (x, y)."""
    logits = model.predict(x, batch_size=512, verbose=0).astype(np.float64)
    return {
        "accuracy": _r(accuracy_score(y, logits.argmax(axis=1))),
        "loss": _r(log_loss(y, softmax(logits, axis=1), labels=range(num_classes))),
        "params": int(model.count_params()),
    }


def summarize_repeats(per_model: list[dict]) -> dict:
    """Repeat 0's numbers (the model that ships) plus mean/std of accuracy over all repeats."""
    accuracies = np.array([m["accuracy"] for m in per_model])
    return {
        **per_model[0],
        "accuracy_mean": _r(accuracies.mean()),
        "accuracy_std": _r(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "loss_mean": _r(np.mean([m["loss"] for m in per_model])),
        "repeats": len(per_model),
    }


def paired_gain(distilled: list[float], scratch: list[float]) -> dict:
    """Mean, std and 95% t-interval of the per-pair gain distilled - scratch (pair i = seed i).

    With a single pair there is no interval: the bounds are null.
    """
    gains = np.asarray(distilled, dtype=np.float64) - np.asarray(scratch, dtype=np.float64)
    n = len(gains)
    mean = gains.mean()
    std = gains.std(ddof=1) if n > 1 else 0.0
    if n > 1:
        half_width = stats.t.ppf(0.975, df=n - 1) * std / math.sqrt(n)
        low, high = _r(mean - half_width), _r(mean + half_width)
    else:
        low = high = None
    return {"mean": _r(mean), "std": _r(std), "ci95_low": low, "ci95_high": high, "pairs": n}


def gap_closed(mean_gain: float, teacher_accuracy: float, scratch_mean: float) -> float | None:
    """Share of the teacher - scratch accuracy gap that distillation closed (null if no gap)."""
    gap = teacher_accuracy - scratch_mean
    return _r(mean_gain / gap) if gap > 0 else None

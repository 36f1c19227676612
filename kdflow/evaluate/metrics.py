"""Test-set metrics of trained models (accuracy, NLL, ECE, fidelity to the teacher), latency, and
the paired statistics of the gains. Only `evaluate` reads them: editing a metric reruns no training stage."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
from scipy import stats
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss

ECE_BINS = 15


def _r(value: float) -> float:
    return round(float(value), 6)


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins of the top-1 prediction: count, mean confidence, accuracy.

    Written here because scikit-learn's calibration_curve is for binary problems only."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    index = np.minimum((confidence * bins).astype(int), bins - 1)  # confidence 1.0 -> last bin
    out = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        out.append({"lower": b / bins, "upper": (b + 1) / bins, "count": n,
                    "confidence": float(confidence[mask].mean()) if n else None,
                    "accuracy": float(correct[mask].mean()) if n else None})
    return out


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): sum over bins of |accuracy - confidence| weighted by bin size."""
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in calibration_bins(probs, y, bins) if b["count"]) / len(y))


def evaluate_logits(logits: np.ndarray, y: np.ndarray, class_names: list[str],
                    teacher_logits: np.ndarray | None = None, temperature: float | None = None) -> dict:
    """Accuracy, negative log-likelihood, ECE and per-class accuracy of logits on labels y;
    with ``teacher_logits``, also the share of samples where the top-1 class matches the teacher's;
    with ``temperature`` (kdflow.models.logits), also NLL and ECE of the calibrated logits / T."""
    num_classes = len(class_names)
    probs = softmax(logits, axis=1)
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(y, predicted, labels=range(num_classes))
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    result = {
        "accuracy": _r(accuracy_score(y, predicted)),
        "loss": _r(log_loss(y, probs, labels=range(num_classes))),
        "ece": _r(expected_calibration_error(probs, y)),
        "per_class_accuracy": {name: _r(acc) for name, acc in zip(class_names, per_class)},
    }
    if teacher_logits is not None:
        result.update(fidelity(logits, teacher_logits))
    if temperature is not None:
        calibrated = softmax(logits / temperature, axis=1)
        result.update(temperature=temperature,
                      loss_calibrated=_r(log_loss(y, calibrated, labels=range(num_classes))),
                      ece_calibrated=_r(expected_calibration_error(calibrated, y)))
    return result


FIDELITY = ("teacher_agreement", "teacher_top5_agreement", "teacher_kl")


def fidelity(logits: np.ndarray, teacher_logits: np.ndarray) -> dict:
    """How closely a student matches its teacher's function on these images, as big_vision's
    distillation evaluator reports it: the share whose top-1 class is the teacher's, the share
    where the teacher's top-1 class is among the student's top 5, and the mean KL(teacher ||
    student) of the softmax at T = 1 (nats)."""
    teacher_top = teacher_logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    log_p = log_softmax(teacher_logits.astype(np.float64), axis=1)
    log_q = log_softmax(logits.astype(np.float64), axis=1)
    return {"teacher_agreement": _r(np.mean(logits.argmax(axis=1) == teacher_top)),
            "teacher_top5_agreement": _r(np.mean((top5 == teacher_top[:, None]).any(axis=1))),
            "teacher_kl": _r(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))}


def summarize_repeats(per_model: list[dict]) -> dict:
    """Repeat 0's numbers (the model that ships) plus mean/std over all repeats."""
    accuracies = np.array([m["accuracy"] for m in per_model])
    summary = {
        **per_model[0],
        "accuracy_mean": _r(accuracies.mean()),
        "accuracy_std": _r(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "repeats": len(per_model),
    }
    for key in ("loss", "ece", "loss_calibrated", "ece_calibrated", "temperature", *FIDELITY, "val_accuracy"):
        if key in per_model[0]:
            summary[f"{key}_mean"] = _r(np.mean([m[key] for m in per_model]))
    if FIDELITY[0] in per_model[0]:  # fidelity per repeat
        summary["fidelity_per_repeat"] = {key: [m[key] for m in per_model] for key in FIDELITY}
    return summary


def inference_latency_ms(model, x: np.ndarray, batch_sizes=(1, 256), calls: int = 30) -> dict:
    """Median wall time (ms) of one compiled forward pass, per batch size, after warm-up.

    Wall-clock numbers: they vary run to run, so they never go into metrics/."""
    import tensorflow as tf

    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    result = {}
    for size in batch_sizes:
        batch = tf.constant(x[:size])
        for _ in range(3):
            forward(batch).numpy()  # trace and warm up
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            forward(batch).numpy()
            times.append((time.perf_counter() - start) * 1000)
        result[f"batch_{size}"] = round(statistics.median(times), 4)
    return result


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


def gap_closed(mean_gain: float, teacher_accuracy: float, scratch_accuracies: list[float]) -> float | None:
    """Share of the teacher - scratch accuracy gap that distillation closed. Null when that gap
    is within the noise: not larger than twice the scratch students' standard deviation (a
    ratio to a gap of noise is meaningless)."""
    return _r(mean_gain / gap) if (gap := gap_size(teacher_accuracy, scratch_accuracies)) is not None else None


def gap_size(teacher_accuracy: float, scratch_accuracies: list[float]) -> float | None:
    """teacher - mean scratch accuracy, or None when it is not clearly above the scratch spread."""
    scratch = np.asarray(scratch_accuracies, dtype=np.float64)
    gap = teacher_accuracy - scratch.mean()
    noise = 2 * scratch.std(ddof=1) if len(scratch) > 1 else 0.0
    return float(gap) if gap > noise else None

"""Is an imported teacher fed correctly? What its outputs on the validation images say, before any
student trains: whether they are logits or probabilities, and whether another input range or
class order makes it clearly better (a teacher fed the wrong convention is degraded, rarely at
chance). NumPy and SciPy only: kdflow.teacher.imported runs the teacher and hands the outputs here."""

from __future__ import annotations

import json

import numpy as np
from scipy.optimize import linear_sum_assignment

from kdflow.core import KdflowError
from kdflow.core.paired import MIN_GAIN, clearly_better

# Rows of non-negative outputs summing to 1 within this are probabilities (float16 softmax included).
SUM_TOLERANCE = 1e-3


def output_kind(outputs: np.ndarray, declared: str, where: str) -> tuple[bool, str]:
    """(whether the outputs are probabilities, the line that says what was found) for a
    teacher's raw outputs on the validation images; ``declared`` is teacher.outputs."""
    if not np.isfinite(outputs).all():
        raise KdflowError(f"{where}: its outputs on the validation images include NaN or infinity")
    sums = outputs.sum(axis=1)
    span = f"row sums {sums.min():.4g} to {sums.max():.4g}, values {outputs.min():.4g} to {outputs.max():.4g}"
    distribution = outputs.min() >= 0 and np.abs(sums - 1).max() <= SUM_TOLERANCE
    if declared == "probabilities":
        if not distribution:
            raise KdflowError(f"teacher.outputs = probabilities, but its outputs on the validation images are not "
                              f"({span}): set teacher.outputs: auto or logits")
        return True, "outputs are probabilities (teacher.outputs): cached as log-probabilities"
    if declared == "logits":
        return False, f"outputs taken as logits (teacher.outputs; {span})"
    if distribution:
        return True, (f"outputs are probabilities (all {len(outputs)} validation rows non-negative, summing to 1 "
                      f"within {SUM_TOLERANCE:g}): cached as log-probabilities")
    if 0 <= outputs.min() < outputs.max() <= 1:  # (constant outputs say nothing: taken as logits)
        raise KdflowError(f"{where}: its outputs lie in [0, 1] but rows do not sum to 1 ({span}): independent "
                          "per-class scores (sigmoids) are not a single-label distribution. If they are logits, "
                          "set teacher.outputs: logits")
    return False, f"outputs are logits ({span})"


def best_mapping(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The one-to-one reading of teacher outputs as data classes that gets most validation
    images right (output i -> class mapping[i]): the permutation that dominates the confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (predicted, labels), 1)
    rows, cols = linear_sum_assignment(-confusion)
    mapping = np.empty(num_classes, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def near_chance(num_classes: int) -> float:
    """Below twice chance (capped half way to 1 for two or three classes) is near chance."""
    return min(2 / num_classes, (1 + 1 / num_classes) / 2)


def assess(ranges: list, predicted: list[np.ndarray], labels: np.ndarray, class_names: list[str], describe,
           as_param, classes_for, ordered_by_param: bool) -> tuple[str, str | None]:
    """(the accuracy line, the problem or None) for a teacher that reads the validation images as
    the data classes ``predicted`` under each input range of ``ranges`` (the configured one first).
    ``classes_for(mapping)`` is the teacher.classes value that reads the class it gives as j as
    class ``mapping[j]`` instead."""
    tried = range(len(ranges))
    correct = [p == labels for p in predicted]
    accuracy = [float(c.mean()) for c in correct]
    mappings = [best_mapping(p, labels, len(class_names)) for p in predicted]
    remapped = [m[p] == labels for m, p in zip(mappings, predicted)]
    line = f"teacher val accuracy {accuracy[0]:.4f} with inputs in {describe(ranges[0])}"
    if len(ranges) > 1:
        line += " (also tried: " + ", ".join(f"{describe(ranges[i])} {accuracy[i]:.4f}" for i in tried[1:]) + ")"

    def classes_value(mapping: np.ndarray) -> str:
        return json.dumps(classes_for(mapping))

    def reorders(i: int) -> bool:
        return not np.array_equal(mappings[i], np.arange(len(class_names))) and clearly_better(correct[i], remapped[i])

    here = f"teacher val accuracy {accuracy[0]:.2f}"
    best = max(tried, key=lambda i: remapped[i].mean())  # the class order cannot hide a better range
    if best != 0 and clearly_better(remapped[0], remapped[best]):
        setting = f"teacher.input_range: {as_param(ranges[best])}"
        if reorders(best):
            return line, (f"{here} with inputs in {describe(ranges[0])}, {remapped[best].mean():.2f} with "
                          f"{describe(ranges[best])} and its outputs read in another class order: set {setting} and "
                          f"teacher.classes: {classes_value(mappings[best])}")
        return line, (f"{here} with inputs in {describe(ranges[0])}, {accuracy[best]:.2f} with "
                      f"{describe(ranges[best])}: set {setting}")
    if reorders(0):
        order = "the order teacher.classes gives" if ordered_by_param else "the data's class order"
        return line, (f"{here} in {order}, {remapped[0].mean():.2f} reading its outputs as the classes "
                      f"{classes_value(mappings[0])}: set teacher.classes: {classes_value(mappings[0])}")
    if accuracy[0] < near_chance(len(class_names)):
        return line, (f"{here} is near chance ({1 / len(class_names):.2f} for {len(class_names)} classes): check "
                      f"its input range (teacher.input_range, now {describe(ranges[0])}), its class order "
                      "(teacher.classes) and the labels it was trained on")
    return line, None


def flat(ranges: list, confidence: list[float], accuracy: list[float], num_classes: int, describe,
         as_param) -> str | None:
    """The problem with a teacher that is accurate but whose outputs are near uniform, or None.
    ``confidence``: its mean top probability on the validation images under each input range
    (the configured one first), ``accuracy``: its accuracy there. A teacher's mean top
    probability is near its accuracy when calibrated; below half way from chance to its accuracy
    its soft targets say little (a scale-homogeneous net fed 255x smaller pixels is as accurate,
    but flat), and the students distil near-uniform targets."""
    def is_flat(i: int) -> bool:
        return confidence[i] < (1 / num_classes + accuracy[i]) / 2

    if accuracy[0] < near_chance(num_classes) or not is_flat(0):
        return None
    seen = (f"teacher val accuracy {accuracy[0]:.2f}, but its outputs are near uniform: mean top probability "
            f"{confidence[0]:.2f} with inputs in {describe(ranges[0])} (chance {1 / num_classes:.2f})")
    fixes = [i for i in range(1, len(ranges)) if not is_flat(i) and accuracy[i] >= accuracy[0] - MIN_GAIN]
    if fixes:
        best = max(fixes, key=lambda i: confidence[i])
        return (f"{seen}, {confidence[best]:.2f} with {describe(ranges[best])} at accuracy {accuracy[best]:.2f}: "
                f"set teacher.input_range: {as_param(ranges[best])}")
    return (f"{seen}: check its input range (teacher.input_range) and whether a temperature is baked into its "
            "outputs (a softmax of logits / T: export the logits instead)")

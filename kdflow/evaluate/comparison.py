"""The `evaluate` stage's work: the teacher and the three kinds of students on the test split,
and the three paired comparisons between the students: distillation beyond augmentation
(``kd_gain``, the headline), augmentation alone (``augment_gain``), both (``combined_gain``).
With images without labels, a fourth kind, the pseudo-labelled students, splits the KD gain in
two: what the extra images give under the teacher's hard labels (``extra_images_gain``) and
what the soft targets add on top (``soft_gain``).
Each model also gets its validation accuracy (the teacher check) and a temperature fitted on
the validation split (kdflow.models.logits), with test NLL and ECE before and after it.

Returns three things kept apart on purpose: ``metrics`` (reproducible bit for bit, goes to
metrics/evaluate.json), ``latency`` (wall-clock, varies run to run: timings/, never a DVC
output) and
``predictions`` (repeat 0 of each model, for the confusion matrices and reliability diagram).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from kdflow.core.paths import model_file, repeat_file, repeats_dir
from kdflow.core.prepared import Prepared
from kdflow.evaluate.metrics import evaluate_logits, gap_closed, inference_latency_ms, paired_gain, summarize_repeats
from kdflow.models.files import load_role, load_students
from kdflow.models.layers import ensemble_members
from kdflow.models.logits import fit_temperature, predict_logits

ROLES = ("teacher", "student_distilled", "student_scratch", "student_plain")
# with images without labels: the students trained on them under the teacher's hard labels
PSEUDO = "student_pseudo"
# name -> (better, baseline): each a paired comparison over the repeats' seeds
GAINS = {
    "kd_gain": ("student_distilled", "student_scratch"),       # what the teacher adds on the same views
    "augment_gain": ("student_scratch", "student_plain"),      # what the views alone add
    "combined_gain": ("student_distilled", "student_plain"),   # both together
}
# ... and with the pseudo-labelled students, the two parts of the KD gain
UNLABELED_GAINS = {
    "extra_images_gain": (PSEUDO, "student_scratch"),          # the images without labels, under the teacher's labels
    "soft_gain": ("student_distilled", PSEUDO),                # what the soft targets add on top
}


def roles_of(metrics: dict) -> tuple[str, ...]:
    """The models a comparison holds: ROLES, and PSEUDO when there were images without labels."""
    return ROLES + ((PSEUDO,) if PSEUDO in metrics else ())


def gains_of(metrics: dict) -> dict[str, tuple[str, str]]:
    return {**GAINS, **(UNLABELED_GAINS if PSEUDO in metrics else {})}


@dataclass
class Comparison:
    metrics: dict
    latency: dict
    predictions: dict[str, np.ndarray]  # role -> repeat 0's test logits
    labels: np.ndarray


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _evaluate(model, data: Prepared, teacher_logits: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Test metrics of one model (calibrated with the temperature its validation logits give)
    and its test logits."""
    x_val, y_val = data.xy("val")
    val_logits = predict_logits(model, x_val)
    x, y = data.xy("test")
    logits = predict_logits(model, x)
    result = evaluate_logits(logits, y, data.class_names, teacher_logits, fit_temperature(val_logits, y_val))
    result["val_accuracy"] = round(float(np.mean(val_logits.argmax(axis=1) == y_val)), 6)
    return result, logits


def compare(data: Prepared, measure_latency: bool = True, teacher_safe_mode: bool = True) -> Comparison:
    """``data`` holds the val and test splits."""
    x, y = data.xy("test")
    teacher = load_role("teacher", safe_mode=teacher_safe_mode)
    teacher_result, teacher_logits = _evaluate(teacher, data)
    metrics = {"teacher": summarize_repeats([teacher_result])}
    members = ensemble_members(teacher)
    if len(members) > 1:  # each member's test accuracy beside the ensemble's
        metrics["teacher"]["members_accuracy"] = [
            round(float(np.mean(predict_logits(member, x).argmax(axis=1) == y)), 6) for member in members]
    models = {"teacher": teacher}
    predictions = {"teacher": teacher_logits}
    files = {"teacher": model_file("teacher")}
    accuracies, val_accuracies = {}, {}
    pseudo = any(repeats_dir(PSEUDO).glob("*.keras"))  # train_pseudo trains none without images without labels
    roles = ROLES + ((PSEUDO,) if pseudo else ())
    for role in roles[1:]:
        per_repeat = []
        for i, student in enumerate(load_students(role)):
            result, logits = _evaluate(student, data, teacher_logits)
            per_repeat.append(result)
            if i == 0:  # repeat 0 is the model that ships: the one plotted and timed
                models[role], predictions[role] = student, logits
        metrics[role] = summarize_repeats(per_repeat)
        accuracies[role] = [m["accuracy"] for m in per_repeat]
        val_accuracies[role] = [m["val_accuracy"] for m in per_repeat]
        files[role] = repeat_file(role, 0)
    for role in roles:
        metrics[role]["params"] = int(models[role].count_params())
        metrics[role]["size_bytes"] = files[role].stat().st_size

    for name, (better, baseline) in gains_of(metrics).items():
        metrics[name] = paired_gain(accuracies[better], accuracies[baseline])
    metrics["teacher_check"] = teacher_check(teacher_result["val_accuracy"], val_accuracies["student_scratch"])
    metrics["gap_closed"] = gap_closed(metrics["kd_gain"]["mean"], metrics["teacher"]["accuracy"],
                                       accuracies["student_scratch"])
    if pseudo:  # the pseudo-labelled students' share of the same gap
        metrics["gap_closed_pseudo"] = gap_closed(metrics["extra_images_gain"]["mean"],
                                                  metrics["teacher"]["accuracy"], accuracies["student_scratch"])
    student = metrics["student_distilled"]
    metrics["compression"] = {
        "param_ratio": _ratio(metrics["teacher"]["params"], student["params"]),
        "size_ratio": _ratio(metrics["teacher"]["size_bytes"], student["size_bytes"]),
    }
    latency = {role: inference_latency_ms(model, x) for role, model in models.items()} if measure_latency else {}
    return Comparison(metrics, latency, predictions, y)


# ---- the teacher check ---------------------------------------------------------------------------
# Is the teacher clearly better, on the validation split, than what the student architecture
# reaches alone? Distillation can only pass on what the teacher knows more. A warning, not a
# verdict: a teacher no better than the student can still help as a regulariser, and the recipe
# search decides on validation. "Clearly" = above the scratch students' mean validation accuracy
# by more than one standard deviation of it: better than a typical scratch student, not by a
# fraction of a standard deviation that another seed would undo.

def teacher_check(teacher_val_accuracy: float, scratch_val_accuracies: list[float]) -> dict:
    mean = statistics.fmean(scratch_val_accuracies)
    std = statistics.stdev(scratch_val_accuracies) if len(scratch_val_accuracies) > 1 else 0.0
    return {"teacher_val_accuracy": round(teacher_val_accuracy, 6), "scratch_val_accuracy": round(mean, 6),
            "scratch_val_std": round(std, 6), "teacher_clearly_better": teacher_val_accuracy > mean + std}


def teacher_warning(check: dict) -> str | None:
    """The one plain line shown when the teacher is not clearly better (None when it is)."""
    if check["teacher_clearly_better"]:
        return None
    return (f"teacher val accuracy {check['teacher_val_accuracy']:.3f} is not clearly above the scratch students' "
            f"{check['scratch_val_accuracy']:.3f} ± {check['scratch_val_std']:.3f}: distillation may not help; "
            "the recipe search (`kdflow search`) decides; a stronger teacher (teacher.arch, "
            "train_teacher.epochs) or your own (teacher.source: file) is the other lever")

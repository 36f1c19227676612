"""The teacher check: is the teacher clearly better, on the validation split, than what the
student architecture reaches alone? Distillation can only pass on what the teacher knows more.

A warning, not a verdict: a teacher no better than the student can still help as a regulariser,
and the recipe search (kdflow.search) decides on validation. "Clearly" = above the scratch
students' mean validation accuracy by more than one standard deviation of it, i.e. better than
a typical scratch student, not a fraction of a standard deviation that another seed would undo.
"""

from __future__ import annotations

import statistics


def check(teacher_val_accuracy: float, scratch_val_accuracies: list[float]) -> dict:
    mean = statistics.fmean(scratch_val_accuracies)
    std = statistics.stdev(scratch_val_accuracies) if len(scratch_val_accuracies) > 1 else 0.0
    return {"teacher_val_accuracy": round(teacher_val_accuracy, 6), "scratch_val_accuracy": round(mean, 6),
            "scratch_val_std": round(std, 6), "teacher_clearly_better": teacher_val_accuracy > mean + std}


def warning(result: dict) -> str | None:
    """The one plain line shown when the teacher is not clearly better (None when it is)."""
    if result["teacher_clearly_better"]:
        return None
    return (f"teacher val accuracy {result['teacher_val_accuracy']:.3f} is not clearly above the scratch students' "
            f"{result['scratch_val_accuracy']:.3f} ± {result['scratch_val_std']:.3f}: distillation may not help; "
            "the recipe search (`kdflow search`) decides; a stronger teacher (teacher.arch, "
            "train_teacher.epochs) or your own (teacher.source: file) is the other lever")

"""Where each model lives, and saving/loading the repeated students as one unit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from kdflow.errors import KdflowError
from kdflow.io import atomic_dir, atomic_path, load_model, save_model

MODELS = Path("models")
# role -> the stage that produces it (named in "run `dvc repro <stage>`" messages)
PRODUCED_BY = {"teacher": "train_teacher", "student_distilled": "distill", "student_scratch": "train_scratch"}


def model_path(role: str) -> Path:
    """The model to use/ship: the teacher, or a student's repeat 0."""
    return MODELS / f"{role}.keras"


def repeats_dir(role: str) -> Path:
    return MODELS / f"{role}_repeats"


def repeat_path(role: str, repeat: int) -> Path:
    return repeats_dir(role) / f"repeat_{repeat}.keras"


def save_students(role: str, students: Iterable[tuple[Any, dict]]) -> dict:
    """Save every repeat to ``models/<role>_repeats/repeat_<i>.keras`` (swapped in as a whole
    when all are trained) and repeat 0 to ``models/<role>.keras``; return the metrics summary."""
    summaries = {}
    with atomic_dir(repeats_dir(role)) as staging:
        for i, (model, summary) in enumerate(students):
            save_model(staging / repeat_path(role, i).name, model)
            summaries[f"repeat_{i}"] = summary
    with atomic_path(model_path(role)) as tmp:
        shutil.copyfile(repeat_path(role, 0), tmp)
    val_acc = [s["val_accuracy"] for s in summaries.values()]
    return {**summaries, "val_accuracy_mean": round(float(np.mean(val_acc)), 6)}


def load_students(role: str) -> list:
    folder = repeats_dir(role)
    files = sorted(folder.glob("repeat_*.keras"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise KdflowError(f"{folder} holds no models: run `dvc repro {PRODUCED_BY[role]}` first")
    return [load_model(f, produced_by=PRODUCED_BY[role]) for f in files]

"""An ensemble of teachers as one teacher: members trained with seeds seed + i
(teacher.members) or imported from a folder of teacher files, combined by
kdflow.models.layers.EnsembleLogits (teacher.ensemble) into models/teacher.keras.

Every stage after train_teacher sees one model: soft_targets runs it (its cost grows with the
members there), the students only read its cached outputs. A feature method or an online
teacher would run every member in the students' stages: they take one teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np

from kdflow.core import KdflowError
from kdflow.core.prepared import Prepared
from kdflow.models.layers import EnsembleLogits
from kdflow.models.logits import predict_logits

MEMBER = "member_{}"  # the members' names inside the ensemble, in order


def combine(members: list[keras.Model], average: str) -> keras.Model:
    """One model whose logits combine the members' (each taking the same [0, 1] images)."""
    inputs = keras.Input(shape=members[0].input_shape[1:], name="images")
    outputs = []
    for i, member in enumerate(members):
        member.name = MEMBER.format(i)  # unique inside the ensemble (each was built as "teacher")
        outputs.append(member(inputs))
    return keras.Model(inputs, EnsembleLogits(average, name="ensemble_logits")(outputs), name="teacher")


def build(count: int, make_member: Callable[[int], tuple[keras.Model, dict]], average: str,
          data: Prepared, log=print) -> tuple[keras.Model, dict]:
    """``count`` members made by ``make_member(i)`` (each with its summary), combined; the summary
    holds the ensemble's validation accuracy and each member's summary."""
    members, summaries = [], []
    for i in range(count):
        log(f"train_teacher: member {i + 1}/{count}")
        member, summary = make_member(i)
        members.append(member)
        summaries.append(summary)
    model = combine(members, average)
    x, y = data.xy("val")
    accuracy = float(np.mean(predict_logits(model, x).argmax(axis=1) == y))
    log(f"train_teacher: ensemble of {count} ({average} averaged): val_accuracy {accuracy:.4f}; members "
        + ", ".join(f"{s['val_accuracy']:.4f}" for s in summaries))
    return model, {"val_accuracy": round(accuracy, 6), "members": summaries}


def member_dir(run_dir: Path | None, i: int) -> Path | None:
    """Member i's checkpoints inside the stage's run folder (kdflow.training.resume)."""
    if run_dir is None:
        return None
    folder = run_dir / MEMBER.format(i)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def member_files(path: str) -> list[Path] | None:
    """teacher.path as an ensemble: a folder (not itself a SavedModel) of teacher files, each a
    .keras or .h5 file or a SavedModel folder, in name order; None for a single teacher."""
    from kdflow.teacher.formats import KERAS_SUFFIXES

    folder = Path(path)
    if not folder.is_dir() or (folder / "saved_model.pb").exists():
        return None
    found = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (
        p.suffix.lower() in KERAS_SUFFIXES or (p / "saved_model.pb").exists()))
    if not found:
        raise KdflowError(f"teacher.path = {path}: a folder with no saved_model.pb and no teacher files "
                          "(.keras, .h5, SavedModel folders) in it")
    return found

"""What each training stage trains: the teacher, the scratch student, the distilled student.

The two students are a paired design: same seed, so the same initial weights, the same
data order and the same dropout masks; only the loss (and hence the weights) differ.
"""

from __future__ import annotations

import keras
import numpy as np

from kdflow import repro
from kdflow.data import Prepared
from kdflow.losses import METHODS, hard_ce, pack_targets
from kdflow.models import build_model
from kdflow.params import Params
from kdflow.training import fit


def train_teacher(params: Params, data: Prepared) -> tuple[keras.Model, dict]:
    repro.make_deterministic(params.seed)
    model = build_model(params.teacher, data.input_shape, data.num_classes, name="teacher")
    summary = _fit_on(model, data, params, "train_teacher", loss=hard_ce)
    return model, summary


def train_student(
    params: Params, data: Prepared, soft_targets: dict[str, np.ndarray] | None = None
) -> tuple[keras.Model, dict]:
    """Scratch student when ``soft_targets`` is None, else distilled from the cached logits."""
    repro.make_deterministic(params.seed)
    name = "student_scratch" if soft_targets is None else "student_distilled"
    model = build_model(params.student, data.input_shape, data.num_classes, name=name)
    if soft_targets is None:
        return model, _fit_on(model, data, params, "train_student", loss=hard_ce)
    loss, extra_metrics = METHODS["kd"](alpha=params.alpha, temperature=params.temperature)
    summary = _fit_on(model, data, params, "train_student", loss, soft_targets, extra_metrics)
    return model, summary


def _fit_on(model, data, params, section, loss, soft_targets=None, extra_metrics=()):
    def targets(split_name):
        logits = None if soft_targets is None else soft_targets[split_name]
        return pack_targets(data.xy(split_name)[1], logits)

    return fit(
        model,
        (data.xy("train")[0], targets("train")),
        (data.xy("val")[0], targets("val")),
        getattr(params, section),
        loss=loss,
        seed=params.seed,
        extra_metrics=list(extra_metrics),
        config_key=section,
    )

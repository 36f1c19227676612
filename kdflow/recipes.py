"""What each training stage trains: the teacher, the scratch students, the distilled students.

The students are a paired design: repeat i of `distill` and of `train_scratch` both use seed
``seed + i``, so the same initial weights, the same data order and the same dropout masks;
only the loss (and hence the weights) differ.
"""

from __future__ import annotations

from typing import Iterator

import keras
import numpy as np

from kdflow import repro
from kdflow.data import Prepared
from kdflow.losses import distillation_loss, hard_ce, pack_targets
from kdflow.models import build_model
from kdflow.params import Params
from kdflow.training import fit


def train_teacher(params: Params, data: Prepared) -> tuple[keras.Model, dict]:
    repro.make_deterministic(params.seed)
    model = build_model(params.teacher, data.input_shape, data.num_classes, name="teacher")
    summary = _fit_on(model, data, params, "train_teacher", params.seed, loss=hard_ce)
    return model, summary


def train_students(
    params: Params, data: Prepared, soft_targets: dict[str, np.ndarray] | None = None
) -> Iterator[tuple[keras.Model, dict]]:
    """Yield ``params.repeats`` students, one per seed: scratch students when
    ``soft_targets`` is None, else students distilled from the cached teacher logits."""
    name = "student_scratch" if soft_targets is None else "student_distilled"
    for repeat in range(params.repeats):
        keras.backend.clear_session()  # free the previous repeat's graph before the next one
        seed = params.seed + repeat
        repro.make_deterministic(seed)
        model = build_model(params.student, data.input_shape, data.num_classes, name=name)
        print(f"{name}: repeat {repeat + 1}/{params.repeats} (seed {seed})", flush=True)
        if soft_targets is None:
            summary = _fit_on(model, data, params, "train_student", seed, loss=hard_ce)
        else:
            loss, metrics, callbacks = distillation_loss(params)
            summary = _fit_on(model, data, params, "train_student", seed, loss, soft_targets, metrics, callbacks)
        yield model, summary


def _fit_on(model, data, params, section, seed, loss, soft_targets=None, extra_metrics=(), callbacks=()):
    def targets(split_name):
        logits = None if soft_targets is None else soft_targets[split_name]
        return pack_targets(data.xy(split_name)[1], logits)

    return fit(
        model,
        (data.xy("train")[0], targets("train")),
        (data.xy("val")[0], targets("val")),
        getattr(params, section),
        loss=loss,
        seed=seed,
        extra_metrics=list(extra_metrics),
        extra_callbacks=list(callbacks),
        config_key=section,
    )

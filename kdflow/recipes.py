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
from kdflow.errors import KdflowError
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
    ``soft_targets`` is None, else students distilled from the cached teacher outputs."""
    name = "student_scratch" if soft_targets is None else "student_distilled"
    for repeat in range(params.repeats):
        keras.backend.clear_session()  # free the previous repeat's graph before the next one
        seed = params.seed + repeat
        repro.make_deterministic(seed)
        student = build_model(params.student, data.input_shape, data.num_classes, name=name)
        print(f"{name}: repeat {repeat + 1}/{params.repeats} (seed {seed})", flush=True)
        if soft_targets is None:
            summary = _fit_on(student, data, params, "train_student", seed, loss=hard_ce)
        else:
            loss, metrics, callbacks = distillation_loss(params, data.num_classes)
            trained = student
            if params.distill.needs_teacher_features:
                trained = with_hint_projection(student, params.fitnet.student_layer,
                                               soft_targets["train_features"].shape[1])
            summary = _fit_on(trained, data, params, "train_student", seed, loss, soft_targets, metrics, callbacks)
        yield student, summary


def with_hint_projection(student: keras.Model, layer_name: str, width: int) -> keras.Model:
    """The student's training model for FitNets: outputs ``[logits | W · hint]``, where hint is
    the (flattened) output of ``layer_name`` and W a learned linear projection to the teacher's
    feature width. It shares the student's layers, so training it trains the student; the
    projection is discarded afterwards."""
    try:
        hint = student.get_layer(layer_name).output
    except ValueError:
        names = ", ".join(layer.name for layer in student.layers)
        raise KdflowError(f"fitnet.student_layer = {layer_name!r} is not a student layer; it has: {names}") from None
    if len(hint.shape) > 2:
        hint = keras.layers.Flatten(name="hint_flatten")(hint)
    projected = keras.layers.Dense(width, name="hint_projection")(hint)
    outputs = keras.layers.Concatenate(name="logits_and_hint")([student.outputs[0], projected])
    return keras.Model(student.inputs, outputs, name=f"{student.name}_with_hint")


def _fit_on(model, data, params, section, seed, loss, soft_targets=None, metrics=None, callbacks=()):
    def targets(split_name):
        labels = data.xy(split_name)[1]
        if soft_targets is None:
            return pack_targets(labels)
        return pack_targets(labels, soft_targets[split_name], soft_targets.get(f"{split_name}_features"))

    return fit(
        model,
        (data.xy("train")[0], targets("train")),
        (data.xy("val")[0], targets("val")),
        getattr(params, section),
        loss=loss,
        seed=seed,
        metrics=metrics,
        extra_callbacks=list(callbacks),
        config_key=section,
    )

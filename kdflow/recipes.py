"""What each training stage trains: the teacher and the three kinds of students.

- ``student_distilled`` (`distill`): the teacher's cached outputs + labels, on the augmented views;
- ``student_scratch`` (`train_scratch`): labels only, on the same views (the baseline);
- ``student_plain`` (`train_plain`): labels only, on the images as they are.

The students are a paired design: repeat i of every student stage uses seed ``seed + i``, so
the same initial weights, the same data order, the same views (kdflow.views) and the same
dropout masks; only the loss (and for the plain students the augmentation) differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from kdflow import distribute, objective, repro, tracking, views
from kdflow.artifacts import load_user_model
from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.evaluation import evaluate_logits, predict_logits
from kdflow.models import build_model
from kdflow.objective import LABELS, TEACHER_FEATURES, TEACHER_LOGITS, TrainingModel, training_model
from kdflow.params import AugmentParams, Params
from kdflow.training import fit
from kdflow.views import Views


def train_teacher(params: Params, data: Prepared, log_dir: Path | None = None,
                  run_dir: Path | None = None) -> tuple[keras.Model, dict]:
    """Train the teacher on the hard labels; per-epoch curves go to ``log_dir`` if given, and
    with ``run_dir`` the training resumes from the checkpoint kept there."""
    repro.make_deterministic(params.seed)
    callbacks = [tracking.epoch_logger(log_dir)] if log_dir is not None else []
    with distribute.scope():
        model = build_model(params.teacher, data.input_shape, data.num_classes, name="teacher")
        goal = objective.Objective(label_smoothing=params.train_teacher.label_smoothing)
        trained = training_model(with_augmentation(model, params.train_teacher.augment, params.seed), goal)
        summary = _fit_on(trained, data, params, "train_teacher", params.seed, callbacks=callbacks,
                          checkpoint=_checkpoint(run_dir, "teacher"))
    return model, summary


def _checkpoint(run_dir: Path | None, name: str) -> Path | None:
    return run_dir / f"{name}.npz" if run_dir is not None else None


def import_teacher(params: Params, data: Prepared) -> tuple[keras.Model, dict]:
    """The user's teacher (teacher.source: file), checked against the prepared data, as a
    logits model; its summary holds its validation accuracy and cross-entropy."""
    repro.make_deterministic(params.seed)
    cfg = params.teacher
    model = load_user_model(cfg.path, key="teacher.path", safe_mode=cfg.safe_mode)
    where = f"teacher.path = {cfg.path}"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise KdflowError(f"{where}: the model must have one input and one output")
    if tuple(model.input_shape[1:]) != tuple(data.input_shape):
        raise KdflowError(f"{where}: its input shape {tuple(model.input_shape[1:])} does not match the "
                          f"prepared data {tuple(data.input_shape)} (data.name/image_size/color_mode)")
    if model.output_shape[1:] != (data.num_classes,):
        raise KdflowError(f"{where}: it outputs shape {tuple(model.output_shape[1:])}, but the prepared "
                          f"data has {data.num_classes} classes")
    model = _as_logits(model)
    x, y = data.xy("val")
    val = evaluate_logits(predict_logits(model, x), y, data.class_names)
    return model, {"epochs_run": 0, "val_accuracy": val["accuracy"], "val_hard_ce": val["loss"]}


def _as_logits(model: keras.Model) -> keras.Model:
    """Drop a final softmax (many user models end with one): the pipeline works on logits.
    Rebuilt from the config, so no Lambda layer is added and the result stays safe to load."""
    last = model.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.softmax:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] == last.name:
            layer["config"]["activation"] = "linear"
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    print(f"train_teacher: removed the final softmax of layer '{last.name}' (the pipeline uses logits)")
    return rebuilt


def with_augmentation(model: keras.Model, augment: AugmentParams, seed: int) -> keras.Model:
    """``model`` behind Keras' random augmentation layers (active only while training; the
    saved model is ``model`` itself). Returns ``model`` unchanged when augmentation is off."""
    if not augment.enabled:
        return model
    height, width = model.input_shape[1:3]
    layers = []
    if augment.crop:
        # Pad-by-N-then-random-crop is a zero-filled random shift of up to N whole pixels; done
        # as one translation layer because Keras' RandomCrop does not restore the size at inference.
        layers.append(keras.layers.RandomTranslation(augment.crop / height, augment.crop / width,
                                                     fill_mode="constant", interpolation="nearest",
                                                     seed=seed, name="augment_crop"))
    if augment.shift:
        layers.append(keras.layers.RandomTranslation(augment.shift, augment.shift, fill_mode="constant",
                                                     seed=seed + 1, name="augment_shift"))
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="augment_flip"))
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, model(h), name=f"{model.name}_augmented")


def training_views(params: Params, data: Prepared) -> Views | None:
    """The augmented views of the training split that the students train on (None: views.count 0)."""
    return views.for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape)


def train_students(
    params: Params, data: Prepared, soft_targets: dict[str, np.ndarray] | None = None, *,
    train_views: Views | None = None, role: str | None = None, log_dir: Path | None = None,
    run_dir: Path | None = None,
) -> Iterator[tuple[keras.Model, dict]]:
    """Yield ``params.repeats`` students, one per seed, trained on ``train_views`` (the images
    as they are if None): from the labels only when ``soft_targets`` is None, else distilled
    from the teacher's cached outputs. ``role`` names the models (default: student_scratch or
    student_distilled). Repeat 0's per-epoch curves go to ``log_dir`` if given; with
    ``run_dir``, every repeat resumes from (or, if finished, is restored from) its checkpoint there."""
    role = role or ("student_scratch" if soft_targets is None else "student_distilled")
    goal = objective.HARD_LABELS
    if soft_targets is not None:
        with distribute.scope():  # the objective may hold a variable (the soft term's warm-up weight)
            goal = objective.distillation(params)
    hint_width = soft_targets["train_features"].shape[-1] if goal.hint_weight else 0
    # One model trains every repeat: each repeat assigns it a freshly built model's initial
    # weights (the same as building anew under its seed), so its training step is traced once
    # per stage, not once per repeat (time, and memory that clear_session does not give back).
    student = trained = None
    for repeat in range(params.repeats):
        seed = params.seed + repeat
        repro.make_deterministic(seed)
        print(f"{role}: repeat {repeat + 1}/{params.repeats} (seed {seed})", flush=True)
        loggers = [tracking.epoch_logger(log_dir)] if log_dir is not None and repeat == 0 else []
        with distribute.scope():
            initial = build_model(params.student, data.input_shape, data.num_classes, name=role)
            hint = _hint_layer_output(initial, params.fitnet.student_layer) if hint_width else None
            initial_trained = training_model(initial, goal, hint, hint_width)
            if trained is None:
                student, trained = initial, initial_trained
            else:
                for variable, value in zip(trained.variables, initial_trained.variables, strict=True):
                    variable.assign(value)
            summary = _fit_on(trained, data, params, "train_student", seed, soft_targets,
                              [*goal.callbacks(), *loggers], _checkpoint(run_dir, f"repeat_{repeat}"), train_views)
        # The same model object for every repeat: the caller saves it before the next one starts.
        yield student, summary


def _hint_layer_output(student: keras.Model, layer_name: str) -> keras.KerasTensor:
    """The output of the student layer a FitNets hint guides (fitnet.student_layer)."""
    try:
        return student.get_layer(layer_name).output
    except ValueError:
        names = ", ".join(layer.name for layer in student.layers)
        raise KdflowError(f"fitnet.student_layer = {layer_name!r} is not a student layer; it has: {names}") from None


def targets(data: Prepared, split_name: str, soft_targets: dict[str, np.ndarray] | None = None) -> dict:
    """The training targets of a split: its labels, with the teacher's cached outputs if given."""
    result = {LABELS: data.xy(split_name)[1]}
    if soft_targets is not None:
        result[TEACHER_LOGITS] = soft_targets[split_name]
        if f"{split_name}_features" in soft_targets:
            result[TEACHER_FEATURES] = soft_targets[f"{split_name}_features"]
    return result


def _fit_on(model: TrainingModel, data, params, section, seed, soft_targets=None, callbacks=(), checkpoint=None,
            train_views=None):
    return fit(
        model,
        (data.xy("train")[0], targets(data, "train", soft_targets)),
        (data.xy("val")[0], targets(data, "val", soft_targets)),
        getattr(params, section),
        seed=seed,
        extra_callbacks=list(callbacks),
        config_key=section,
        checkpoint=checkpoint,
        views=train_views,
    )

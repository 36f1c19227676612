"""The teacher trained on the labels (teacher.source: train).

Only the teacher's own params reach here (teacher, train_teacher, the seed): nothing the
students or the distillation methods read, so editing those never retrains the teacher.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from kdflow.core.params import AugmentParams, TeacherTrainParams
from kdflow.core.prepared import Prepared
from kdflow.core.runner import deterministic
from kdflow.models import batch_norm, families
from kdflow.models.files import plain_copy
from kdflow.models.params import TeacherParams
from kdflow.training import curves, strategy
from kdflow.training.loop import Trainer
from kdflow.training.objective import Objective, training_model
from kdflow.views.table import EpochViews, teacher_crops


def train(teacher: TeacherParams, schedule: TeacherTrainParams, seed: int, data: Prepared,
          log_dir: Path | None = None, run_dir: Path | None = None,
          tensorboard_dir: Path | None = None) -> tuple[keras.Model, dict]:
    """Train the teacher on the hard labels; per-epoch curves go to ``log_dir`` if given, with
    ``run_dir`` the training resumes from the checkpoint kept there, and with ``tensorboard_dir``
    TensorBoard logs go to its ``teacher`` (and ``head_only``: the frozen epochs)."""
    deterministic(seed)
    loggers = [curves.epoch_logger(log_dir)] if log_dir is not None else []
    train_images = len(data.xy("train")[1])
    with strategy.scope():
        model = families.build(teacher, data.input_shape, data.num_classes, name="teacher")
        goal = Objective(label_smoothing=schedule.label_smoothing)
        trained = training_model(with_augmentation(model, schedule.augment, seed), goal)
        crops = epoch_crops(schedule, seed, data)
        head_summary = None
        if schedule.freeze_epochs:  # the logits layer alone first, then everything at a lower rate
            _train_only_logits(model, True)
            head = schedule.model_copy(update={"epochs": schedule.freeze_epochs, "patience": None})
            head_summary = Trainer(trained, head, train_images, "train_teacher").fit_prepared(
                data, seed, loggers=loggers, checkpoint=run_dir / "teacher_head.npz" if run_dir is not None else None,
                views=crops, tensorboard=tensorboard_dir / "head_only" if tensorboard_dir else None)
            _train_only_logits(model, False)
            schedule = schedule.model_copy(update={
                "epochs": schedule.epochs - schedule.freeze_epochs,
                "learning_rate": schedule.learning_rate * schedule.fine_tune_lr_scale})
        summary = Trainer(trained, schedule, train_images, "train_teacher").fit_prepared(
            data, seed, loggers=loggers, checkpoint=run_dir / "teacher.npz" if run_dir is not None else None,
            views=crops if crops is None else crops.after(schedule.freeze_epochs),
            tensorboard=tensorboard_dir / "teacher" if tensorboard_dir else None)
    model = plain_copy(model)
    start = time.perf_counter()
    summary = batch_norm.settle(model, summary, data, schedule, seed, "teacher")
    line = batch_norm.settled_line("train_teacher", [summary], train_images, time.perf_counter() - start)
    if line is not None:
        print(line, flush=True)
    if head_summary is not None:
        summary = {**summary, "epochs_run": head_summary["epochs_run"] + summary["epochs_run"],
                   "best_epoch": head_summary["epochs_run"] + summary["best_epoch"],
                   "head_only_epochs": head_summary["epochs_run"]}
    return model, summary


def epoch_crops(schedule: TeacherTrainParams, seed: int, data: Prepared) -> EpochViews | None:
    """train_teacher.augment.crop_scale: one random-resized crop of every image per epoch (the
    views' ``crop`` kind), or None."""
    augment = schedule.augment
    if augment.crop_scale is None:
        return None
    return teacher_crops(seed, len(data.xy("train")[1]), augment.crop_scale, augment.flip, schedule.epochs,
                         data.input_shape)


def _train_only_logits(model: keras.Model, only: bool) -> None:
    """Freeze every layer but the logits layer (``only``), or unfreeze them all. A frozen
    BatchNormalization layer also runs in inference mode (Keras' rule for fine-tuning)."""
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            layer.trainable = not only


def augmentation_on(augment: AugmentParams) -> bool:
    """Whether any of the Keras augmentation layers is on (crop_scale is not one of them)."""
    return augment.shift > 0 or (augment.flip and augment.crop_scale is None) or augment.crop > 0


def with_augmentation(model: keras.Model, augment: AugmentParams, seed: int) -> keras.Model:
    """``model`` behind Keras' random augmentation layers (active only while training; the
    saved model is ``model`` itself). Returns ``model`` unchanged when augmentation is off."""
    if not augmentation_on(augment):
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
    if augment.flip and augment.crop_scale is None:  # with crop_scale, the crops are flipped
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="augment_flip"))
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, model(h), name=f"{model.name}_augmented")

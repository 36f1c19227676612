"""The `train_teacher` stage's work: train the teacher on the labels, or import the user's.

Only the teacher's own params reach here (teacher, train_teacher, the seed): nothing the
students or the distillation methods read, so editing those never retrains the teacher.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from scipy.special import log_softmax

from kdflow import architectures, distribute, input_adapter, repro, teacher_formats, teacher_import_check, tracking
from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.inference import predict_logits
from kdflow.objective import Objective, training_model
from kdflow.params import AugmentParams, TeacherTrainParams
from kdflow.teacher_layers import TeacherOutputs
from kdflow.training import fit_prepared


def train(cfg, train_cfg: TeacherTrainParams, seed: int, data: Prepared, log_dir: Path | None = None,
          run_dir: Path | None = None) -> tuple[keras.Model, dict]:
    """Train the teacher ``cfg`` (the validated ``teacher`` section) on the hard labels;
    per-epoch curves go to ``log_dir`` if given, and with ``run_dir`` the training resumes
    from the checkpoint kept there."""
    repro.make_deterministic(seed)
    callbacks = [tracking.epoch_logger(log_dir)] if log_dir is not None else []
    with distribute.scope():
        model = architectures.build(cfg, data.input_shape, data.num_classes, name="teacher")
        goal = Objective(label_smoothing=train_cfg.label_smoothing)
        trained = training_model(with_augmentation(model, train_cfg.augment, seed), goal)
        crops = epoch_crops(train_cfg, seed, data)
        head_summary = None
        if train_cfg.freeze_epochs:  # the logits layer alone first, then everything at a lower rate
            _train_only_logits(model, True)
            head_cfg = train_cfg.model_copy(update={"epochs": train_cfg.freeze_epochs, "patience": None})
            head_summary = fit_prepared(trained, data, head_cfg, "train_teacher", seed, callbacks=callbacks,
                                        checkpoint=run_dir / "teacher_head.npz" if run_dir is not None else None,
                                        views=crops)
            _train_only_logits(model, False)
            train_cfg = train_cfg.model_copy(update={
                "epochs": train_cfg.epochs - train_cfg.freeze_epochs,
                "learning_rate": train_cfg.learning_rate * train_cfg.fine_tune_lr_scale})
        summary = fit_prepared(trained, data, train_cfg, "train_teacher", seed, callbacks=callbacks,
                               checkpoint=run_dir / "teacher.npz" if run_dir is not None else None,
                               views=crops if crops is None else crops.after(train_cfg.freeze_epochs))
    if head_summary is not None:
        summary = {**summary, "epochs_run": head_summary["epochs_run"] + summary["epochs_run"],
                   "best_epoch": head_summary["epochs_run"] + summary["best_epoch"],
                   "head_only_epochs": head_summary["epochs_run"]}
    return model, summary


def epoch_crops(train_cfg: TeacherTrainParams, seed: int, data: Prepared):
    """train_teacher.augment.crop_scale: one random-resized crop of every image per epoch (the
    views' ``crop`` kind), or None."""
    augment = train_cfg.augment
    if augment.crop_scale is None:
        return None
    from kdflow import views

    # one view per epoch (unvalidated: views.count's bound is for cached views, and the crop
    # knobs were validated as train_teacher.augment's)
    cfg = views.VIEW_KINDS.sections["views"].model_construct(count=train_cfg.epochs, kind="crop",
                                                             scale=augment.crop_scale, flip=augment.flip)
    # a stream of its own: the teacher's crops are not the students' views
    return views.EpochViews(views.table(seed + views.TEACHER_CROP_STREAM, len(data.xy("train")[1]), cfg,
                                        data.input_shape), cfg)


def _train_only_logits(model: keras.Model, only: bool) -> None:
    """Freeze every layer but the logits layer (``only``), or unfreeze them all. A frozen
    BatchNormalization layer also runs in inference mode (Keras' rule for fine-tuning)."""
    for layer in model.layers:
        if layer.weights and layer.name != "logits":
            layer.trainable = not only


def import_file(cfg, seed: int, data: Prepared, log=print) -> tuple[keras.Model, dict]:
    """The user's teacher (teacher.source: file, ``cfg`` the ``teacher`` section) in any format
    kdflow reads, checked against the prepared data and wrapped as a logits model on the
    pipeline's [0, 1] images in the data's class order; ``log`` gets the lines that say what
    was found. Its summary holds its validation accuracy and cross-entropy."""
    repro.make_deterministic(seed)
    loaded = teacher_formats.load(cfg)
    where = f"teacher.path = {cfg.path}"
    _check_shapes(loaded, cfg, data, where)
    to_data = _class_order(cfg, loaded.width, data)
    x, y = data.xy("val")
    tried = input_adapter.candidates(cfg.input_range, data.input_shape[-1])
    raw = [predict_logits(_behind(loaded.net, data, r, cfg.image_size), x) for r in tried]
    probabilities, found = teacher_import_check.output_kind(raw[0], cfg.outputs, where)
    log(f"train_teacher: {where} ({loaded.kind}): {found}")
    line, problem = teacher_import_check.assess(
        tried, [outputs.argmax(axis=1) for outputs in raw], y, to_data, data.class_names,
        input_adapter.describe, input_adapter.as_param, cfg.classes is not None)
    log(f"train_teacher: {line}")
    if problem is not None:
        if cfg.check:
            raise KdflowError(f"{problem} (or teacher.check: false to go on)")
        log(f"train_teacher: warning: {problem} (going on: teacher.check is false)")
    order = None if np.array_equal(to_data, np.arange(len(to_data))) else [int(i) for i in np.argsort(to_data)]
    model = _behind(loaded.net, data, cfg.input_range, cfg.image_size,
                    TeacherOutputs(probabilities, order, name="teacher_logits") if probabilities or order else None)
    logits = predict_logits(model, x)
    return model, {"epochs_run": 0, "val_accuracy": round(float(np.mean(logits.argmax(axis=1) == y)), 6),
                   "val_hard_ce": round(float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean()), 6)}


def _check_shapes(loaded, cfg, data: Prepared, where: str) -> None:
    height, width, channels = data.input_shape
    if len(loaded.input_shape) != 3:
        raise KdflowError(f"{where}: it takes inputs of shape {loaded.input_shape}; a teacher takes images "
                          "(height, width, channels)")
    if loaded.input_shape[2] not in (None, channels):
        raise KdflowError(f"{where}: it takes {loaded.input_shape[2]} channels, but the prepared data has "
                          f"{channels} (data.color_mode)")
    size = tuple(cfg.image_size) if cfg.image_size is not None else (height, width)
    if any(given not in (None, wanted) for given, wanted in zip(loaded.input_shape[:2], size)):
        shown = "x".join("?" if n is None else str(n) for n in loaded.input_shape[:2])
        if cfg.image_size is not None:
            raise KdflowError(f"{where}: it takes {shown} images, not teacher.image_size {list(size)}")
        raise KdflowError(f"{where}: its input size {shown} does not match the prepared data's {height}x{width}: "
                          f"set teacher.image_size: [{loaded.input_shape[0]}, {loaded.input_shape[1]}] to resize the "
                          "images for the teacher (or data.image_size to prepare them at its size)")
    if loaded.width != data.num_classes:
        raise KdflowError(f"{where}: it outputs {loaded.width} scores, but the prepared data has "
                          f"{data.num_classes} classes")


def _class_order(cfg, width: int, data: Prepared) -> np.ndarray:
    """Teacher output i -> the data's class index (identity unless teacher.classes says otherwise)."""
    names = data.class_names
    if cfg.class_order is None:
        return np.arange(width)
    if len(cfg.class_order) != width:
        raise KdflowError(f"teacher.classes lists {len(cfg.class_order)} names, but the teacher outputs {width} scores")
    unknown = [name for name in cfg.class_order if name not in names]
    if unknown:
        raise KdflowError(f"teacher.classes: {unknown[0]!r} is not a class of the data ({', '.join(names)})")
    return np.array([names.index(name) for name in cfg.class_order])


def _behind(net, data: Prepared, input_range, image_size, head=None) -> keras.Model:
    """``net`` on the pipeline's [0, 1] images: the input convention's layers, then ``net``,
    then ``head``. A Keras teacher that needs none of them is returned as it is."""
    adapters = input_adapter.layers(input_range, image_size, data.input_shape[-1])
    if not adapters and head is None and isinstance(net, keras.Model):
        return net
    inputs = keras.Input(shape=data.input_shape, name="image")
    outputs = net(input_adapter.apply(inputs, adapters))
    return keras.Model(inputs, head(outputs) if head is not None else outputs, name="teacher")


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
    if augment.flip and augment.crop_scale is None:  # with crop_scale, the crops are flipped
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="augment_flip"))
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, model(h), name=f"{model.name}_augmented")

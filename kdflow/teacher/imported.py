"""The user's teacher (teacher.source: file), imported: loaded in any format kdflow reads, checked
against the prepared data and on its validation images, and wrapped as a logits model on the
pipeline's [0, 1] images in the data's class order."""

from __future__ import annotations

import keras
import numpy as np
from scipy.special import log_softmax

from kdflow.core import KdflowError
from kdflow.core.prepared import Prepared
from kdflow.core.runner import deterministic
from kdflow.models import batch_norm, input_range
from kdflow.models.layers import TeacherOutputs
from kdflow.models.logits import INFERENCE_BATCH_SIZE, predict_logits
from kdflow.models.params import TeacherParams
from kdflow.teacher import formats, import_check


def import_file(teacher: TeacherParams, seed: int, data: Prepared, log=print) -> tuple[keras.Model, dict]:
    """The teacher at ``teacher.path``; ``log`` gets the lines that say what was found. Its
    summary holds its validation accuracy and cross-entropy."""
    deterministic(seed)
    loaded = formats.load(teacher)
    where = f"teacher.path = {teacher.path}"
    names = teacher.class_order
    _check_shapes(loaded, teacher, data, where, names is not None)
    select = _selection(names, loaded.width, data)
    if len(select) < loaded.width:
        log(f"train_teacher: the data's {len(select)} classes are {len(select)} of the teacher's {loaded.width}: "
            "its distribution is renormalised over them")
    x, y = data.xy("val")
    tried = input_range.candidates(teacher.input_range, data.input_shape[-1])
    raw = [predict_logits(_behind(loaded.net, data, r, teacher.image_size), x) for r in tried]
    probabilities, found = import_check.output_kind(raw[0], teacher.outputs, where)
    log(f"train_teacher: {where} ({loaded.kind}): {found}")
    _check_batch_norm(_behind(loaded.net, data, tried[0], teacher.image_size), select, x, y, seed, log)

    def classes_for(mapping: np.ndarray) -> list[str]:  # the teacher.classes that reads output select[j] as mapping[j]
        given = list(names) if names is not None else list(data.class_names)
        for j, output in enumerate(select):
            given[output] = data.class_names[mapping[j]]
        return given

    kept = [_log_distribution(outputs[:, select], probabilities) for outputs in raw]  # renormalised over the kept
    line, problem = import_check.assess(
        tried, [outputs.argmax(axis=1) for outputs in kept], y, data.class_names,
        input_range.describe, input_range.as_param, classes_for, names is not None)
    if problem is None:
        problem = import_check.flat(tried, [float(np.exp(k.max(axis=1)).mean()) for k in kept],
                                    [float(np.mean(k.argmax(axis=1) == y)) for k in kept], len(select),
                                    input_range.describe, input_range.as_param)
    log(f"train_teacher: {line}")
    if problem is not None:
        if teacher.check:
            raise KdflowError(f"{problem} (or teacher.check: false to go on)")
        log(f"train_teacher: warning: {problem} (going on: teacher.check is false)")
    order = None if np.array_equal(select, np.arange(loaded.width)) else [int(i) for i in select]
    head = TeacherOutputs(probabilities, order, renormalise=len(select) < loaded.width, name="teacher_logits")
    model = _behind(loaded.net, data, teacher.input_range, teacher.image_size,
                    head if probabilities or order else None)
    logits = predict_logits(model, x)
    return model, {"epochs_run": 0, "val_accuracy": round(float(np.mean(logits.argmax(axis=1) == y)), 6),
                   "val_hard_ce": round(float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean()), 6)}


def _log_distribution(outputs: np.ndarray, probabilities: bool) -> np.ndarray:
    """The teacher's log-probabilities from its outputs (logits or probabilities), as TeacherOutputs gives them."""
    logs = np.log(np.maximum(outputs, np.finfo(np.float32).tiny)) if probabilities else outputs
    return log_softmax(logs, axis=1)


def _check_batch_norm(net, select: np.ndarray, x, y: np.ndarray, seed: int, log) -> None:
    """The warning for a teacher whose stored batch-norm statistics do not fit these images (frozen
    statistics of other data: kdflow does not retrain an imported teacher), before any stop.
    ``select``: its outputs of the data's classes."""
    if not batch_norm.batch_norm_layers(net):
        return
    inference, batch = batch_norm.mode_predictions(net, x, INFERENCE_BATCH_SIZE, seed, select)
    warning = batch_norm.disagreement("teacher", inference == y, batch == y)
    if warning is not None:
        log(f"train_teacher: {warning}")


def _check_shapes(loaded: formats.Loaded, teacher: TeacherParams, data: Prepared, where: str, named: bool) -> None:
    height, width, channels = data.input_shape
    if len(loaded.input_shape) != 3:
        raise KdflowError(f"{where}: it takes inputs of shape {loaded.input_shape}; a teacher takes images "
                          "(height, width, channels)")
    if loaded.input_shape[2] not in (None, channels):
        raise KdflowError(f"{where}: it takes {loaded.input_shape[2]} channels, but the prepared data has "
                          f"{channels} (data.color_mode)")
    size = tuple(teacher.image_size) if teacher.image_size is not None else (height, width)
    if any(given not in (None, wanted) for given, wanted in zip(loaded.input_shape[:2], size)):
        shown = "x".join("?" if n is None else str(n) for n in loaded.input_shape[:2])
        if teacher.image_size is not None:
            raise KdflowError(f"{where}: it takes {shown} images, not teacher.image_size {list(size)}")
        raise KdflowError(f"{where}: its input size {shown} does not match the prepared data's {height}x{width}: "
                          f"set teacher.image_size: [{loaded.input_shape[0]}, {loaded.input_shape[1]}] to resize the "
                          "images for the teacher (or data.image_size to prepare them at its size)")
    if loaded.width != data.num_classes and not named:
        raise KdflowError(f"{where}: it outputs {loaded.width} scores, but the prepared data has "
                          f"{data.num_classes} classes" + (
                              f": name its outputs (teacher.classes or teacher.classes_file: its {loaded.width} class "
                              "names in output order) and the data's classes select theirs"
                              if loaded.width > data.num_classes else ""))


def _selection(names: list[str] | None, width: int, data: Prepared) -> np.ndarray:
    """The teacher output of each data class, in the data's order (the identity unless
    teacher.classes or classes_file says otherwise)."""
    if names is None:
        return np.arange(width)
    if len(names) != width:
        raise KdflowError(f"teacher.classes lists {len(names)} names, but the teacher outputs {width} scores")
    missing = [name for name in data.class_names if name not in names]
    if missing:
        raise KdflowError(f"teacher.classes: the data's class {missing[0]!r} is not one of the teacher's {width} "
                          f"classes" + (f" ({len(missing)} are not: {', '.join(missing)})" if len(missing) > 1 else ""))
    return np.array([names.index(name) for name in data.class_names])


def _behind(net, data: Prepared, convention, image_size, head=None) -> keras.Model:
    """``net`` on the pipeline's [0, 1] images: the input convention's layers, then ``net``,
    then ``head``. A Keras teacher that needs none of them is returned as it is."""
    adapters = input_range.layers(convention, image_size, data.input_shape[-1])
    if not adapters and head is None and isinstance(net, keras.Model):
        return net
    inputs = keras.Input(shape=data.input_shape, name="image")
    outputs = net(input_range.apply(inputs, adapters))
    return keras.Model(inputs, head(outputs) if head is not None else outputs, name="teacher")

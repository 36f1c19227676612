"""Loading a user's teacher in the formats TensorFlow users hold: a ``.keras`` file, a legacy
``.h5`` file, or a SavedModel directory (TF Serving, ``model.export()``), each as one Keras
callable with one image input and one output. No Python code from the file runs with safe_mode:
Keras refuses Lambda layers in ``.keras`` files, a ``.h5`` file's config is checked for them
before Keras reads it, and a SavedModel is a graph, loaded without Keras' own objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdflow.core import KdflowError, first_line
from kdflow.models.files import load_user_model, refuse_code
from kdflow.models.params import TeacherParams

H5_SUFFIXES = (".h5", ".hdf5")
KERAS_SUFFIXES = (".keras", *H5_SUFFIXES)

# TensorFlow ops that touch the file system or run Python: a teacher has no business with them,
# and with safe_mode a SavedModel whose chosen signature uses one is refused.
UNSAFE_OPS = frozenset({"ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "PyFunc", "PyFuncStateless",
                        "EagerPyFunc", "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
                        "MergeV2Checkpoints", "ImmutableConst"})


@dataclass(frozen=True)
class Loaded:
    """The teacher as found in its file: ``net`` maps images in the teacher's own convention to
    its raw outputs; ``input_shape`` is (height, width, channels), None where the file leaves
    it open; ``width`` is its number of outputs."""

    net: Any
    kind: str
    input_shape: tuple
    width: int


def load(teacher: TeacherParams) -> Loaded:
    """The teacher at ``teacher.path``."""
    path = Path(teacher.path)
    where = f"teacher.path = {teacher.path}"
    if path.is_dir():
        return _saved_model(path, teacher, where)
    if not path.is_file():
        raise KdflowError(f"{where}: not found")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise KdflowError(f"{where}: not a model format kdflow reads: a .keras or .h5 file, or a SavedModel directory")
    if teacher.signature is not None or teacher.output_key is not None:
        raise KdflowError(f"teacher.{'signature' if teacher.signature else 'output_key'} applies to a SavedModel "
                          f"directory, and {teacher.path} is a Keras file")
    if path.suffix.lower() in H5_SUFFIXES:
        _check_h5(path, where, teacher.safe_mode)
        kind = "Keras H5"
    else:
        kind = "Keras"
    model = load_user_model(path, key="teacher.path", safe_mode=teacher.safe_mode)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise KdflowError(f"{where}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                          "a teacher takes one image input and gives one output")
    output_shape = tuple(model.output_shape[1:])
    if len(output_shape) != 1:
        raise KdflowError(f"{where}: it outputs shape {output_shape}; a teacher outputs one score per class")
    return Loaded(model, kind, tuple(model.input_shape[1:]), output_shape[0])


def _check_h5(path: Path, where: str, safe_mode: bool) -> None:
    """A legacy H5 file holds its model as JSON: refuse one without a model or, with safe_mode,
    one with a Lambda layer (its Python bytecode would be rebuilt), before Keras reads it."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError as exc:
        raise KdflowError(f"{where}: not a readable HDF5 file ({first_line(exc)})") from None
    if config is None:
        raise KdflowError(f"{where}: holds weights only, no model: save the whole model (model.save)")
    if safe_mode and "Lambda" in _class_names(json.loads(config)):
        raise refuse_code(where, "teacher")


def _class_names(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            found.add(node["class_name"])
        for value in node.values():
            found |= _class_names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _class_names(value)
    return found


def _saved_model(path: Path, teacher: TeacherParams, where: str) -> Loaded:
    import tensorflow as tf

    from kdflow.models.layers import SavedModelTeacher

    if not (path / "saved_model.pb").is_file():
        raise KdflowError(f"{where}: a directory, but not a SavedModel (no saved_model.pb in it)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a damaged SavedModel
        raise KdflowError(f"{where}: the SavedModel could not be loaded ({first_line(exc)})") from None
    signatures = sorted(loaded.signatures)
    name = _choose(teacher.signature, signatures, "serving_default", path, "teacher.signature", "signatures")
    function = loaded.signatures[name]
    _, inputs = function.structured_input_signature
    if len(inputs) != 1:
        raise KdflowError(f"{where}: signature '{name}' takes {len(inputs)} inputs ({', '.join(sorted(inputs))}); "
                          "a teacher takes one image input")
    (input_key, spec), = inputs.items()
    outputs = function.structured_outputs
    output_key = _choose(teacher.output_key, sorted(outputs), None, path, "teacher.output_key",
                         f"outputs of signature '{name}'")
    out_spec = outputs[output_key]
    if len(spec.shape) != 4 or len(out_spec.shape) != 2 or out_spec.shape[1] is None:
        raise KdflowError(f"{where}: signature '{name}' maps {tuple(spec.shape)} to {tuple(out_spec.shape)}; "
                          "a teacher maps a batch of images (batch, height, width, channels) to one score per class")
    if teacher.safe_mode:
        graph = function.graph.as_graph_def()
        ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
        if unsafe := sorted(ops & UNSAFE_OPS):
            raise KdflowError(f"{where}: refused: signature '{name}' uses {', '.join(unsafe)}, which reach the file "
                              "system or Python. If you trust the SavedModel, set teacher.safe_mode: false")
    layer = SavedModelTeacher(name, input_key, output_key, spec.dtype.name, out_spec.shape[1], source=str(path),
                              name="teacher_graph")
    return Loaded(layer, f"SavedModel, signature '{name}', output '{output_key}'", tuple(spec.shape[1:]),
                  int(out_spec.shape[1]))


def _choose(given: str | None, names: list[str], default: str | None, path: Path, key: str, what: str) -> str:
    """``given`` if it is one of ``names``, else the only name, else ``default``: one line otherwise."""
    where = f"teacher.path = {path}"
    if given is not None:
        if given not in names:
            raise KdflowError(f"{key} = {given!r}: not among the {what} of {path}: "
                              f"{', '.join(names)}")
        return given
    if len(names) == 1:
        return names[0]
    if default in names:
        return default
    if not names:
        raise KdflowError(f"{where}: the SavedModel has no {what.split(' ')[0]}: save it with a serving signature")
    raise KdflowError(f"{where}: it has several {what} ({', '.join(names)}): choose one with {key}")

"""The pipeline's models on disk: saving and loading ``.keras`` files (byte-reproducible), a user's
model files, and the repeated students saved and loaded as one unit."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from kdflow.core import KdflowError, first_line
from kdflow.core.io import atomic_dir, atomic_path, write_fixed_zip
from kdflow.core.paths import MODEL_ROLES, model_file, repeat_file, repeats_dir


def save_model(path: str | Path, model: Any) -> None:
    """Save a trained Keras model as a portable, byte-reproducible ``.keras`` file.

    The saved copy is rebuilt from the model's config and weights, so it carries no optimizer
    state or training objective: ``keras.models.load_model`` works anywhere with no custom
    objects. Keras stamps the save time into the archive; it is replaced with a fixed value so
    identical weights give identical bytes (and DVC hashes).
    """
    import keras  # deferred: keep TensorFlow out of code paths that do not need it

    from kdflow.models.layers import SavedModelTeacher

    def layers(of) -> Iterable[Any]:  # an ensemble's members are models inside the model
        for layer in of.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    clean = model
    # An imported SavedModel teacher's wrapper is a plain functional model already, and its
    # graph cannot be rebuilt from a config (it travels as the layer's assets).
    if not any(isinstance(layer, SavedModelTeacher) for layer in layers(model)):
        # from_config of the plain Model class: a functional model, whatever class trained it.
        clean = keras.Model.from_config(float32_config(model.get_config()))
        clean.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "model.keras"
        clean.save(raw)
        with zipfile.ZipFile(raw) as zf:
            members = {name: zf.read(name) for name in sorted(zf.namelist())}
    meta = json.loads(members["metadata.json"])
    meta["date_saved"] = "reproducible"
    members["metadata.json"] = json.dumps(meta, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        write_fixed_zip(tmp, members)


def float32_config(config: Any) -> Any:
    """A model's config with every mixed precision dtype policy made float32 (its weights are
    float32 already): the model trained under runtime.precision, saved as it is served."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [float32_config(value) for value in config]
    return config


def load_model(path: str | Path, *, produced_by: str, safe_mode: bool = True) -> Any:
    """Load a pipeline-made ``.keras`` model with Keras' safe_mode on (no code from the file);
    off only for a teacher the user marked as trusted (teacher.safe_mode: false)."""
    import keras

    import kdflow.models.layers  # noqa: F401  (registers the imported teacher's layers with Keras)

    path = Path(path)
    if not path.exists():
        raise KdflowError(f"{path} is missing: run `dvc repro {produced_by}` first")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise KdflowError(
            f"{path} could not be loaded ({first_line(exc)}): rerun `dvc repro --force {produced_by}`"
        ) from None


def load_role(role: str, safe_mode: bool = True) -> Any:
    """The model of ``role`` (see kdflow.core.paths.MODEL_ROLES) that the pipeline ships."""
    return load_model(model_file(role), produced_by=MODEL_ROLES[role], safe_mode=safe_mode)


def refuse_code(where: str, section: str) -> KdflowError:
    return KdflowError(f"{where}: refused: the model contains Python code (a Lambda layer), and loading it "
                       "could run arbitrary code on this machine. If you trust the file as you would a script, "
                       f"set {section}.safe_mode: false")


def load_user_model(path: str | Path, *, key: str, safe_mode: bool = True) -> Any:
    """Load a user's ``.keras`` (or legacy ``.h5``) model. With safe_mode (the default) Keras
    refuses files that carry Python code (Lambda layers), because loading them could run anything."""
    import keras

    import kdflow.models.layers  # noqa: F401  (a teacher the pipeline imported may be brought back)

    path = Path(path)
    where = f"{key} = {path}"
    if not path.is_file():
        raise KdflowError(f"{where}: file not found")
    if not safe_mode:
        # The user's explicit opt-in: this process may rebuild (and later save) the model's code.
        keras.config.enable_unsafe_deserialization()
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises many types for a damaged or unsafe archive
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise refuse_code(where, key.rsplit(".", 1)[0]) from None
        raise KdflowError(f"{where}: not a loadable Keras model ({first_line(exc)})") from None


def plain_copy(model: Any) -> Any:
    """A model of its own with ``model``'s architecture and current weights (built outside
    any distribution strategy)."""
    import keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_students(role: str, students: Iterable[tuple[Any, dict]], ships: bool = True) -> dict:
    """Save every repeat to ``models/<role>_repeats/repeat_<i>.keras`` (swapped in as a whole
    when all are trained) and, for a student that ``ships``, repeat 0 to ``models/<role>.keras``;
    return the metrics summary."""
    summaries = {}
    with atomic_dir(repeats_dir(role)) as staging:
        for i, (model, summary) in enumerate(students):
            save_model(staging / repeat_file(role, i).name, model)
            summaries[f"repeat_{i}"] = summary
        if ships:
            with atomic_path(model_file(role)) as tmp:
                shutil.copyfile(staging / repeat_file(role, 0).name, tmp)
    val_acc = [s["val_accuracy"] for s in summaries.values()]
    return {**summaries, "val_accuracy_mean": round(float(np.mean(val_acc)), 6)}


def load_students(role: str) -> list:
    folder = repeats_dir(role)
    files = sorted(folder.glob("repeat_*.keras"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise KdflowError(f"{folder} holds no models: run `dvc repro {MODEL_ROLES[role]}` first")
    return [load_model(f, produced_by=MODEL_ROLES[role]) for f in files]

"""Resumable training: the whole training state is saved after every epoch, outside DVC's
outputs, so a killed stage resumes from its last finished epoch on the next ``dvc repro``.

Keras' ``BackupAndRestore`` restores only weights, optimizer and epoch: not the dropout and
augmentation RNG state (Keras' SeedGenerator variables are not in ``save_weights``), not early
stopping's best weights and patience count, not the epoch logs (the curves, the kept epoch), and it
writes two files non-atomically; a resumed run would end with other weights than an uninterrupted
one. ``EpochCheckpoint`` keeps all of that in one file, replaced atomically; the data order is a
function of the epoch number (kdflow.training.inputs.make_dataset), so it needs no state.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import keras
import numpy as np
from pydantic import BaseModel

import kdflow
from kdflow.core.io import atomic_path, writes_discarded
from kdflow.core.paths import RUNS_DIR

KEY_FILE = "key.json"  # in a run's folder: what its checkpoints belong to


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else str(value)


def code_folders() -> list[str]:
    """The kdflow sub-packages this process has imported: a stage's code (its code deps in dvc.yaml)."""
    return sorted({name.split(".")[1] for name in sys.modules if name.startswith("kdflow.")})


def _key(stage: str, trains_on: Iterable[Any], inputs: Iterable[Path]) -> tuple[str, dict]:
    """What a checkpoint belongs to: the stage, what its training reads of the params, its input
    files and its code (its script and the sub-packages it imported: editing the report throws no
    checkpoint away)."""
    described = {"stage": stage, "params": json.loads(json.dumps(list(trains_on), default=_plain)),
                 "code": code_folders(), "inputs": sorted(str(p) for p in inputs)}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    package = Path(kdflow.__file__).parent
    script = Path("stages") / f"{stage}.py"  # run from the project root, as DVC runs it
    files = [p for folder in described["code"] for p in sorted((package / folder).rglob("*.py"))]
    files += [script] if script.is_file() else []
    for root in map(Path, inputs):
        files += sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for path in files:
        digest.update(str(path.relative_to(package) if path.is_relative_to(package) else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16], described


@contextmanager
def run_dir(stage: str, trains_on: Iterable[Any], inputs: Iterable[Path]) -> Iterator[Path]:
    """This stage run's checkpoint folder, keyed by ``trains_on`` (the params values the training
    reads), the ``inputs`` files and the stage's code; removed once the block (which writes the
    stage's outputs) succeeds. Checkpoints of other params, data or code are removed up front."""
    inputs = list(inputs)
    key, described = _key(stage, trains_on, inputs)
    stage_root = RUNS_DIR / stage
    path = stage_root / key
    if writes_discarded():  # a non-chief worker: it reads the chief's checkpoints, writes none
        yield path
        return
    if stage_root.exists():
        for stale in stage_root.iterdir():
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / KEY_FILE).write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the full training state at every epoch end (and when training ends); restore it
    with ``restore`` before ``fit``. Also the record of every epoch's logs (the resumed ones
    included), which ``kdflow.training.loop.Trainer.fit`` summarises. ``path=None``: record only."""

    def __init__(self, path: Path | None, early_stopping: keras.callbacks.EarlyStopping | None = None,
                 replay_to: Iterable[keras.callbacks.Callback] = (), diverged: Callable[[], bool] = lambda: False):
        super().__init__()
        self.path = path
        self.early_stopping = early_stopping
        self.replay_to = list(replay_to)
        self.diverged = diverged  # a diverged model's state is never saved
        self.history: list[dict] = []
        self._saved = self._read()

    def _read(self):
        if self.path is None or not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = [npz[f"a{i}"] for i in range(meta["arrays"])]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            print(f"{self.path}: unreadable checkpoint ignored; training starts over", flush=True)
            return None
        return meta, arrays

    @property
    def first_epoch(self) -> int:
        return self._saved[0]["epoch"] if self._saved else 0

    @property
    def finished(self) -> bool:
        return bool(self._saved and self._saved[0]["finished"])

    @staticmethod
    def _state_variables(model: keras.Model) -> list:
        # model.variables holds the SeedGenerator states (dropout, augmentation) too.
        return [*model.variables, *model.optimizer.variables]

    def restore(self, model: keras.Model, epochs: int) -> None:
        """Put a saved state into ``model`` (compiled, not yet fitted), if there is one that fits it."""
        if not self._saved:
            return
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        meta, arrays = self._saved
        variables = self._state_variables(model)
        shapes_match = len(arrays) >= len(variables) and all(
            tuple(v.shape) == a.shape for v, a in zip(variables, arrays))
        if not shapes_match:
            print(f"{self.path}: checkpoint of another model ignored; training starts over", flush=True)
            self._saved = None
            return
        for variable, value in zip(variables, arrays):
            variable.assign(value)
        self.history = meta["history"]
        for callback in self.replay_to:  # e.g. the dvclive logger: its curves start at epoch 1
            callback.set_model(model)
            for epoch, epoch_logs in enumerate(self.history):
                callback.on_epoch_end(epoch, dict(epoch_logs))
        state = "finished" if meta["finished"] else f"resuming at epoch {meta['epoch'] + 1}/{epochs}"
        print(f"{model.name}: {state} from the checkpoint {self.path}", flush=True)

    def on_train_begin(self, logs=None):
        # Runs after EarlyStopping.on_train_begin (it comes later in the callback list),
        # which resets the state restored here.
        if not self._saved:
            return
        meta, arrays = self._saved
        if self.early_stopping is not None and meta["early_stopping"] is not None:
            es, saved = self.early_stopping, meta["early_stopping"]
            es.wait, es.best, es.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            n_model = len(self._state_variables(self.model))
            es.best_weights = arrays[n_model:] if saved["has_best_weights"] else None

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        self._save(epoch + 1, finished=False)

    def on_train_end(self, logs=None):
        # After EarlyStopping restored the best weights: the state a finished fit returns.
        self._save(len(self.history), finished=True)

    def _save(self, epoch: int, finished: bool) -> None:
        if self.path is None or self.diverged():
            return
        arrays = [np.asarray(v.numpy()) for v in self._state_variables(self.model)]
        es = self.early_stopping
        es_state = None
        if es is not None:
            best = None if es.best is None else float(es.best)
            es_state = {"wait": int(es.wait), "best": best, "best_epoch": int(es.best_epoch),
                        "has_best_weights": es.best_weights is not None}
            if es.best_weights is not None:
                arrays += [np.asarray(w) for w in es.best_weights]
        meta = {"epoch": epoch, "finished": finished, "history": self.history,
                "early_stopping": es_state, "arrays": len(arrays)}
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **{f"a{i}": a for i, a in enumerate(arrays)})

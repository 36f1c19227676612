"""The students, as `distill`, `train_scratch` and `train_plain` train them:

- ``student_distilled`` (`distill`): the teacher's cached outputs + labels, on the augmented views;
- ``student_scratch`` (`train_scratch`): labels only, on the same views (the baseline);
- ``student_plain`` (`train_plain`): labels only, on the images as they are.

The students are a paired design: repeat i of every student stage uses seed ``seed + i``, so
the same initial weights, the same data order, the same views (kdflow.views) and the same
dropout masks; only the objective (and for the plain students the augmentation) differ. The
stage gives the objective: this module knows nothing of distillation methods or view kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Mapping

import keras
import numpy as np

from kdflow import architectures, distribute, repro, tracking
from kdflow.data import Prepared
from kdflow.objective import HARD_LABELS, Objective, training_model
from kdflow.params import TrainParams
from kdflow.training import Views, fit_prepared


def train_students(
    cfg, train_cfg: TrainParams, repeats: int, seed: int, data: Prepared, *, role: str,
    objective: Callable[[], Objective] = lambda: HARD_LABELS,
    extra_targets: Mapping[str, Mapping[str, np.ndarray]] | None = None, views: Views | None = None,
    log_dir: Path | None = None, run_dir: Path | None = None,
) -> Iterator[tuple[keras.Model, dict]]:
    """Yield ``repeats`` students of the architecture ``cfg`` (the validated ``student``
    section), repeat i trained with seed ``seed + i`` under ``objective()`` (made once, under the
    strategy's scope: it may hold a variable) on the labels plus ``extra_targets`` per split, on
    ``views`` (the images as they are if None). ``role`` names the models. Repeat 0's per-epoch
    curves go to ``log_dir`` if given; with ``run_dir``, every repeat resumes from (or, if
    finished, is restored from) its checkpoint there. Each yielded model is the student's own
    copy: a later repeat does not change it."""
    with distribute.scope():
        goal = objective()
    # One model trains every repeat: each repeat assigns it a freshly built model's initial
    # weights (the same as building anew under its seed), so its training step is traced once
    # per stage, not once per repeat (time, and memory that clear_session does not give back).
    student = trained = None
    for repeat in range(repeats):
        repeat_seed = seed + repeat
        repro.make_deterministic(repeat_seed)
        print(f"{role}: repeat {repeat + 1}/{repeats} (seed {repeat_seed})", flush=True)
        loggers = [tracking.epoch_logger(log_dir)] if log_dir is not None and repeat == 0 else []
        with distribute.scope():
            initial = architectures.build(cfg, data.input_shape, data.num_classes, name=role)
            initial_trained = training_model(initial, goal)
            if trained is None:
                student, trained = initial, initial_trained
            else:
                for variable, value in zip(trained.variables, initial_trained.variables, strict=True):
                    variable.assign(value)
            checkpoint = run_dir / f"repeat_{repeat}.npz" if run_dir is not None else None
            summary = fit_prepared(trained, data, train_cfg, "train_student", repeat_seed, extra_targets,
                                   [*goal.callbacks(), *loggers], checkpoint, views)
        yield _copy(student), summary


def _copy(model: keras.Model) -> keras.Model:
    """A model of its own with ``model``'s architecture and current weights (built outside
    any distribution strategy)."""
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy

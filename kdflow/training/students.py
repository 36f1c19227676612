"""The students, as `distill`, `train_scratch` and `train_plain` train them:

- ``student_distilled`` (`distill`): the labels and the teacher's outputs, on the augmented views;
- ``student_scratch`` (`train_scratch`): labels only, on the same views (the baseline);
- ``student_plain`` (`train_plain`): labels only, on the images as they are.

The students are a paired design: repeat i of every student stage uses seed ``seed + i``, so
the same initial weights, the same data order, the same views and the same dropout masks; only
the objective (and for the plain students the augmentation) differ. The stage gives the
objective and the targets: this module knows nothing of distillation methods or view kinds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import keras

from kdflow.core.params import TrainParams
from kdflow.core.prepared import Prepared
from kdflow.core.runner import deterministic
from kdflow.models import batch_norm, families
from kdflow.models.files import plain_copy
from kdflow.models.params import StudentParams
from kdflow.training import curves, strategy
from kdflow.training.inputs import Targets, ViewSource
from kdflow.training.loop import Trainer
from kdflow.training.objective import HARD_LABELS, Objective, training_model


@dataclass(frozen=True)
class Students:
    """The paired students of a stage: ``repeats`` of ``arch``, trained on ``schedule``, repeat i
    with seed ``seed + i``; ``role`` names the models (kdflow.core.paths.MODEL_ROLES)."""

    arch: StudentParams
    schedule: TrainParams
    repeats: int
    seed: int
    role: str


def train(students: Students, data: Prepared, objective: Callable[[], Objective] = lambda: HARD_LABELS,
          targets: Mapping[str, Targets] | None = None, views: ViewSource | None = None,
          log_dir: Path | None = None, run_dir: Path | None = None,
          tensorboard_dir: Path | None = None) -> Iterator[tuple[keras.Model, dict]]:
    """Yield the trained students with their summaries, under ``objective()`` (made once, in the
    strategy's scope: it may hold a variable) on the labels plus ``targets`` per split, on
    ``views`` (the images as they are if None). Repeat 0's per-epoch curves go to ``log_dir`` if
    given; with ``run_dir``, every repeat resumes from (or, if finished, is restored from) its
    checkpoint there; with ``tensorboard_dir``, repeat i's TensorBoard logs go to its ``repeat_<i>``.
    Each yielded model is the student's own copy: a later repeat does not change it."""
    with strategy.scope():
        goal = objective()
    # One model trains every repeat: each repeat assigns it a freshly built model's initial
    # weights (the same as building anew under its seed), so its training steps are traced once
    # per stage, not once per repeat (time, and memory that clear_session does not give back).
    student = trainer = None
    settled, settling = [], 0.0  # the batch-norm step's summaries and seconds (printed, never in outputs)
    for repeat in range(students.repeats):
        repeat_seed = students.seed + repeat
        deterministic(repeat_seed)
        print(f"{students.role}: repeat {repeat + 1}/{students.repeats} (seed {repeat_seed})", flush=True)
        loggers = [curves.epoch_logger(log_dir)] if log_dir is not None and repeat == 0 else []
        with strategy.scope():
            initial = families.build(students.arch, data.input_shape, data.num_classes, name=students.role)
            initial_trained = training_model(initial, goal)
            if trainer is None:
                student = initial
                trainer = Trainer(initial_trained, students.schedule, len(data.xy("train")[1]), "train_student")
            else:
                for variable, value in zip(trainer.model.variables, initial_trained.variables, strict=True):
                    variable.assign(value)
            checkpoint = run_dir / f"repeat_{repeat}.npz" if run_dir is not None else None
            summary = trainer.fit_prepared(data, repeat_seed, targets, callbacks=goal.callbacks(), loggers=loggers,
                                           checkpoint=checkpoint, views=views,
                                           tensorboard=tensorboard_dir / f"repeat_{repeat}" if tensorboard_dir else None)
        trained = plain_copy(student)
        start = time.perf_counter()
        summary = batch_norm.settle(trained, summary, data, students.schedule, repeat_seed,
                                    f"{students.role} repeat {repeat + 1}/{students.repeats}")
        settling += time.perf_counter() - start
        settled.append(summary)
        yield trained, summary
    line = batch_norm.settled_line(students.role, settled, len(data.xy("train")[1]), settling)
    if line is not None:
        print(line, flush=True)


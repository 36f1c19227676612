"""The student's capacity ceiling (``python -m benchmarks.ceiling``): how close the student
architecture can come to the teacher's function when it is *shown the test images*.

From the workspace after `dvc repro` (the trained teacher, the prepared data, params.yaml): the
teacher's outputs are cached for the views of the training images *and the test images*, and
students are distilled on them as `distill` trains them (the committed recipe, or ``--alpha``,
``--epochs``), then scored on the test images they trained on: test accuracy and fidelity to
the teacher. With ``--test-only``, on the test images alone.

This uses test data for training by design: it is a ceiling to report, never a number to choose
anything by (docs/results.md). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def ceiling(repeats: int, alpha: float | None, epochs: int | None, test_only: bool) -> dict:
    import numpy as np

    from kdflow.core.prepared import Prepared, content_hash, load_prepared
    from kdflow.core.runner import deterministic
    from kdflow.distill import methods, objective
    from kdflow.evaluate.metrics import fidelity
    from kdflow.models.files import load_role
    from kdflow.models.logits import predict_logits
    from kdflow.schema import Schema
    from kdflow.training import students
    from kdflow.views import cache
    from kdflow.views.table import for_training

    params = Schema.load()
    schedule = params.train_student if epochs is None else params.train_student.model_copy(update={"epochs": epochs})
    alpha = params.alpha if alpha is None else alpha
    data = load_prepared(("train", "val", "test"))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (data.xy(s) for s in ("train", "val", "test"))
    x_test = np.asarray(x_test[:])
    x = x_test if test_only else np.concatenate([np.asarray(x_train[:]), x_test])
    y = y_test if test_only else np.concatenate([y_train, y_test])
    arrays = {"x_train": x, "y_train": y, "x_val": np.asarray(x_val[:]), "y_val": y_val}
    shown = Prepared({**data.meta, "content_hash": content_hash(arrays)}, arrays)
    deterministic(params.seed)
    teacher = load_role("teacher", safe_mode=params.teacher.safe_mode)
    teacher_test = predict_logits(teacher, x_test)
    drawn = for_training(params.seed, len(y), params.views.model_copy(update={"teacher": "cached"}), shown.input_shape)
    computed = cache.compute(teacher, shown, drawn)
    targets = {split: {cache.TEACHER_LOGITS: computed[split]} for split in ("train", "val")}
    method = methods.build(params.distill, params.temperature)
    per_repeat = []
    for student, summary in students.train(
            students.Students(params.student, schedule, repeats, params.seed, "student_distilled"), shown,
            objective=lambda: objective.objective(method, alpha), targets=targets, views=drawn):
        logits = predict_logits(student, x_test)
        per_repeat.append({"test_accuracy": round(float(np.mean(logits.argmax(1) == y_test)), 6),
                           **fidelity(logits, teacher_test)})
    return {"trained_on": "test images" if test_only else "training + test images",
            "images": len(y), "alpha": alpha, "temperature": params.temperature,
            "epochs": schedule.epochs, "views": params.views.shaping_keys(),
            "teacher_test_accuracy": round(float(np.mean(teacher_test.argmax(1) == y_test)), 6),
            "per_repeat": per_repeat,
            "test_accuracy_mean": round(float(np.mean([r["test_accuracy"] for r in per_repeat])), 6),
            "teacher_agreement_mean": round(float(np.mean([r["teacher_agreement"] for r in per_repeat])), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=None, help="default: params.yaml's")
    parser.add_argument("--epochs", type=int, default=None, help="default: train_student.epochs")
    parser.add_argument("--test-only", action="store_true", help="train on the test images alone")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        report = ceiling(args.repeats, args.alpha, args.epochs, args.test_only)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

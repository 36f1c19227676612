"""Where the gain of a longer schedule saturates (``python -m benchmarks.patience``): the paired
distilled and scratch students of the workspace's recipe, trained for each of ``--epochs``.

From the workspace after `dvc repro` (the trained teacher, the prepared data, params.yaml, with
``-S key=value`` overrides as `dvc exp run` takes them): the teacher's outputs are cached for
the views, then for every schedule ``--repeats`` distilled and scratch students train as
`distill` and `train_scratch` train them (paired by seed). Printed per schedule: validation
accuracy of both and the paired validation gain (what a choice may look at), and test
accuracy and fidelity to the teacher for the record. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _override(raw: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)


def schedules(epochs: list[int], repeats: int, overrides: list[str]) -> dict:
    import numpy as np

    from kdflow.core.paths import PARAMS_FILE
    from kdflow.core.prepared import load_prepared
    from kdflow.core.runner import deterministic
    from kdflow.distill import methods, objective
    from kdflow.evaluate.metrics import fidelity, paired_gain
    from kdflow.models.files import load_role
    from kdflow.models.logits import predict_logits
    from kdflow.schema import Schema
    from kdflow.training import students
    from kdflow.views import cache
    from kdflow.views.table import for_training

    raw = yaml.safe_load(open(PARAMS_FILE))
    for assignment in overrides:
        _override(raw, assignment)
    params = Schema.checked(raw)
    data = load_prepared(("train", "val", "test"))
    x_test, y_test = data.xy("test")
    deterministic(params.seed)
    teacher = load_role("teacher", safe_mode=params.teacher.safe_mode)
    teacher_test = predict_logits(teacher, x_test)
    n = len(data.xy("train")[1])
    report = {"overrides": overrides, "views": params.views.shaping_keys(), "alpha": params.alpha,
              "temperature": params.temperature, "repeats": repeats, "schedules": {}}
    online = params.views.teacher == "online"
    method = methods.build(params.distill, params.temperature)
    # once for every schedule: the cached views' outputs, or (online) the images as they are
    computed = cache.compute(teacher, data, None if online else for_training(params.seed, n, params.views,
                                                                             data.input_shape))
    targets = {"train": {} if online else {cache.TEACHER_LOGITS: computed["train"]},
               "val": {cache.TEACHER_LOGITS: computed["val"]}}
    for count in epochs:
        schedule = params.train_student.model_copy(update={"epochs": count})
        drawn = for_training(params.seed, n, params.views, data.input_shape, count)
        start = time.perf_counter()
        trained = {
            "distilled": list(students.train(
                students.Students(params.student, schedule, repeats, params.seed, "student_distilled"), data,
                objective=lambda: objective.objective(method, params.alpha, teacher=teacher if online else None),
                targets=targets, views=drawn)),
            "scratch": list(students.train(
                students.Students(params.student, schedule, repeats, params.seed, "student_scratch"), data,
                views=drawn)),
        }
        entry = {"seconds": round(time.perf_counter() - start, 1)}
        for role, models in trained.items():
            logits = [predict_logits(model, x_test) for model, _ in models]
            matched = [fidelity(z, teacher_test) for z in logits]
            entry[role] = {"val_accuracy": [s["val_accuracy"] for _, s in models],
                           "test_accuracy": [round(float(np.mean(z.argmax(1) == y_test)), 6) for z in logits],
                           **{key: [m[key] for m in matched] for key in ("teacher_agreement", "teacher_kl")}}
        entry["val_kd_gain"] = paired_gain(entry["distilled"]["val_accuracy"], entry["scratch"]["val_accuracy"])
        entry["test_kd_gain"] = paired_gain(entry["distilled"]["test_accuracy"], entry["scratch"]["test_accuracy"])
        report["schedules"][count] = entry
        print(f"benchmark patience {count} epochs: {json.dumps(entry)}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="100,200,400", help="comma-separated schedules")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value, as dvc exp run -S")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        report = schedules([int(e) for e in args.epochs.split(",")], args.repeats, args.overrides)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

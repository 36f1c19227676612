"""Stage `train_scratch`: the same students on the same augmented views, labels only (paired
with distill's by seed): the baseline the KD gain is measured against.

Writes models/student_scratch.keras (repeat 0), models/student_scratch_repeats/ and
metrics/train_scratch.json. A killed run resumes from its last finished epoch.
"""

from kdflow.architectures import FAMILIES
from kdflow.params import load_params
from kdflow.runner import run_stage
from kdflow.views import VIEW_KINDS


def main() -> None:
    params = load_params(FAMILIES, VIEW_KINDS)
    from kdflow import distribute
    from kdflow.data import load_prepared

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    from kdflow import artifacts, resume, students, views
    from kdflow.io import atomic_dir, write_json
    from kdflow.paths import PREPARED_DIR, live_dir, metrics_file

    train_views = views.for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape,
                                     params.train_student.epochs)
    with resume.run_dir("train_scratch", params, [PREPARED_DIR]) as run_dir:
        with atomic_dir(live_dir("train_scratch")) as log_dir:
            trained = students.train_students(params.student, params.train_student, params.repeats, params.seed, data,
                                              role="student_scratch", views=train_views, log_dir=log_dir,
                                              run_dir=run_dir)
            summary = artifacts.save_students("student_scratch", trained)
        write_json(metrics_file("train_scratch"), summary)
    print(f"train_scratch: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_scratch*")


if __name__ == "__main__":
    run_stage(main)

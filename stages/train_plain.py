"""Stage `train_plain`: the same students on the images as they are, labels only (paired with
the others by seed): what augmentation alone adds is train_scratch vs this.

Writes models/student_plain.keras (repeat 0), models/student_plain_repeats/ and
metrics/train_plain.json. A killed run resumes from its last finished epoch.
"""

from kdflow.architectures import FAMILIES
from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params(FAMILIES)
    from kdflow import distribute
    from kdflow.data import load_prepared

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    from kdflow import artifacts, resume, students
    from kdflow.io import atomic_dir, write_json
    from kdflow.paths import PREPARED_DIR, live_dir, metrics_file

    with resume.run_dir("train_plain", params, [PREPARED_DIR]) as run_dir:
        with atomic_dir(live_dir("train_plain")) as log_dir:
            trained = students.train_students(params.student, params.train_student, params.repeats, params.seed, data,
                                              role="student_plain", log_dir=log_dir, run_dir=run_dir)
            summary = artifacts.save_students("student_plain", trained)
        write_json(metrics_file("train_plain"), summary)
    print(f"train_plain: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_plain*")


if __name__ == "__main__":
    run_stage(main)

"""Stage `train_plain`: the same students on the images as they are, labels only (paired with
the others by seed): what augmentation alone adds is train_scratch vs this.

Writes models/student_plain.keras (repeat 0), models/student_plain_repeats/ and
metrics/train_plain.json. A killed run resumes from its last finished epoch.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.models.params import StudentParams


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    student: StudentParams = StudentParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.prepared import load_prepared
    from kdflow.training import strategy

    strategy.setup(params.runtime)
    data = load_prepared(("train", "val"))
    from kdflow.core.io import atomic_dir, write_json
    from kdflow.core.paths import PREPARED_DIR, live_dir, metrics_file, tensorboard_dir
    from kdflow.models.files import save_students
    from kdflow.training import resume, students

    trains_on = [params.seed, params.repeats, params.student, params.train_student, params.runtime]
    with resume.run_dir("train_plain", trains_on, [PREPARED_DIR]) as run_dir:
        with atomic_dir(live_dir("train_plain")) as log_dir:
            trained = students.train(
                students.Students(params.student, params.train_student, params.repeats, params.seed, "student_plain"),
                data, log_dir=log_dir, run_dir=run_dir,
                tensorboard_dir=tensorboard_dir("train_plain") if params.runtime.tensorboard else None)
            summary = save_students("student_plain", trained)
        write_json(metrics_file("train_plain"), summary)
    print(f"train_plain: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_plain*")


if __name__ == "__main__":
    run_stage(main)

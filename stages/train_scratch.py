"""Stage `train_scratch`: the same students on the same augmented views, labels only (paired
with distill's by seed): the baseline the KD gain is measured against.

Writes models/student_scratch.keras (repeat 0), models/student_scratch_repeats/ and
metrics/train_scratch.json. A killed run resumes from its last finished epoch.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.models.params import StudentParams
from kdflow.views.params import ViewsParams


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    student: StudentParams = StudentParams()
    views: ViewsParams = ViewsParams()


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
    from kdflow.views.table import for_training

    views = for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape,
                         params.train_student.epochs)
    trains_on = [params.seed, params.repeats, params.student, params.train_student, params.views, params.runtime]
    with resume.run_dir("train_scratch", trains_on, [PREPARED_DIR]) as run_dir:
        with atomic_dir(live_dir("train_scratch")) as log_dir:
            trained = students.train(
                students.Students(params.student, params.train_student, params.repeats, params.seed, "student_scratch"),
                data, views=views, log_dir=log_dir, run_dir=run_dir,
                tensorboard_dir=tensorboard_dir("train_scratch") if params.runtime.tensorboard else None)
            summary = save_students("student_scratch", trained)
        write_json(metrics_file("train_scratch"), summary)
    print(f"train_scratch: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_scratch*")


if __name__ == "__main__":
    run_stage(main)

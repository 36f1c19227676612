"""Stage `train_pseudo`: the same students on the labelled images and the images without labels,
on the same views, the teacher's label (its argmax on the view) standing in for each missing
one, and no soft term: the baseline that says what the extra images give without the soft targets.

Writes models/student_pseudo_repeats/ and metrics/train_pseudo.json. Without images without
labels (data.unlabeled, data.labels_per_class) these students would be the scratch students:
nothing is trained (each output folder holds a none.txt that says so) and the report leaves
them out. A killed run resumes from its last finished epoch.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.models.params import StudentParams, TeacherParams
from kdflow.views.params import ViewsParams

ROLE = "student_pseudo"


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    views: ViewsParams = ViewsParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.io import atomic_dir, write_json
    from kdflow.core.paths import PREPARED_DIR, SOFT_TARGETS_DIR, live_dir, metrics_file, model_file, repeats_dir
    from kdflow.core.paths import tensorboard_dir
    from kdflow.core.prepared import load_prepared

    data = load_prepared(("train", "val"))
    if not data.unlabeled_count:
        said = ("no images without labels (data.unlabeled, data.labels_per_class): these students would be "
                "the scratch students, none trained")
        for folder in (repeats_dir(ROLE), live_dir("train_pseudo")):
            with atomic_dir(folder) as staging:  # a line in each output says why it holds no model
                (staging / "none.txt").write_text(f"train_pseudo: {said}\n")
        write_json(metrics_file("train_pseudo"), {"repeats": 0, "unlabeled_images": 0})
        print(f"train_pseudo: {said}")
        return
    from kdflow.training import strategy
    from kdflow.views import cache

    strategy.setup(params.runtime)
    unlabeled = data.unlabeled_count
    data = data.with_unlabeled()
    cache.check_data(data)
    from kdflow.models.files import load_role, save_students
    from kdflow.models.layers import one_teacher
    from kdflow.training import resume, students
    from kdflow.training.objective import PseudoLabels
    from kdflow.views.table import for_training

    views = for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape,
                         params.train_student.epochs)
    online = params.views.teacher == "online" and views is not None
    inputs = [PREPARED_DIR, SOFT_TARGETS_DIR]
    teacher = None
    if online:
        with strategy.scope():
            teacher = load_role("teacher", safe_mode=params.teacher.safe_mode)
        teacher.trainable = False
        one_teacher(teacher, "views.teacher = online")
        inputs.append(model_file("teacher"))
    targets = cache.students_targets(data, views, online)
    trains_on = [params.seed, params.repeats, params.student, params.train_student, params.views, params.runtime]
    with resume.run_dir("train_pseudo", trains_on, inputs) as run_dir:
        with atomic_dir(live_dir("train_pseudo")) as log_dir:
            trained = students.train(
                students.Students(params.student, params.train_student, params.repeats, params.seed, ROLE), data,
                objective=lambda: PseudoLabels(teacher=teacher), targets=targets, views=views, log_dir=log_dir,
                run_dir=run_dir,
                tensorboard_dir=tensorboard_dir("train_pseudo") if params.runtime.tensorboard else None)
            summary = save_students(ROLE, trained, ships=False)
        write_json(metrics_file("train_pseudo"), {**summary, "unlabeled_images": unlabeled})
    print(f"train_pseudo: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> {repeats_dir(ROLE)}/")


if __name__ == "__main__":
    run_stage(main)

"""Stage `distill`: train `repeats` students on the augmented views, from the labels and the
teacher's cached outputs for each view, on the labelled images and any without labels (whose hard
term is the teacher's label, kdflow.distill.objective) (and, for a feature method, the teacher's features at the
layer it names, computed here over the same views). With `views.teacher: online` the teacher runs
here on every batch, a fresh view of every image each epoch.

Writes models/student_distilled.keras (repeat 0), models/student_distilled_repeats/ and
metrics/distill.json. A killed run resumes from its last finished epoch.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.distill.methods import DistillParams
from kdflow.models.params import StudentParams, TeacherParams
from kdflow.views.params import ViewsParams


class Read(Params):
    """What this stage reads of params.yaml, typed."""

    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    views: ViewsParams = ViewsParams()
    distill: DistillParams = DistillParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.prepared import load_prepared
    from kdflow.training import strategy
    from kdflow.views import cache

    strategy.setup(params.runtime)
    data = load_prepared(("train", "val")).with_unlabeled()
    cache.check_data(data)
    from kdflow.core.io import atomic_dir, write_json
    from kdflow.core.paths import PREPARED_DIR, SOFT_TARGETS_DIR, live_dir, metrics_file, model_file, tensorboard_dir
    from kdflow.distill import methods, objective
    from kdflow.models.files import load_role, save_students
    from kdflow.models.layers import one_teacher
    from kdflow.training import resume, students
    from kdflow.views.table import for_training

    method = methods.build(params.distill, params.temperature)
    views = for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape,
                         params.train_student.epochs)
    online = params.views.teacher == "online" and views is not None
    inputs = [PREPARED_DIR, SOFT_TARGETS_DIR]
    teacher = None
    if method.features or online:
        with strategy.scope():
            teacher = load_role("teacher", safe_mode=params.teacher.safe_mode)
        teacher.trainable = False
        one_teacher(teacher, f"distill.method = {params.distill.method}" if method.features else "views.teacher = online")
        inputs.append(model_file("teacher"))
    targets = cache.students_targets(data, views, online, teacher, method.features)
    shapes = objective.feature_shapes(targets, method)
    trains_on = [params.seed, params.repeats, params.alpha, params.temperature, params.student,
                 params.train_student, params.views, params.distill, params.runtime]
    with resume.run_dir("distill", trains_on, inputs) as run_dir:
        with atomic_dir(live_dir("distill")) as log_dir:
            trained = students.train(
                students.Students(params.student, params.train_student, params.repeats, params.seed,
                                  "student_distilled"), data,
                objective=lambda: objective.objective(method, params.alpha, shapes, teacher if online else None),
                targets=targets, views=views, log_dir=log_dir, run_dir=run_dir,
                tensorboard_dir=tensorboard_dir("distill") if params.runtime.tensorboard else None)
            summary = save_students("student_distilled", trained)
        write_json(metrics_file("distill"), summary)
    print(f"distill ({params.distill.method}): mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_distilled*")


if __name__ == "__main__":
    run_stage(main)

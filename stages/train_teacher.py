"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras.

With teacher.source: file, the user's model at teacher.path (.keras, .h5 or a SavedModel) is
imported instead: checked against the prepared data and on its validation images, and saved
wrapped as a logits model (no training; its validation numbers go to the metrics). A killed
training run resumes from its last finished epoch."""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.models.params import TeacherParams


class Read(Params):
    """What this stage reads of params.yaml, typed (before TensorFlow starts: bad params fail fast)."""

    teacher: TeacherParams = TeacherParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.prepared import load_prepared
    from kdflow.training import strategy

    strategy.setup(params.runtime)
    data = load_prepared(("train", "val"))
    from kdflow.core.io import atomic_dir, write_json
    from kdflow.core.paths import PREPARED_DIR, live_dir, metrics_file, model_file, tensorboard_dir
    from kdflow.models.files import save_model
    from kdflow.teacher import imported, train
    from kdflow.training import resume

    if params.teacher.source == "file":
        model, summary = imported.import_file(params.teacher, params.seed, data)
        with atomic_dir(live_dir("train_teacher")):  # no curves: nothing was trained
            save_model(model_file("teacher"), model)
    else:
        trains_on = [params.seed, params.teacher, params.train_teacher, params.runtime]
        with resume.run_dir("train_teacher", trains_on, [PREPARED_DIR]) as run_dir:
            with atomic_dir(live_dir("train_teacher")) as log_dir:
                model, summary = train.train(
                    params.teacher, params.train_teacher, params.seed, data, log_dir, run_dir,
                    tensorboard_dir("train_teacher") if params.runtime.tensorboard else None)
                save_model(model_file("teacher"), model)
    write_json(metrics_file("train_teacher"), summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> {model_file('teacher')}")


if __name__ == "__main__":
    run_stage(main)

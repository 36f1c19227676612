"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras.

With teacher.source: file, the user's model at teacher.path (.keras, .h5 or a SavedModel) is
imported instead: checked against the prepared data and on its validation images, and saved
wrapped as a logits model (no training; its validation numbers go to the metrics). An ensemble
(teacher.members, or a folder of teacher files as teacher.path) is saved as one model that
combines its members (kdflow.teacher.ensemble). A killed
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
    from kdflow.teacher import ensemble, imported, train
    from kdflow.training import resume

    teacher = params.teacher
    if teacher.source == "file":
        files = ensemble.member_files(teacher.path)
        if files is None:
            model, summary = imported.import_file(teacher, params.seed, data)
        else:  # each member imported and checked as one teacher is
            model, summary = ensemble.build(len(files), lambda i: imported.import_file(
                teacher.model_copy(update={"path": str(files[i])}), params.seed, data), teacher.ensemble, data)
        with atomic_dir(live_dir("train_teacher")):  # no curves: nothing was trained
            save_model(model_file("teacher"), model)
    else:
        trains_on = [params.seed, teacher, params.train_teacher, params.runtime]
        tensorboard = tensorboard_dir("train_teacher") if params.runtime.tensorboard else None
        with resume.run_dir("train_teacher", trains_on, [PREPARED_DIR]) as run_dir:
            with atomic_dir(live_dir("train_teacher")) as log_dir:
                if teacher.members == 1:
                    model, summary = train.train(teacher, params.train_teacher, params.seed, data, log_dir, run_dir,
                                                 tensorboard)
                else:  # member i with seed + i, checkpointed apart; member 0's curves
                    model, summary = ensemble.build(teacher.members, lambda i: train.train(
                        teacher, params.train_teacher, params.seed + i, data, log_dir if i == 0 else None,
                        ensemble.member_dir(run_dir, i), tensorboard and tensorboard / ensemble.MEMBER.format(i)),
                        teacher.ensemble, data)
                save_model(model_file("teacher"), model)
    write_json(metrics_file("train_teacher"), summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> {model_file('teacher')}")


if __name__ == "__main__":
    run_stage(main)

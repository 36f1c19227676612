"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras.

With teacher.source: file, the user's model at teacher.path is checked against the prepared
data and copied instead (no training; its validation numbers go to the metrics)."""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()  # validated before TensorFlow is imported: bad params fail fast
    from kdflow import artifacts, recipes, tracking
    from kdflow.data import load_prepared
    from kdflow.io import atomic_dir, save_model, write_json

    data = load_prepared(("train", "val"))
    with atomic_dir(tracking.live_dir("train_teacher")) as log_dir:
        if params.teacher.source == "file":
            model, summary = recipes.import_teacher(params, data)
        else:
            model, summary = recipes.train_teacher(params, data, log_dir)
        save_model(artifacts.model_path("teacher"), model)
    write_json("metrics/train_teacher.json", summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> models/teacher.keras")


if __name__ == "__main__":
    run_stage(main)

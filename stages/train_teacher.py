"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras."""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()  # validated before TensorFlow is imported: bad params fail fast
    from kdflow import artifacts, recipes
    from kdflow.data import load_prepared
    from kdflow.io import save_model, write_json

    model, summary = recipes.train_teacher(params, load_prepared(("train", "val")))
    save_model(artifacts.model_path("teacher"), model)
    write_json("metrics/train_teacher.json", summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> models/teacher.keras")


if __name__ == "__main__":
    run_stage(main)

"""Stage `train_scratch`: the same students, labels only (paired with distill's by seed).

Writes models/student_scratch.keras (repeat 0), models/student_scratch_repeats/ and
metrics/train_scratch.json.
"""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    from kdflow import artifacts, recipes
    from kdflow.data import load_prepared
    from kdflow.io import write_json

    students = recipes.train_students(params, load_prepared(("train", "val")))
    summary = artifacts.save_students("student_scratch", students)
    write_json("metrics/train_scratch.json", summary)
    print(f"train_scratch: mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_scratch*")


if __name__ == "__main__":
    run_stage(main)

"""Stage `export`: the distilled student (repeat 0) as SavedModel and TFLite float32 / int8.

Writes export/ (saved_model/, student_float32.tflite, student_int8.tflite, latency.json) and
metrics/export.json (test accuracy and size of each form, the int8 accuracy drop).
"""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    from kdflow import artifacts, repro
    from kdflow.data import load_prepared
    from kdflow.export import export_student
    from kdflow.io import atomic_dir, load_model, write_json

    repro.make_deterministic(params.seed)
    data = load_prepared(("train", "test"))
    keras_file = artifacts.model_path("student_distilled")
    student = load_model(keras_file, produced_by="distill")
    with atomic_dir("export") as staging:
        metrics, latency = export_student(student, data, keras_file, staging,
                                          params.export.calibration_samples, params.seed)
    write_json("metrics/export.json", metrics)
    for form in ("tflite_float32", "tflite_int8"):
        print(f"export: {form}: test accuracy {metrics[form]['accuracy']:.4f}, "
              f"{metrics[form]['size_bytes'] / 1024:.1f} KiB, {latency[form]:.3f} ms per sample")
    print(f"export: int8 accuracy drop vs Keras {metrics['int8_accuracy_drop'] * 100:+.2f} points -> export/")


if __name__ == "__main__":
    run_stage(main)

"""Stage `export`: the distilled student (repeat 0), calibrated by a temperature fitted on the
validation split, as `.keras`, SavedModel and TFLite float32 / int8.

Writes export/ (student.keras, saved_model/, student_float32.tflite, student_int8.tflite) and
metrics/export.json (the temperature, test accuracy and size of each form, the int8 accuracy
drop). The TFLite latency is wall-clock, so it goes to timings/export.json, which DVC does not track.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage


def main() -> None:
    params = Params.load()
    from kdflow.core.io import atomic_dir, write_json
    from kdflow.core.paths import EXPORT_DIR, metrics_file, timings_file
    from kdflow.core.prepared import load_prepared
    from kdflow.core.runner import deterministic
    from kdflow.export.forms import export_student
    from kdflow.models.files import load_role

    deterministic(params.seed)
    data = load_prepared(("train", "val", "test"))
    student = load_role("student_distilled")
    with atomic_dir(EXPORT_DIR) as staging:
        metrics, latency = export_student(student, data, staging, params.export.calibration_samples, params.seed)
    write_json(metrics_file("export"), metrics)
    write_json(timings_file("export"), latency)
    print(f"export: temperature {metrics['temperature']:.3f} (fitted on the validation split) folded into every form")
    for form in ("tflite_float32", "tflite_int8"):
        print(f"export: {form}: test accuracy {metrics[form]['accuracy']:.4f}, "
              f"{metrics[form]['size_bytes'] / 1024:.1f} KiB, {latency[form]:.3f} ms per sample")
    print(f"export: int8 accuracy drop vs Keras {metrics['int8_accuracy_drop'] * 100:+.2f} points -> {EXPORT_DIR}/")


if __name__ == "__main__":
    run_stage(main)

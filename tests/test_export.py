"""The export stage's conversions: SavedModel, TFLite float32 and int8, run by the interpreter."""

import numpy as np

from conftest import make_prepared, minimal_params


def test_tflite_forms_match_the_keras_student(tmp_path):
    from kdflow import recipes
    from kdflow.export import TfliteModel, export_student
    from kdflow.artifacts import save_model
    from kdflow.params import Params

    data = make_prepared(n_per_class=30, num_classes=3)
    params = Params.model_validate(minimal_params(repeats=1))
    student, _ = next(recipes.train_students(params, data))
    save_model(tmp_path / "student.keras", student)
    metrics, latency = export_student(student, data, tmp_path / "student.keras", tmp_path / "out",
                                      calibration_samples=32, seed=0)
    assert (tmp_path / "out/saved_model/saved_model.pb").is_file()
    x, _ = data.xy("test")
    keras_logits = np.asarray(student(x, training=False))
    float_logits = TfliteModel((tmp_path / "out/student_float32.tflite").read_bytes()).predict(x)
    np.testing.assert_allclose(float_logits, keras_logits, rtol=1e-4, atol=1e-4)  # same function
    int8 = TfliteModel((tmp_path / "out/student_int8.tflite").read_bytes())
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8  # full-integer
    agreement = np.mean(int8.predict(x).argmax(1) == keras_logits.argmax(1))
    assert agreement >= 0.9
    assert metrics["tflite_int8"]["size_bytes"] < metrics["tflite_float32"]["size_bytes"]
    assert metrics["int8_accuracy_drop"] == round(metrics["keras"]["accuracy"] - metrics["tflite_int8"]["accuracy"], 6)
    assert set(latency) == {"unit", "tflite_float32", "tflite_int8"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["saved_model", "student_float32.tflite",
                                                                   "student_int8.tflite"]  # no timings in export/

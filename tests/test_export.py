"""The export stage's conversions: the calibrated `.keras`, SavedModel, TFLite float32 and int8,
run by the interpreter."""

import keras
import numpy as np

from conftest import make_prepared, scratch_students, validated


def test_every_exported_form_is_the_student_with_its_validation_temperature(tmp_path):
    from kdflow.export.forms import TfliteModel, export_student
    from kdflow.models.logits import fit_temperature, predict_logits

    data = make_prepared(n_per_class=30, num_classes=3)
    # A student that expects [-1, 1] (as a pretrained one may): every exported form takes the
    # pipeline's [0, 1] images and applies the mapping itself.
    params = validated(repeats=1, student={"arch": "repo_student", "input_range": "symmetric"})
    student, _ = next(scratch_students(params, data))
    assert student.get_layer("input_range").offset == -1.0
    metrics, latency = export_student(student, data, tmp_path / "out", calibration_samples=32, seed=0)
    assert (tmp_path / "out/saved_model/saved_model.pb").is_file()
    x_val, y_val = data.xy("val")
    temperature = fit_temperature(predict_logits(student, x_val), y_val)
    assert metrics["temperature"] == temperature and temperature != 1.0
    x, _ = data.xy("test")
    calibrated = np.asarray(student(x, training=False)) / temperature

    shipped = keras.models.load_model(tmp_path / "out/student.keras", safe_mode=True)  # no code in it
    np.testing.assert_allclose(np.asarray(shipped(x, training=False)), calibrated, rtol=1e-5, atol=1e-6)
    float_logits = TfliteModel((tmp_path / "out/student_float32.tflite").read_bytes()).predict(x)
    np.testing.assert_allclose(float_logits, calibrated, rtol=1e-4, atol=1e-4)  # same function
    assert metrics["keras"]["accuracy"] == metrics["keras"]["uncalibrated_accuracy"]
    int8 = TfliteModel((tmp_path / "out/student_int8.tflite").read_bytes())
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8  # full-integer
    agreement = np.mean(int8.predict(x).argmax(1) == calibrated.argmax(1))
    assert agreement >= 0.9
    assert metrics["tflite_int8"]["size_bytes"] < metrics["tflite_float32"]["size_bytes"]
    assert metrics["int8_accuracy_drop"] == round(metrics["keras"]["accuracy"] - metrics["tflite_int8"]["accuracy"], 6)
    assert set(latency) == {"unit", "tflite_float32", "tflite_int8"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "saved_model", "student.keras", "student_float32.tflite", "student_int8.tflite"]  # no timings in export/

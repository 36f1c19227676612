"""Deployable forms of the distilled student: a `.keras` file, a TensorFlow SavedModel and TFLite
flatbuffers, float32 and full-integer int8 (post-training quantization calibrated on training
images, as in TensorFlow's post-training quantization guide), each run by the LiteRT interpreter
(``ai-edge-litert``, which replaces TensorFlow's deprecated ``tf.lite.Interpreter``).

Every form carries the temperature fitted on the validation split (kdflow.models.logits) as its
last layer, so its logits are the calibrated ones: softmax of them is the probability to trust."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from kdflow.models.files import save_model
from kdflow.models.logits import fit_temperature, predict_logits, with_temperature


@contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into a temp file, and replay it if the
    block fails: the TFLite converter's and LiteRT's log lines bypass Python's sys.stderr and
    TF_CPP_MIN_LOG_LEVEL. KDFLOW_TF_LOGS=1 lets everything through."""
    if os.environ.get("KDFLOW_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def save_saved_model(model, directory: Path) -> None:
    """A SavedModel (one `serving_default` signature: images in, logits out) whose bytes depend
    only on the model, so DVC hashes it the same run to run. Keras' own `model.export` orders the
    variables differently from process to process; `tf.saved_model.save` of a tf.Module that
    tracks them in the model's own order does not. TensorFlow also stamps a random uuid into
    fingerprint.pb, replaced by the model's checksum."""
    import tensorflow as tf
    from tensorflow.core.protobuf import fingerprint_pb2

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            # Keras 3 variables are not tf.Variables to tf.Module's tracking: track the TF ones,
            # or the SavedModel (and TFLite from it) would hold uninitialised resources.
            self.tracked_variables = [variable.value for variable in model.variables]

        @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image")])
        def serve(self, image):
            return {"logits": self.model(image, training=False)}

    serving = Serving()
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.serve})
    path = directory / "fingerprint.pb"
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    fingerprint.uuid = str(fingerprint.saved_model_checksum)
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def to_tflite(saved_model_dir: Path, calibration: np.ndarray | None = None) -> bytes:
    """float32 TFLite, or with ``calibration`` images full-integer int8 (int8 input and output)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with native_stderr_captured():  # the converter's own progress lines
        return converter.convert()


class TfliteModel:
    """One TFLite model in the LiteRT interpreter, called one sample at a time (as on a device);
    int8 models get their inputs quantized and outputs dequantized with the model's own scales."""

    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_captured():  # "Created TensorFlow Lite XNNPACK delegate for CPU"
            self.interpreter = Interpreter(model_content=content, num_threads=1)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = image[None].astype(np.float32)
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] == np.int8:
            x = np.clip(np.round(x / scale + zero_point), -128, 127)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale if self.output["dtype"] == np.int8 else y

    def predict(self, x: np.ndarray) -> np.ndarray:
        block = 256  # rows read at a time (x may be on disk)
        return np.stack([self(image) for start in range(0, len(x), block) for image in x[start:start + block]])

    def latency_ms(self, x: np.ndarray, calls: int = 200) -> float:
        """Median wall time of one single-sample call, after warm-up."""
        for image in x[:10]:
            self(image)
        times = []
        for i in range(calls):
            start = time.perf_counter()
            self(x[i % len(x)])
            times.append((time.perf_counter() - start) * 1000)
        return round(statistics.median(times), 4)


def export_student(student, data, out_dir: Path, calibration_samples: int, seed: int) -> tuple[dict, dict]:
    """Write ``out_dir``/student.keras, saved_model, student_float32.tflite and
    student_int8.tflite, all with the validation temperature folded in; return the reproducible
    metrics (the temperature, test accuracy and size of each form) and, apart from them, the
    wall-clock latency of each TFLite form (ms), which varies from run to run."""
    x_train, _ = data.xy("train")
    x_val, y_val = data.xy("val")
    x_test, y_test = data.xy("test")
    rng = np.random.default_rng(seed)
    calibration = x_train[rng.choice(len(x_train), min(calibration_samples, len(x_train)), replace=False)]

    def accuracy(logits):
        return round(float(np.mean(logits.argmax(axis=1) == y_test)), 6)

    temperature = fit_temperature(predict_logits(student, x_val), y_val)
    shipped = with_temperature(student, temperature)
    save_model(out_dir / "student.keras", shipped)
    metrics = {"temperature": temperature,
               "keras": {"accuracy": accuracy(predict_logits(shipped, x_test)),
                         "uncalibrated_accuracy": accuracy(predict_logits(student, x_test)),
                         "size_bytes": (out_dir / "student.keras").stat().st_size}}
    latency = {"unit": "ms, median of single-sample TFLite interpreter calls (1 thread)"}
    save_saved_model(shipped, out_dir / "saved_model")
    for form, images in (("tflite_float32", None), ("tflite_int8", calibration)):
        content = to_tflite(out_dir / "saved_model", images)
        (out_dir / f"student_{form.split('_')[1]}.tflite").write_bytes(content)
        model = TfliteModel(content)
        metrics[form] = {"accuracy": accuracy(model.predict(x_test)), "size_bytes": len(content)}
        latency[form] = model.latency_ms(x_test)
    metrics["int8_accuracy_drop"] = round(metrics["keras"]["accuracy"] - metrics["tflite_int8"]["accuracy"], 6)
    metrics["int8_size_ratio"] = round(metrics["keras"]["size_bytes"] / metrics["tflite_int8"]["size_bytes"], 4)
    return metrics, latency

"""Batch-norm statistics that match the weights: the re-estimation after training, and the warning
for a model whose inference mode disagrees with its batch statistics."""

import re

import keras
import numpy as np

from conftest import make_prepared, scratch_students, validated
from kdflow.core.runner import deterministic
from kdflow.models import batch_norm

BN_STUDENT = {"arch": "spec", "spec": {"conv_filters": [8, 8], "batch_norm": True, "dense_units": [16]}}


def bn_params(recompute: bool, repeats: int = 1):
    # Few steps at a high rate: the moving averages still remember their start (mean 0, var 1).
    return validated(repeats=repeats, seed=8, student=BN_STUDENT,
                     train_student={"epochs": 3, "batch_size": 16, "learning_rate": 0.01, "lr_floor": 0.1,
                                    "amsgrad": False, "patience": None, "recompute_bn": recompute})


def test_the_estimate_is_the_average_of_the_batches_statistics_over_every_image():
    deterministic(0)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(70, 4, 4, 2)).astype("float32")
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(keras.layers.BatchNormalization(momentum=0.9)(inputs)))
    layer = model.layers[1]
    assert batch_norm.reestimate(model, x, batch_size=32, seed=1) == 1
    # two batches: 32 rows and the last 38 (the remainder joins the last batch), each weighted by its size
    rows = np.random.default_rng(1).permutation(70)
    parts = [x[np.sort(rows[:32])], x[np.sort(rows[32:])]]
    mean = sum(len(p) * p.mean(axis=(0, 1, 2)) for p in parts) / 70
    variance = sum(len(p) * p.var(axis=(0, 1, 2)) for p in parts) / 70
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)  # batches partition the images
    assert layer.momentum == 0.9 and model.layers[2].rate == 0.5  # put back as they were
    # a model without batch norm is left alone
    plain = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Dense(1)])
    assert batch_norm.reestimate(plain, x, 32, 1) == 0


def test_a_student_with_stale_statistics_is_repaired_and_reruns_are_identical(capsys):
    data = make_prepared(n_per_class=40, shape=(12, 12, 1))
    (model, summary), = list(scratch_students(bn_params(recompute=True), data))
    entry = summary["batch_norm"]
    x_val, y_val = data.xy("val")
    inference = round(float(np.mean(model.predict(x_val, verbose=0).argmax(axis=1) == y_val)), 6)
    # the moving averages score chance in inference mode; the re-estimated statistics score what
    # batch statistics do: the model learned, in inference mode
    assert entry["val_accuracy_before"] < 0.5 and entry["layers"] == 2
    assert inference == entry["val_accuracy_after"] == summary["val_accuracy"] > 0.85
    assert abs(entry["val_accuracy_after"] - entry["val_accuracy_batch_statistics"]) <= 0.05
    out = capsys.readouterr().out
    assert re.search(f"student_scratch: batch-norm statistics of 2 layers re-estimated over {len(data.xy('train')[1])} "
                     f"training images: val accuracy \\(inference mode\\) {entry['val_accuracy_before']:.4f} -> "
                     f"{entry['val_accuracy_after']:.4f} \\([0-9.]+ s\\)\n", out), out
    assert "warning" not in out
    (again, summary_again), = list(scratch_students(bn_params(recompute=True), data))
    assert summary_again == summary
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_kept_statistics_that_disagree_with_batch_statistics_are_named_in_one_warning(capsys):
    data = make_prepared(n_per_class=40, shape=(12, 12, 1))
    (model, summary), = list(scratch_students(bn_params(recompute=False), data))
    entry = summary["batch_norm"]
    assert "layers" not in entry and entry["val_accuracy_before"] == entry["val_accuracy_after"] < 0.5
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        f"warning: student_scratch repeat 1/1 scores {entry['val_accuracy_after']:.3f} on validation in inference "
        f"mode but {entry['val_accuracy_batch_statistics']:.3f} with batch statistics: its stored batch-norm "
        "statistics do not match its weights or these images (docs/troubleshooting.md)"]
    assert entry["val_accuracy_batch_statistics"] > 0.85

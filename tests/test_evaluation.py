"""Evaluation metrics against hand-computed values, and the logged training curves."""

import numpy as np
import pytest
from scipy.special import softmax

from conftest import make_prepared, minimal_params
from kdflow.evaluation import (
    calibration_bins, evaluate_logits, expected_calibration_error, inference_latency_ms, paired_gain,
    summarize_repeats,
)


def test_ece_matches_a_hand_computed_example():
    # Two bins used out of 15: confidences 0.9 (2 samples, 1 right) and 0.6 (2 samples, both right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    bins = [b for b in calibration_bins(probs, y) if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    assert bins[0]["confidence"] == pytest.approx(0.6) and bins[1]["confidence"] == pytest.approx(0.9)
    # ECE = 2/4 * |1.0 - 0.6| + 2/4 * |0.5 - 0.9| = 0.4
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)


def test_ece_counts_confidence_one_in_the_last_bin_and_is_zero_when_calibrated():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert calibration_bins(probs, np.array([0, 1]))[-1]["count"] == 2
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0


def test_evaluate_logits_per_class_accuracy_and_teacher_agreement():
    logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    teacher = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    y = np.array([0, 1, 2, 2])
    result = evaluate_logits(logits, y, ["cat", "dog", "eel"], teacher)
    assert result["accuracy"] == 0.75
    assert result["per_class_accuracy"] == {"cat": 1.0, "dog": 1.0, "eel": 0.5}
    assert result["teacher_agreement"] == 0.5
    np.testing.assert_allclose(result["loss"], -np.mean(np.log(softmax(logits, axis=1)[np.arange(4), y])), rtol=1e-5)


def test_summary_over_repeats_and_paired_gain():
    per = [{"accuracy": 0.9, "loss": 0.3, "ece": 0.02}, {"accuracy": 0.8, "loss": 0.5, "ece": 0.04}]
    s = summarize_repeats(per)
    assert s["accuracy"] == 0.9 and s["accuracy_mean"] == pytest.approx(0.85)
    assert s["accuracy_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1), abs=1e-6)
    assert s["loss_mean"] == pytest.approx(0.4) and s["ece_mean"] == pytest.approx(0.03)
    gain = paired_gain([0.9, 0.92, 0.91], [0.88, 0.9, 0.9])
    assert gain["mean"] == pytest.approx(0.016667, abs=1e-6)
    assert gain["ci95_low"] < gain["mean"] < gain["ci95_high"]


def test_latency_is_reported_per_batch_size():
    from kdflow.models import build_model
    from kdflow.params import Params

    data = make_prepared()
    model = build_model(Params.model_validate(minimal_params()).student, data.input_shape, data.num_classes, "student")
    latency = inference_latency_ms(model, data.xy("test")[0], batch_sizes=(1, 8), calls=3)
    assert set(latency) == {"batch_1", "batch_8"}


def test_training_logs_curves_with_learning_rate_and_loss_terms(tmp_path):
    from kdflow import recipes
    from kdflow.params import Params
    from kdflow.soft_targets import compute

    data = make_prepared()
    params = Params.model_validate(minimal_params(repeats=2))
    teacher, _ = recipes.train_teacher(params, data, tmp_path / "teacher")
    lr = (tmp_path / "teacher/plots/metrics/train/learning_rate.tsv").read_text().splitlines()
    assert lr[0] == "step\tlearning_rate" and len(lr) == 1 + params.train_teacher.epochs
    assert float(lr[1].split()[1]) > float(lr[2].split()[1])  # cosine decay
    cache = compute(teacher, data)
    list(recipes.train_students(params, data, cache, log_dir=tmp_path / "distill"))
    logged = {str(p.relative_to(tmp_path / "distill")) for p in (tmp_path / "distill").rglob("*.tsv")}
    assert {"plots/metrics/train/soft_loss.tsv", "plots/metrics/train/hard_ce.tsv",
            "plots/metrics/eval/soft_loss.tsv", "plots/metrics/eval/accuracy.tsv"} <= logged
    # Only repeat 0 is logged: one line per epoch, not one per epoch per repeat.
    assert len((tmp_path / "distill/plots/metrics/train/loss.tsv").read_text().splitlines()) == 3
    assert "timestamp" not in (tmp_path / "distill/plots/metrics/train/loss.tsv").read_text()


def test_gap_closed_is_undefined_when_the_gap_is_within_the_scratch_students_noise():
    from kdflow.evaluation import gap_closed

    scratch = [0.95, 0.96, 0.94]  # std 0.01
    assert gap_closed(0.01, 0.98, scratch) == pytest.approx(1 / 3, abs=1e-6)  # gap 0.03 > 2 std
    assert gap_closed(0.01, 0.965, scratch) is None  # gap 0.015 < 2 std: a ratio to noise
    assert gap_closed(0.01, 0.94, scratch) is None  # the teacher is worse


def _gain(low, high):
    return {"mean": (low + high) / 2, "ci95_low": low, "ci95_high": high}


@pytest.mark.parametrize("kd, augment, both, answer", [
    ((0.002, 0.01), (0.01, 0.02), (0.02, 0.03), "**distill on the augmented views**: the teacher adds"),
    ((-0.01, -0.002), (0.01, 0.02), (0.0, 0.01), "**augment, do not distill**"),
    ((-0.005, 0.004), (0.01, 0.02), (0.01, 0.02), "**augment**: augmentation alone helps"),
    ((-0.001, 0.01), (-0.001, 0.01), (0.002, 0.01), "**distill on the augmented views**: together"),
    ((-0.01, 0.01), (-0.01, 0.01), (-0.01, 0.01), "**no demonstrated effect**"),
])
def test_the_report_answers_distill_augment_or_both_from_the_three_paired_cis(kd, augment, both, answer):
    from kdflow.report import recommendation

    m = {"kd_gain": _gain(*kd), "augment_gain": _gain(*augment), "combined_gain": _gain(*both)}
    assert recommendation(m).startswith(answer)

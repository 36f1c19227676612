"""The benchmark's own arithmetic on made-up timings, and one real tiny run of its training-speed
part. Whether a target is met depends on the machine, so it is not asserted here."""

import json
import subprocess
import sys

import pytest

from benchmarks.common import spread, with_targets
from benchmarks.run import TARGETS
from benchmarks.speed import SPEED_VARIANTS, paired_ratio, speed_ratios
from conftest import ROOT


def made_up_run(scale: float) -> dict:
    rounds = {name: [1.0 * scale, 2.0 * scale, 4.0 * scale] for name in SPEED_VARIANTS}
    rounds["distill_cached_default_teacher"] = [1.1 * scale, 2.0 * scale, 4.8 * scale]  # 1.10, 1.00, 1.20
    epoch = {name: sorted(times)[1] for name, times in rounds.items()}
    return {"round_seconds": rounds, "epoch_seconds": {**epoch, "online_default_teacher": 30.0 * scale,
                                                       "online_large_teacher": 60.0 * scale}}


def test_ratios_are_medians_of_within_round_ratios_and_targets_use_the_worst_run():
    runs = [made_up_run(1.0), made_up_run(3.0)]
    # within-round ratios 1.10, 1.00, 1.20: their median, not the ratio of the medians (2.0 / 2.0)
    assert paired_ratio(runs[0], "distill_cached_default_teacher", "scratch") == pytest.approx(1.10)
    # a variant timed once (the online Distiller) against the other's median epoch of the run
    assert paired_ratio(runs[0], "online_default_teacher", "scratch") == pytest.approx(15.0)
    ratios = with_targets(speed_ratios(runs), TARGETS)
    assert ratios["distill_epoch_vs_scratch"] == {"min": 1.1, "median": 1.1, "max": 1.1, "runs": 2,
                                                  "target": 1.05, "met": False}
    assert ratios["scratch_control_vs_scratch"] == {"min": 1.0, "median": 1.0, "max": 1.0, "runs": 2}
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "runs": 3}


def quick_run(*args) -> dict:
    """The benchmark's JSON report of a ``--quick`` run with ``args``."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.bench
def test_quick_speed_run_reports_every_variant_consistently():
    report = quick_run("--speed-only")
    training = report["training"]
    assert set(training["epoch_seconds_median"]) == {*SPEED_VARIANTS, "online_default_teacher",
                                                     "online_large_teacher"}
    n = report["settings"]["train_samples_timed"]
    for name, seconds in training["epoch_seconds_median"].items():
        assert training["samples_per_second_median"][name] == pytest.approx(n / seconds, rel=1e-2), name
    assert set(report["ratios"]) == set(speed_ratios([made_up_run(1.0)]))
    assert report["pipeline"] is None and report["startup"] is None
    assert training["params"]["teacher_large"] > 10 * training["params"]["student"]


@pytest.mark.bench
def test_quick_sizes_run_reports_every_case_with_its_targets():
    report = quick_run("--sizes")
    assert list(report["sizes"]) == ["default", "32px"]
    for case in report["sizes"].values():
        for name, seconds in case["epoch_seconds"].items():
            assert case["images_per_second"][name] == pytest.approx(case["train_images"] / seconds, rel=1e-2), name
        assert case["stages"]["distill_stage_vs_scratch_stage"] > 0
    assert set(report["sizes"]["32px"]["stages"]["export"]) == {"keras", "tflite_float32", "tflite_int8",
                                                                "int8_accuracy_drop"}
    assert report["sizes"]["32px"]["flops"]["teacher_vs_student"] > 5
    for name in ("distill_epoch_vs_scratch", "distill_stage_vs_scratch_stage", "distill_epoch_vs_online_distiller"):
        ratio = report["ratios"][name]
        assert ratio["max"] == max(ratio["per_size"]) and ratio["met"] == (ratio["max"] <= ratio["target"])

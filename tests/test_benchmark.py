"""The benchmark is not a test of speed; this only checks that it runs and reports every ratio."""

import json
import subprocess
import sys

from conftest import ROOT


def test_benchmark_runs_on_a_tiny_setting():
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    ratios = report["ratios"]
    for name in ("distill_epoch_vs_scratch", "distill_large_teacher_epoch_vs_scratch", "plain_fit_vs_scratch_time",
                 "exp_run_alpha_vs_full_repro"):
        assert ratios[name]["min"] > 0 and ratios[name]["target"] > 0 and isinstance(ratios[name]["met"], bool)
    # Memory is measured above a TF-import baseline, so a light stage may sit at or below zero.
    assert ratios["stage_memory_vs_data_and_model"]["target"] == 2.0
    assert all(s["peak_rss_mib"] > 0 for s in report["pipeline"]["stages"].values())
    assert report["training"]["params"]["teacher_large"] >= 10 * report["training"]["params"]["student"]
    assert set(report["pipeline"]["stages"]) == {"prepare", "train_teacher", "soft_targets", "distill",
                                                 "train_scratch", "evaluate"}
    assert report["startup"]["validate_params_s"] < report["startup"]["import_tensorflow_keras_s"]

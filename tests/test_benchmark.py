"""The benchmark runs on a tiny setting and reports every ratio with its target (it is a
benchmark, not a test: whether a target is met depends on the machine and is not asserted)."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_prints_every_ratio_with_its_target():
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/run.py"), "--quick"], capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    ratios = report["ratios"]
    for name in ("distill_epoch_vs_scratch", "distill_large_teacher_epoch_vs_scratch",
                 "exp_run_alpha_vs_full_repro", "plain_fit_vs_scratch_time", "plain_fit_vs_distill_time",
                 "stage_memory_growth_vs_data_growth"):
        assert ratios[name]["target"] > 0 and isinstance(ratios[name]["met"], bool), name
        assert ratios[name]["min"] <= ratios[name]["median"] <= ratios[name]["max"], name
    for name in ("distill_epoch_vs_scratch", "online_large_teacher_epoch_vs_scratch", "xla_vs_no_xla_scratch_time",
                 "exp_run_alpha_vs_full_repro", "stage_memory_vs_plain_fit", "stage_memory_vs_data_and_model"):
        assert ratios[name]["median"] > 0, name
    # the online teacher (Keras' Distiller) runs a 50x larger network every step: slower than cached logits
    assert ratios["online_large_teacher_epoch_vs_scratch"]["median"] > ratios["distill_large_teacher_epoch_vs_scratch"]["median"]
    # `dvc exp run -S alpha=...` reran only what depends on alpha
    assert report["pipeline"]["exp_run_stages"] == [["distill", "evaluate", "export"]]
    stages = report["pipeline"]["stages"]
    assert set(stages) == {"distill", "train_scratch"}
    # the launcher makes each stage's peak its own, not the TF-loaded benchmark process's
    assert stages["distill"]["peak_rss_mib"] != report["pipeline"]["tf_baseline_peak_rss_mib"]
    assert report["startup"]["import_tensorflow_keras_s"] > report["startup"]["python_noop_s"]
    # memory growth with the data: the same stages on the digits and on them tiled twice
    scaling = report["pipeline"]["memory_scaling"]
    assert set(scaling["stages"]) == {"prepare", "train_scratch"} and scaling["scale"] == 2
    assert abs(scaling["data_mib"]["x2"] - 2 * scaling["data_mib"]["x1"]) <= 0.2
    assert ratios["stage_memory_growth_vs_data_growth"]["stages"] == 2

"""The pipeline, timed in a temporary git copy of this project: a full ``dvc repro`` against
``dvc exp run -S alpha=...``, a 3 x 3 alpha x temperature grid through DVC's queue, each stage's
wall time and peak memory, and the start-up costs."""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, make_project, prepared_data_mib, run_measured, sh, stages_run, timed


def queue_grid(repo: Path, run: int) -> dict:
    """A 3 x 3 alpha x temperature grid through DVC's queue (one worker): wall time and what ran.
    The values differ from run to run, so that no run finds its results in the run-cache."""
    alphas = ",".join(str(round(a + 0.01 * run, 2)) for a in (0.2, 0.5, 0.8))
    sh(["dvc", "exp", "run", "--queue", "-S", f"alpha={alphas}", "-S", "temperature=2,4,8"], repo)
    start = time.perf_counter()
    sh(["dvc", "queue", "start", "-j", "1"], repo)
    while True:
        status = sh(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    seconds = time.perf_counter() - start
    names = re.findall(r"^\S+\s+(\S+)\s+.*\bSuccess\b", status, flags=re.M)
    ran = [stages_run(sh(["dvc", "queue", "logs", n], repo).stdout) for n in names]
    sh(["dvc", "exp", "remove", "--all-commits", "-q"], repo)
    sh(["dvc", "queue", "remove", "--all"], repo)
    return {"seconds": round(seconds, 2), "experiments": len(names), "stages_run": sorted({s for r in ran for s in r}),
            "teacher_soft_targets_or_scratch_runs": sum(
                len(r & {"train_teacher", "soft_targets", "train_scratch", "train_plain"}) for r in ran)}


def pipeline(runs: int, overrides: dict, grid: bool, measured_stages: tuple[str, ...]) -> dict:
    out = {"full_repro_s": [], "exp_run_alpha_s": [], "exp_run_stages": [], "ratio": [], "grid": [],
           "grid_ratio": []}
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as tmp:
        repo = make_project(Path(tmp), overrides)
        # None of them is a grid's alpha (queue_grid): a collision let run 1 of a benchmark take
        # export from the run-cache that the grid of run 0 had filled.
        alphas = [0.9, 0.7, 0.6, 0.4, 0.3]
        for run in range(runs):
            # --force: a real run of every stage (no run-cache); a new alpha each run, for the same reason.
            full, _ = timed(["dvc", "repro", "--force"], repo)
            # Commit dvc.lock and the metrics, as a user does: queued experiments start from the
            # commit (without its dvc.lock the queue would retrain the teacher, whose dvclive
            # outputs are not cached and so cannot come from the run-cache).
            sh(["git", "add", "-A"], repo)
            sh(["git", "commit", "-q", "--allow-empty", "-m", f"baseline results, run {run}"], repo)
            alpha, log = timed(["dvc", "exp", "run", "-S", f"alpha={alphas[run % len(alphas)]}"], repo)
            # Expected: distill, export, evaluate. Recorded rather than asserted, so that a surprise
            # shows in the JSON instead of losing a long benchmark.
            out["exp_run_stages"].append(sorted(stages_run(log)))
            sh(["git", "checkout", "--", "."], repo)
            sh(["dvc", "checkout", "-q", "--force"], repo)
            out["full_repro_s"].append(round(full, 2))
            out["exp_run_alpha_s"].append(round(alpha, 2))
            out["ratio"].append(alpha / full)
            print(f"benchmark run {run}: full repro {full:.1f} s, exp run {alpha:.1f} s "
                  f"({out['exp_run_stages'][-1]})", file=sys.stderr, flush=True)
            if grid:
                result = queue_grid(repo, run)
                assert result["experiments"] == 9, result
                assert result["teacher_soft_targets_or_scratch_runs"] == 0, result
                out["grid"].append(result)
                out["grid_ratio"].append(result["seconds"] / (9 * alpha))
                print(f"benchmark run {run}: grid {json.dumps(result)}", file=sys.stderr, flush=True)

        # Per-stage wall time and peak memory, each stage run alone (outputs are rewritten identically).
        stages = {}
        for stage in measured_stages:
            wall, peak = run_measured([sys.executable, "-m", f"stages.{stage}"], repo)
            stages[stage] = {"wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1)}
        _, baseline = run_measured([sys.executable, "-m", "benchmarks.memory_baseline"], repo)
        plain_fit_peak = {role: run_measured([sys.executable, "-m", "benchmarks.memory_baseline", role], repo)[1]
                          for role in ("teacher", "student")}
        sizes = {"teacher": (repo / "models/teacher.keras").stat().st_size / 2**20,
                 "student": (repo / "models/student_distilled.keras").stat().st_size / 2**20}
        # A stage holds the full dataset (uncompressed float32) and its models.
        data_mib = prepared_data_mib(repo)
        model_mib = {"prepare": 0, "train_teacher": sizes["teacher"], "soft_targets": sizes["teacher"],
                     "distill": sizes["student"], "train_scratch": sizes["student"], "export": sizes["student"],
                     "evaluate": sizes["teacher"] + 2 * sizes["student"]}
        plain_fit_of = {"train_teacher": "teacher", "soft_targets": "teacher", "evaluate": "teacher"}
        for stage, info in stages.items():
            reference = plain_fit_peak[plain_fit_of.get(stage, "student")]
            info["above_tf_baseline_mib"] = round(info["peak_rss_mib"] - baseline, 1)
            info["above_plain_fit_mib"] = round(info["peak_rss_mib"] - reference, 1)
            info["data_plus_model_mib"] = round(data_mib + model_mib[stage], 1)
            info["ratio"] = round(info["above_tf_baseline_mib"] / info["data_plus_model_mib"], 2)
            # What Keras itself costs: the stage's growth over the imports, as a multiple of a
            # plain fit's growth (1.0 = the stage holds no more than model.fit does).
            info["vs_plain_fit"] = round(info["above_tf_baseline_mib"] / (reference - baseline), 2)
        out["stages"] = stages
        if out["grid"]:
            per_experiment = stages["distill"]["wall_s"] + stages["evaluate"]["wall_s"]
            out["grid_budget_ratio"] = [g["seconds"] / (9 * per_experiment + full)
                                        for g, full in zip(out["grid"], out["full_repro_s"])]
        out["tf_baseline_peak_rss_mib"] = round(baseline, 1)
        out["plain_fit_peak_rss_mib"] = {k: round(v, 1) for k, v in plain_fit_peak.items()}
        out["dataset_mib"] = round(data_mib, 1)

    return out


def startup(repeats: int = 5) -> dict:
    def median_wall(args):
        return statistics.median(run_measured(args, ROOT)[0] for _ in range(repeats))

    python = sys.executable
    return {
        "python_noop_s": round(median_wall([python, "-c", "pass"]), 3),
        "validate_params_s": round(median_wall([python, "-c", "from kdflow.schema import Schema; Schema.load()"]), 3),
        "import_tensorflow_keras_s": round(median_wall([python, "-c", "import keras, tensorflow"]), 3),
        "stage_imports_s": round(median_wall([python, "-m", "benchmarks.memory_baseline"]), 3),
    }

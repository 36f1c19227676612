"""What every benchmark shares: timing in interleaved rounds, the project copied into a temporary
git repository, and a child process's wall time and peak memory."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_FILES = ["dvc.yaml", "params.yaml", "kdflow", "stages", "inputs", ".dvc/config", ".dvcignore", ".gitignore"]


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4), "runs": len(values)}


def with_targets(ratios: dict, targets: dict) -> dict:
    """Mark each ratio that has a target: met when even its worst run (the max) is within it."""
    for name, value in ratios.items():
        if name in targets:
            value["target"] = targets[name]
            value["met"] = value["max"] <= targets[name]
    return ratios


# --------------------------------------------------------------------------- epochs, timed

class EpochTimer:
    """Wall time of every epoch (a Keras callback, created lazily so TF loads only when needed)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._start)

        return _Timer()


def steady_epoch_time(times: list[float]) -> float:
    """Median epoch time without the first epoch (tracing and warm-up)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def interleaved_rounds(variants: dict, rounds: int) -> dict[str, list[float]]:
    """Each variant (a function that trains one round and returns its epoch times) once untimed
    (tracing, warm-up), then ``rounds`` rounds of all of them in alternating order: each
    variant's steady epoch time per round."""
    for train_round in variants.values():
        train_round()
    seconds = {label: [] for label in variants}
    for r in range(rounds):
        for label in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            seconds[label].append(steady_epoch_time(variants[label]()))
    return seconds


def plain_fit_rounds(model, train, val, schedule, epochs: int):
    """A round of the same student's plain Keras ``model.fit`` (its own loop): its epoch times."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(schedule.learning_rate, amsgrad=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])

    def train_round():
        timer = EpochTimer()
        model.fit(*train, batch_size=schedule.batch_size, epochs=epochs, validation_data=val, callbacks=[timer],
                  verbose=0)
        return timer.times
    return train_round


def online_epoch_seconds(teacher, student, train, val, schedule, epochs: int) -> float:
    """Keras' ``keras.distillation.Distiller`` (the teacher run every step): its steady epoch time."""
    import keras

    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(schedule.learning_rate, amsgrad=True),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    distiller.fit(*train, batch_size=schedule.batch_size, epochs=epochs, validation_data=val, callbacks=[timer],
                  verbose=0)
    return steady_epoch_time(timer.times)


def trainer_rounds(model, schedule, train, val, seed: int, callbacks=(), views=None):
    """A round of our loop (kdflow.training.loop.Trainer, made once: every round reuses its
    compiled steps, as a stage's repeats do): its epoch times."""
    from kdflow.training.loop import Trainer

    trainer = Trainer(model, schedule, len(train[0]), "train_student")

    def train_round():
        timer = EpochTimer()
        trainer.fit(train, val, seed, [*callbacks, timer], views=views)
        return timer.times
    return train_round


# --------------------------------------------------------------------------- projects and processes

def sh(args, cwd, timeout=3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@kdflow",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@kdflow"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def timed(args, cwd) -> tuple[float, str]:
    start = time.perf_counter()
    result = sh(args, cwd)
    return time.perf_counter() - start, result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


def copy_project(repo: Path) -> None:
    """This project's pipeline files (not its outputs) into ``repo`` (also used by the tests)."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def make_project(workdir: Path, overrides: dict) -> Path:
    """The project in ``workdir``/project as a committed git repository, with ``overrides``
    (dotted keys) applied to its params."""
    import yaml

    repo = workdir / "project"
    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "benchmark baseline"], repo)
    return repo


def run_measured(args, cwd, log: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process, through benchmarks.launcher (so the
    number is the child's own, not this process's image); its stdout goes to ``log`` if given."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "benchmarks.launcher", str(log or ""), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    if result["status"] != 0:
        raise SystemExit(f"{' '.join(args)} failed with status {result['status']}")
    return result["wall"], result["maxrss_kib"] / 1024  # Linux reports KiB


EPOCH_LINE = re.compile(r"^(\d+)/\1 - \S+ - ([\d.]+)(us|ms|s)/step", re.M)


def epoch_seconds(stage_output: str) -> float | None:
    """Median epoch time of a training stage from its per-epoch lines ("55/55 - 6s - 106ms/step"),
    the first epoch (tracing) left out when there are more."""
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    times = [int(steps) * float(per_step) * unit[u] for steps, per_step, u in EPOCH_LINE.findall(stage_output)]
    return round(statistics.median(times[1:] if len(times) > 1 else times), 3) if times else None


# The stages' batch-norm line ends with the step's seconds (kdflow.models.batch_norm.settled_line).
BATCH_NORM_LINE = re.compile(r"batch-norm statistics of \d+ layers re-estimated .* \(([0-9.]+) s\)$", re.MULTILINE)


def batch_norm_seconds(stage_output: str) -> float | None:
    """The seconds a training stage spent re-estimating its models' batch-norm statistics (all
    repeats), from its log; None for a model without batch norm."""
    found = BATCH_NORM_LINE.findall(stage_output)
    return float(found[-1]) if found else None


def prepared_data_mib(repo: Path) -> float:
    """Size of the prepared data (all splits) as the float32 images and int64 labels a stage
    reads, in MiB (on disk 8-bit images take a quarter of it)."""
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    pixels = 1
    for n in meta["input_shape"]:
        pixels *= n
    return sum(meta["sizes"].values()) * (4 * pixels + 8) / 2**20

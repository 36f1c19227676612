"""Every file and folder the pipeline reads or writes, relative to the project root.

dvc.yaml names the same paths; tests/test_consistency.py checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")  # read by the recipe search: which params change only the distilled students
# The default of every `path` param: a tracked, nearly empty folder. dvc.yaml declares
# ${data.path} and ${teacher.path} as dependencies, and a dependency must exist even when unused.
INPUTS_DIR = "inputs"
PREPARED_DIR = Path("data/prepared")
PREPARED_META = PREPARED_DIR / "meta.json"
SOFT_TARGETS_DIR = Path("data/soft_targets")
MODELS_DIR = Path("models")
EXPORT_DIR = Path("export")
REPORTS_DIR = Path("reports")
METRICS_DIR = Path("metrics")
LIVE_DIR = Path("dvclive")  # dvclive curves (and evaluate's confusion plots), one folder per stage
# Not DVC outputs (git- and dvc-ignored): they may differ from run to run.
RUNS_DIR = Path(".kdflow/runs")  # per-epoch training checkpoints (kdflow.training.resume)
SCRATCH_DIR = Path(".kdflow/scratch")  # prepare's copy of an image folder, removed when it ends
TIMINGS_DIR = Path("timings")    # wall-clock latency measured by export and evaluate
TENSORBOARD_DIR = Path("tensorboard")  # runtime.tensorboard's event files, one folder per stage
LOGS_DIR = Path("logs")          # tracebacks of unexpected errors
# Written by the recipe search (kdflow.search), outside the pipeline: commit it with the recipe it chose.
SELECTION_DIR = Path("selection")

# role -> the stage that writes it (named in "run `dvc repro <stage>`" messages)
MODEL_ROLES = {"teacher": "train_teacher", "student_distilled": "distill", "student_scratch": "train_scratch",
               "student_plain": "train_plain", "student_pseudo": "train_pseudo"}


def metrics_file(stage: str) -> Path:
    return METRICS_DIR / f"{stage}.json"


def live_dir(stage: str) -> Path:
    return LIVE_DIR / stage


def tensorboard_dir(stage: str) -> Path:
    return TENSORBOARD_DIR / stage


def timings_file(stage: str) -> Path:
    return TIMINGS_DIR / f"{stage}.json"


def model_file(role: str) -> Path:
    """The model to use or ship: the teacher, or a student's repeat 0."""
    return MODELS_DIR / f"{role}.keras"


def repeats_dir(role: str) -> Path:
    return MODELS_DIR / f"{role}_repeats"


def repeat_file(role: str, repeat: int) -> Path:
    return repeats_dir(role) / f"repeat_{repeat}.keras"

"""The wrapper every stage script (and tool) runs under: one-line errors and clean interrupts;
and the seeding every stage that uses TensorFlow starts with."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

from kdflow.core import KdflowError
from kdflow.core.io import ACTIVE_TEMPS
from kdflow.core.paths import LOGS_DIR

DEBUG_ENV = "KDFLOW_DEBUG"        # 1: show tracebacks on the terminal
ERROR_LOG = LOGS_DIR / "kdflow-error.log"


def deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TF ops deterministic (same machine => same bits)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _write_log(text: str) -> Path | None:
    try:
        ERROR_LOG.parent.mkdir(parents=True, exist_ok=True)
        ERROR_LOG.write_text(text)
        return ERROR_LOG
    except OSError:
        return None


def run_stage(main: Callable[[], None], name: str | None = None) -> None:
    """Run a stage's (or a tool's) ``main`` and turn failures into one line on stderr and a
    non-zero exit; ``name`` (default: the script's) starts the line: ``kdflow <name>: error: ...``.

    An unexpected error's full traceback goes to ``logs/kdflow-error.log``; set KDFLOW_DEBUG=1
    to see any error's traceback on the terminal instead.
    """
    stage = name or (Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "stage")

    def interrupted(signum=None, frame=None):
        # Exit at once, without unwinding: a KeyboardInterrupt unwinding through a running
        # TensorFlow fit, or the interpreter shutdown after it, can abort in glibc (SIGABRT
        # instead of status 130). This run's temp outputs are removed first.
        for tmp in list(ACTIVE_TEMPS):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        print(f"kdflow {stage}: interrupted, no outputs written", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + (signum or signal.SIGINT))  # 130 for Ctrl-C, 143 for SIGTERM

    # SIGTERM too: what `kill`, `dvc queue kill` and CI time-outs send.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)
    try:
        main()
    except KeyboardInterrupt:
        interrupted()
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything here
        if os.environ.get(DEBUG_ENV):
            raise
        if isinstance(exc, KdflowError):  # the user's input: the one line says it all
            print(f"kdflow {stage}: error: {exc}", file=sys.stderr)
        else:  # a bug or an environment problem: keep the traceback for the report
            log = _write_log(traceback.format_exc())
            where = f" (traceback in {log})" if log else ""
            print(
                f"kdflow {stage}: unexpected {type(exc).__name__}: {exc}{where}; "
                f"set {DEBUG_ENV}=1 to show it",
                file=sys.stderr,
            )
        sys.exit(1)

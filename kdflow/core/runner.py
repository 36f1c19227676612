"""The wrapper every stage script (and tool) runs under: one-line errors and clean interrupts;
and the seeding every stage that uses TensorFlow starts with."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
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


# A write that failed for lack of room: the disk is full, a file-size limit (ulimit -f) or a quota.
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit was hit",
            errno.EDQUOT: "the disk quota is exceeded"}
_SQLITE_NO_ROOM = ("disk I/O error", "database or disk is full")  # SQLite's words for the same


def out_of_space(exc: BaseException) -> str | None:
    """The one line for an exception (or one it came from) that is a write failing for lack of
    space, naming the path or component that failed and the output being written; else None."""
    top, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            what, where = f"{_NO_ROOM[exc.errno]} ({exc.strerror})", exc.filename
            break
        if isinstance(exc, sqlite3.OperationalError) and any(words in str(exc) for words in _SQLITE_NO_ROOM):
            what, where = f"the disk is full or a file-size limit was hit (SQLite: {exc})", _database_of(exc)
            break
        exc = exc.__cause__ or exc.__context__
    else:
        return None
    output = getattr(exc, "kdflow_output", None) or getattr(top, "kdflow_output", None)
    where = where or output or "a file"
    during = f" while writing {output}" if output is not None and str(output) != str(where) else ""
    return (f"{what} writing {where}{during}; free space or raise the limit, then rerun: this stage wrote no "
            "outputs, and nothing you had is lost")


def _database_of(exc: BaseException) -> str:
    """Which SQLite database a failing write was to: its folder, from the innermost frame that
    names one (diskcache's), and DVC's when DVC's code opened it (as dvclive makes it do)."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    files = [frame.f_code.co_filename for frame in frames]
    folder = next((str(value) for frame in reversed(frames) for name in ("directory", "database", "filename")
                   if isinstance(value := frame.f_locals.get(name), (str, os.PathLike))), None)
    where = f" in {folder}" if folder else ""
    if any(f"{os.sep}dvc_data{os.sep}" in f or f"{os.sep}dvc{os.sep}" in f for f in files):
        opener = " (opened by dvclive)" if any(f"{os.sep}dvclive{os.sep}" in f for f in files) else ""
        return f"DVC's state database{where}{opener}"
    return f"a SQLite database{where}"


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
        full = out_of_space(exc)
        if full is not None:  # the machine's, not a bug: no traceback
            print(f"kdflow {stage}: error: {full}", file=sys.stderr)
        elif isinstance(exc, KdflowError):  # the user's input: the one line says it all
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

"""DVC's queue and experiments as the search reads them: each run's state and process, the queue's
workers, and the commands that act on them (`dvc queue start`, `dvc exp remove`, ...)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from kdflow.core import KdflowError
from kdflow.search.grid import flat


@dataclass(frozen=True)
class Run:
    """An experiment as `dvc exp show` reports its run: ``state`` is DVC's executor state
    (queued, running, success, failed; None for one run outside the queue), ``pid`` the process
    that runs it."""

    name: str
    params: dict
    state: str | None
    pid: int | None


def runs(show: list[dict]) -> list[Run]:
    found = []
    for base in show:
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                executor = exp.get("executor") or {}
                params = ((rev.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data") or {}
                found.append(Run(rev.get("name") or exp.get("name") or rev["rev"][:7], flat(params),
                                 executor.get("state"), (executor.get("local") or {}).get("pid")))
    return found


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dvc(*args: str) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise KdflowError(f"`dvc {' '.join(args)}` failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result.stdout


def start_queue(jobs: int) -> None:
    """`dvc queue start`: its workers run on in the background and keep the streams they were
    given, so they get none (a captured pipe would block until the whole queue is done)."""
    with tempfile.TemporaryFile("w+") as errors:
        code = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=errors).returncode
        if code != 0:
            errors.seek(0)
            raise KdflowError(f"`dvc queue start -j {jobs}` failed: {errors.read().strip()[-500:]}")


@dataclass(frozen=True)
class QueueState:
    counts: dict  # state (Queued, Running, Success, Failed) -> experiments in it
    active: int   # live workers running an experiment
    idle: int     # live workers waiting for one

    @property
    def waiting(self) -> int:
        return self.counts.get("Queued", 0) + self.counts.get("Running", 0)

    @property
    def moving(self) -> bool:
        """A worker is running an experiment, or one is there to start a queued one."""
        return bool(self.active or (self.idle and self.counts.get("Queued")))


def queue_state() -> QueueState:
    """What `dvc queue status` lists: the experiments in each state and the live workers."""
    counts: dict[str, int] = {}
    active = idle = 0
    for line in dvc("queue", "status").splitlines():
        if found := re.match(r"Worker status: (\d+) active, (\d+) idle", line.strip()):
            active, idle = int(found[1]), int(found[2])
        elif (state := line.split()[-1] if line.split() else "") in {"Queued", "Running", "Success", "Failed"}:
            counts[state] = counts.get(state, 0) + 1
    return QueueState(counts, active, idle)


def dead(run: Run, active_workers: int) -> bool:
    """A run DVC lists as running that nothing can finish: its process is gone and no worker is
    busy (a busy worker may be collecting it; an idle one is not running it)."""
    return run.state == "running" and not alive(run.pid) and active_workers == 0


def logs_tail(name: str, lines: int = 5) -> str:
    """The last ``lines`` lines of `dvc queue logs name`; for one line, the stage's own error
    line if it printed one (`kdflow <stage>: error: ...`)."""
    found = subprocess.run(["dvc", "queue", "logs", name], capture_output=True, text=True)
    kept = [line.strip() for line in (found.stdout + found.stderr).splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith("kdflow ") and ": error: " in line]
    return errors[-1] if lines == 1 and errors else " | ".join(kept[-lines:])

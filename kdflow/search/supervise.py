"""The search supervising DVC's queue: what DVC holds for each wanted recipe, cleared of what a
dead queue left behind, queued where missing, and waited for while the queue makes progress.

Each recipe is one `dvc exp run --queue -S ...`, run by `dvc queue start`: DVC's own engine, so
the teacher, its cached outputs and the scratch students come from DVC's cache and are trained
once, and every recipe is an experiment to `dvc exp show`. A recipe already finished, queued or
running is not run again: after an interruption the same command picks up where it stopped, also
after the queue itself died (docs/selection.md#after-a-crash).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from kdflow.core import KdflowError
from kdflow.core.paths import PARAMS_FILE
from kdflow.search.grid import Distilled, default_grid, flat, label, matches, recipes, share, unflat, yaml_value
from kdflow.search.queue import (QueueState, alive, dead, dvc, logs_tail, queue_state, runs,
                                 start_queue)
from kdflow.search.ranking import Experiment, exp_show, experiments
from kdflow.search.remote import Team

POLL_SECONDS = 2  # `dvc queue status` itself takes about a second
# Waiting stops when the queue has had no live worker and no live experiment process this long.
GIVE_UP_SECONDS = 60.0
MAX_MISSES = 5  # polls in a row where `dvc queue status` or `dvc exp show` failed: then its error stands


class Search:
    """One search over the wanted recipes: what DVC holds for each, cleared of what a dead
    queue left behind, queued where missing, and waited for while the queue makes progress."""

    def __init__(self, wanted: list[dict], workspace: dict, distilled: Distilled, jobs: int, give_up_after: float,
                 team: Team | None = None):
        self.wanted, self.workspace, self.distilled = wanted, workspace, distilled
        self.jobs, self.give_up_after = jobs, give_up_after
        self.team = team  # with a team, each finished experiment is pushed to its remote at once
        self.retried: set[int] = set()  # recipes queued again after a failed run

    def of(self, recipe: dict, items: list) -> list:
        return [item for item in items if matches(item.params, recipe, self.workspace, self.distilled)]

    def clear(self, show: list[dict]) -> bool:
        """Remove the runs no worker will ever finish (left running by a dead queue) and, once
        per search, the failed runs of recipes with no finished experiment; True if any was removed."""
        finished, active = experiments(show), queue_state().active
        removed = []
        for i, recipe in enumerate(self.wanted):
            if self.of(recipe, finished):
                continue
            for run in self.of(recipe, runs(show)):
                if dead(run, active):
                    print(f"search: {label(recipe)}: experiment {run.name} was left Running by a queue that died "
                          f"(process {run.pid} is gone, no worker running it): removed, queued again")
                elif run.state == "failed" and i not in self.retried:
                    print(f"search: {label(recipe)}: experiment {run.name} failed ({logs_tail(run.name, 1)}): "
                          "removed, queued again once")
                    self.retried.add(i)
                else:
                    continue
                if run.state == "running":
                    subprocess.run(["dvc", "queue", "kill", run.name], capture_output=True)  # marks it failed
                removed.append(run.name)
        if removed:
            dvc("exp", "remove", *removed)
        return bool(removed)

    def queue_missing(self, show: list[dict], quiet: bool = False) -> int:
        """Queue each recipe with no finished, queued or running experiment; drop the queued
        copies of a recipe DVC already has (finished, or queued more than once). Returns the
        number of runs waiting afterwards."""
        finished, all_runs = experiments(show), runs(show)
        extra, to_queue, waiting = [], [], 0
        for recipe in self.wanted:
            live = [r for r in self.of(recipe, all_runs) if r.state in ("queued", "running")]
            keep = [] if self.of(recipe, finished) else sorted(live, key=lambda r: r.state != "running")[:1]
            extra += [r.name for r in live if r not in keep and r.state == "queued"]
            waiting += len(keep)
            if not keep and not self.of(recipe, finished):
                to_queue.append(recipe)
        if extra:
            print(f"search: removed {len(extra)} queued duplicate(s) of recipes DVC already holds: {', '.join(extra)}")
            dvc("exp", "remove", *extra)
        if not quiet:
            print(f"search: {len(self.wanted)} recipes, {len(self.wanted) - len(to_queue)} already finished or "
                  f"queued, {len(to_queue)} to run")
        for recipe in to_queue:
            # `-S +key=...` adds a key that params.yaml leaves at its default (DVC refuses `-S key=` for it)
            # with a team, `--pull`: a stage another host ran is restored from the DVC remote's run cache
            dvc("exp", "run", "--queue", *(["--pull"] if self.team else []), *[arg for k, v in recipe.items()
                                           for arg in ("-S", f"{'' if k in self.workspace else '+'}{k}={yaml_value(v)}")])
        return waiting + len(to_queue)

    def wait(self) -> None:
        """Until nothing is queued or running. A recipe whose run fails is queued again at once
        (once per search), while the others run. Stops when nothing has made progress (no busy
        worker, no live experiment process) for ``give_up_after`` seconds."""
        start_queue(self.jobs)
        last, quiet_since, misses = None, None, 0
        while True:
            try:  # a queue that just died can leave DVC's state half-written for a moment
                state = queue_state()
                if not (state.waiting or self.retry(state)):
                    break
                moving = state.moving or any(r.state == "running" and alive(r.pid) for r in runs(exp_show()))
                misses = 0
            except KdflowError:
                misses += 1
                if misses >= MAX_MISSES:
                    raise
                time.sleep(POLL_SECONDS)
                continue
            if state.counts != last:
                print(f"search: queue {', '.join(f'{n} {s.lower()}' for s, n in sorted(state.counts.items()))}",
                      flush=True)
                if state.counts.get("Failed", 0) > (last or {}).get("Failed", 0) and self.retry(state):
                    last = None
                    continue
                if state.counts.get("Success", 0) > (last or {}).get("Success", 0):
                    self.push_finished(exp_show())
                last = state.counts
            if moving:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.give_up_after:
                running, queued = state.counts.get("Running", 0), state.counts.get("Queued", 0)
                raise KdflowError(
                    f"the queue made no progress for {self.give_up_after:g} s ({running} running, {queued} queued, "
                    "no busy worker, no experiment process): run the same "
                    "command again, which clears the dead entries and queues their recipes again (by hand: "
                    "`dvc queue status`, `dvc queue kill <name>`, `dvc exp remove <name>`)")
            time.sleep(POLL_SECONDS)

    def push_finished(self, show: list[dict], final: bool = False) -> None:
        """Push the finished experiments of the wanted recipes that the team's remote lacks.
        While the queue runs a failed push (DVC busy collecting another experiment) waits for
        the next one; the last, with ``final``, must succeed."""
        if self.team is None:
            return
        finished = [e.name for recipe in self.wanted for e in self.of(recipe, experiments(show)) if not e.baseline]
        try:
            pushed = self.team.push(finished)
        except KdflowError as error:
            if final:
                raise
            print(f"search: pushing to {self.team.remote} failed, tried again when the next experiment ends: {error}")
            return
        if pushed:
            print(f"search: pushed {', '.join(pushed)} to {self.team.remote} (with outputs and run cache)", flush=True)

    def retry(self, state: QueueState) -> bool:
        """Queue again, once, the recipes whose run failed; True if any was."""
        if not state.counts.get("Failed"):
            return False
        show = exp_show()
        if not self.clear(show):
            return False
        self.queue_missing(exp_show(), quiet=True)
        if not (now := queue_state()).active and not now.idle:
            start_queue(self.jobs)
        return True

    def results(self, show: list[dict]) -> list[tuple[dict, Experiment | None, str | None]]:
        """Each recipe with its finished experiment (the first when DVC holds several, which
        is said) or None, and the name of its failed run when it has no finished one."""
        found, all_runs = [], runs(show)
        finished = experiments(show)
        for recipe in self.wanted:
            matches = self.of(recipe, finished)
            if len(matches) > 1:
                print(f"search: {label(recipe)}: {len(matches)} finished experiments "
                      f"({', '.join(e.name for e in matches)}): the ranking uses {matches[0].name}")
            failure = next((r.name for r in self.of(recipe, all_runs) if r.state == "failed"), None)
            found.append((recipe, matches[0] if matches else None, None if matches else failure))
        return found


def wanted_recipes(grid: dict[str, list] | None, distilled: Distilled) -> tuple[list[dict], dict]:
    """The recipes of ``grid`` (None: the default grid), each checked against the params schema,
    and the workspace's params (flattened)."""
    from kdflow.schema import Schema

    Schema.load()  # the workspace's params.yaml is valid, every section of it
    workspace = flat(yaml.safe_load(Path(PARAMS_FILE).read_text()))
    known = set(workspace) | set(flat(Schema().model_dump()))  # a key params.yaml leaves at its default too
    wanted = recipes(grid or default_grid(workspace), workspace, known, distilled)
    for recipe in wanted:  # every recipe is valid before anything runs
        Schema.checked(unflat({**workspace, **recipe}), source=f"-S {label(recipe)}")
    return wanted, workspace


def run(grid: dict[str, list] | None, jobs: int, distilled: Distilled, give_up_after: float = GIVE_UP_SECONDS,
        team: Team | None = None, part: tuple[int, int] | None = None
        ) -> list[tuple[dict, Experiment | None, str | None]]:
    """Queue the recipes of ``grid`` (None: the default grid) not yet finished or queued, run
    the queue, and return each recipe with its finished experiment (None if it failed) and,
    for a failed one, its failed experiment's name. With a ``team``: the baseline is shared
    first, the remote's finished experiments count as finished here, and each experiment is
    pushed as it finishes; with ``part`` (i, n): only share i of n of the recipes."""
    from kdflow.evaluate.comparison import teacher_warning

    wanted, workspace = wanted_recipes(grid, distilled)
    if part is not None:
        everything, wanted = wanted, share(wanted, *part, distilled)
        print(f"search: part {part[0]}/{part[1]}: {len(wanted)} of the grid's {len(everything)} recipes"
              + "".join(f"\n  {label(r)}" for r in wanted))
    if team is not None:
        team.check()
        print(f"search: {team.share_baseline()}", flush=True)
        pulled = team.pull_finished()
        print(f"search: {team.remote} holds {len(team.on_remote)} experiment(s) of this commit"
              + (f"; pulled {len(pulled)} new here (refs and metrics, no outputs): {', '.join(pulled)}" if pulled
                 else ""))
    show = exp_show()
    baseline = next((e for e in experiments(show) if e.baseline), None)
    if baseline and baseline.teacher_check and (warning := teacher_warning(baseline.teacher_check)):
        print(f"search: WARNING: {warning}")
    search = Search(wanted, workspace, distilled, jobs, give_up_after, team)
    if search.clear(show):
        show = exp_show()
    search.push_finished(show, final=True)  # finished here before, by a search that could not push them
    if search.queue_missing(show):
        search.wait()
    show = exp_show()
    search.push_finished(show, final=True)
    return search.results(show)

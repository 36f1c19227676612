"""The recipe search: a grid of distillation recipes run as DVC experiments, ranked on the
validation split (kdflow.selection), the best applied to the workspace.

    kdflow search                                  # the default grid below (20 recipes)
    kdflow search -S alpha=0.1,0.5 -S temperature=1,2,4 -S distill.method=kd,dkd -j 2

(`python -m kdflow.search` is the same command.)

Each recipe is one `dvc exp run --queue -S ...`, run by `dvc queue start`: DVC's own engine,
so the teacher, its cached outputs and the scratch students come from DVC's cache and are
trained once, and every recipe is an experiment to `dvc exp show`. Alpha = 1 (no distillation)
is always added, so the chosen recipe is never worse than the scratch students on validation.
A recipe already finished, queued or running in `dvc exp show` is not run again: after an
interruption the same command picks up where it stopped, also after the queue itself died
(what a dead queue leaves is cleared: docs/selection.md#after-a-crash). The ranked table goes
to selection/ranking.md (and .json, and a plot, ranking.png); the best recipe is applied with
`dvc exp apply`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdflow.errors import KdflowError
from kdflow.extensions import distilled_only, load_all, schema, validate_all
from kdflow.paths import PARAMS_FILE, SELECTION_DIR
from kdflow.selection import Experiment, _flat, exp_show, experiments, ranked, table
from kdflow.teacher_check import warning as teacher_warning

# The grid when no -S is given: the KD knobs that mattered most (docs/results.md), with and without
# the views, and with the views unmixed, mixup and cutmix (function matching): on small images the
# default shifts can cost the scratch students more than the teacher gives back (8x8 digits), and
# a mix can help either student. Views are chosen on the scratch students first. Without views
# there is nothing to mix: 4 view settings x 4 recipes + their 4 alpha = 1 runs.
DEFAULT_GRID = {"views.count": [0, "<workspace>"], "views.mix": ["none", "mixup", "cutmix"],
                "alpha": [0.1, 0.5], "temperature": [2.0, 4.0]}


def default_grid(workspace: dict) -> dict[str, list]:
    """DEFAULT_GRID with the workspace's views.count as the second value (no duplicate when it is 0)."""
    counts = sorted({0, workspace["views.count"]})
    return {**DEFAULT_GRID, "views.count": counts}
NO_DISTILLATION = {"alpha": 1.0, "distill.method": "kd"}
POLL_SECONDS = 2  # `dvc queue status` itself takes about a second
# Waiting stops when the queue has had no live worker and no live experiment process this long.
GIVE_UP_SECONDS = 60.0
MAX_MISSES = 5  # polls in a row where `dvc queue status` or `dvc exp show` failed: then its error stands


def parse_grid(assignments: list[str]) -> dict[str, list]:
    """``-S key=v1,v2`` as DVC reads it: values are YAML scalars."""
    grid = {}
    for text in assignments:
        key, sep, values = text.partition("=")
        if not sep or not key or not values:
            raise KdflowError(f"-S {text!r}: expected key=value[,value...], e.g. -S alpha=0.1,0.5")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def baseline_part(recipe: dict) -> dict:
    """What a recipe sets for the scratch students too (views, schedule, student)."""
    return {k: v for k, v in recipe.items() if not distilled_only(k)}


def known_keys(workspace: dict) -> set[str]:
    """Every param a recipe may set: those in params.yaml, and every key of the schema (an
    extension's key that params.yaml leaves at its default)."""
    return set(workspace) | set(_flat(schema()().model_dump()))


def recipes(grid: dict[str, list], workspace: dict) -> list[dict]:
    """Every combination of the grid, as overrides of the workspace's params, after one recipe
    without distillation (alpha = 1, kd) for each setting of the grid's other axes. Alpha = 1
    with kd uses neither the temperature nor a method's knobs: one such recipe per setting."""
    unknown = sorted(set(grid) - known_keys(workspace))
    if unknown:
        raise KdflowError(f"-S {unknown[0]}: no such param in {PARAMS_FILE} (docs/params.md)")
    combinations = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    found: list[dict] = []
    for recipe in [{**baseline_part(r), **NO_DISTILLATION} for r in combinations] + combinations:
        full = {**workspace, **recipe}
        if full.get("views.count") == 0:  # no views: how they would be drawn or mixed changes nothing
            recipe = {k: v for k, v in recipe.items() if not k.startswith("views.") or k == "views.count"}
        if full["alpha"] == 1.0 and full["distill.method"] == "kd":
            recipe = {**baseline_part(recipe), **NO_DISTILLATION}
        if recipe not in found:
            found.append(recipe)
    return found


def choose(done: list[tuple[dict, Experiment]]) -> tuple[list[Experiment], list[dict] | None]:
    """The ranking to choose from, and the baseline settings chosen first when the grid varies
    what the scratch students train on (None when it does not). A recipe must not win by
    weakening its own baseline: first the setting whose scratch students are best on validation,
    with every setting whose scratch students are not clearly worse than them (``tied``: the
    paired 95% CI of the difference, over the same seeds, reaches zero); then the recipes within
    those settings are ranked by their paired validation KD gain. Without the tie a choice could
    hinge on one validation image (docs/results.md#function-matching)."""
    settings: list[dict] = []
    for recipe, _ in done:
        if baseline_part(recipe) not in settings:
            settings.append(baseline_part(recipe))
    if len(settings) == 1:
        return ranked([e for _, e in done]), None
    # every experiment of a setting trains the same scratch students: any one of them says
    scratch = {i: next(e for r, e in done if baseline_part(r) == setting).val["scratch"]
               for i, setting in enumerate(settings)}
    top = max(scratch, key=lambda i: sum(scratch[i]) / len(scratch[i]))  # ties: the first setting
    chosen = [setting for i, setting in enumerate(settings) if i == top or tied(scratch[i], scratch[top])]
    within = ranked([e for r, e in done if baseline_part(r) in chosen])
    return within + [e for e in ranked([e for _, e in done]) if e not in within], chosen


def tied(scratch: list[float], best: list[float]) -> bool:
    """Whether scratch students are not clearly worse than the best ones on validation: their
    paired difference's 95% CI reaches zero (never with one repeat, or unpaired repeats)."""
    from kdflow.evaluation import paired_gain

    if len(scratch) != len(best) or len(scratch) < 2:
        return scratch == best
    high = paired_gain(scratch, best)["ci95_high"]
    return high is not None and high >= 0


def _unflat(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _same(params: dict, recipe: dict, workspace: dict) -> bool:
    """``params`` (flattened, from `dvc exp show`, which leaves nulls out) are the workspace's
    with ``recipe`` applied; without distillation the KD knobs (temperature, ...) do not matter."""
    full = {**workspace, **recipe}
    ignored = distilled_only if (full["alpha"] == 1.0 and full["distill.method"] == "kd") else (lambda key: False)
    return all(params.get(key) == value for key, value in full.items()
               if not ignored(key) or key in NO_DISTILLATION)


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
                found.append(Run(rev.get("name") or exp.get("name") or rev["rev"][:7], _flat(params),
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


class Search:
    """One search over the wanted recipes: what DVC holds for each, cleared of what a dead
    queue left behind, queued where missing, and waited for while the queue makes progress."""

    def __init__(self, wanted: list[dict], workspace: dict, jobs: int, give_up_after: float):
        self.wanted, self.workspace, self.jobs, self.give_up_after = wanted, workspace, jobs, give_up_after
        self.retried: set[int] = set()  # recipes queued again after a failed run

    def of(self, recipe: dict, items: list) -> list:
        return [item for item in items if _same(item.params, recipe, self.workspace)]

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
                    print(f"search: {_label(recipe)}: experiment {run.name} was left Running by a queue that died "
                          f"(process {run.pid} is gone, no worker running it): removed, queued again")
                elif run.state == "failed" and i not in self.retried:
                    print(f"search: {_label(recipe)}: experiment {run.name} failed ({logs_tail(run.name, 1)}): "
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
            dvc("exp", "run", "--queue", *[arg for k, v in recipe.items()
                                           for arg in ("-S", f"{'' if k in self.workspace else '+'}{k}={_yaml(v)}")])
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
                print(f"search: {_label(recipe)}: {len(matches)} finished experiments "
                      f"({', '.join(e.name for e in matches)}): the ranking uses {matches[0].name}")
            failure = next((r.name for r in self.of(recipe, all_runs) if r.state == "failed"), None)
            found.append((recipe, matches[0] if matches else None, None if matches else failure))
        return found


def run(grid: dict[str, list] | None, jobs: int, give_up_after: float = GIVE_UP_SECONDS
        ) -> list[tuple[dict, Experiment | None, str | None]]:
    """Queue the recipes of ``grid`` (None: the default grid) not yet finished or queued, run
    the queue, and return each recipe with its finished experiment (None if it failed) and,
    for a failed one, its failed experiment's name."""
    load_all()  # the workspace's params.yaml is valid, every section of it
    workspace = _flat(yaml.safe_load(Path(PARAMS_FILE).read_text()))
    wanted = recipes(grid or default_grid(workspace), workspace)
    for recipe in wanted:  # every recipe is valid before anything runs
        validate_all(_unflat({**workspace, **recipe}), source=f"-S {_label(recipe)}")
    show = exp_show()
    baseline = next((e for e in experiments(show) if e.baseline), None)
    if baseline and baseline.teacher_check and (warning := teacher_warning(baseline.teacher_check)):
        print(f"search: WARNING: {warning}")
    search = Search(wanted, workspace, jobs, give_up_after)
    if search.clear(show):
        show = exp_show()
    if search.queue_missing(show):
        search.wait()
    return search.results(exp_show())


def _yaml(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _label(recipe: dict) -> str:
    return ", ".join(f"{k}={_yaml(v)}" for k, v in recipe.items())


def _settings_label(settings: list[dict]) -> str:
    """The baseline settings chosen first, in words."""
    names = [f"`{_label(s) or 'the workspace'}`" for s in settings]
    if len(names) == 1:
        return f"{names[0]}, whose scratch students are the best on validation"
    return f"{', '.join(names[:-1])} and {names[-1]}, whose scratch students are tied on validation (within the noise)"


def write_outputs(results: list[tuple[dict, Experiment]], order: list[Experiment], settings: list[dict] | None = None,
                  directory: Path = SELECTION_DIR) -> None:
    """ranking.md (the table), ranking.json (the numbers) and ranking.png (the plot), in ``order``;
    ``settings``: the baseline settings chosen first on the scratch students (kdflow.search.choose)."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    recipe_of = {id(e): r for r, e in results}
    rows = []
    for e in order:
        gain = e.val_gain("distilled", "scratch")
        rows.append({"experiment": e.name, "recipe": recipe_of[id(e)], "val_kd_gain": gain,
                     "val_distilled": round(e.val_mean("distilled"), 6), "val_scratch": round(e.val_mean("scratch"), 6),
                     "test_kd_gain_not_used": e.test_kd_gain})
    (directory / "ranking.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    first = "" if settings is None else (
        f"First the settings {_settings_label(settings)}; their recipes come first, the other settings' after "
        "them.\n\n")
    (directory / "ranking.md").write_text(
        "# Recipe search: ranked by the mean paired validation KD gain\n\n" + first
        + table(order, ordered=True) + "\n\nThe first row is the choice (`dvc exp apply`).\n")
    _plot(rows, directory / "ranking.png", settings)


def _plot(rows: list[dict], path: Path, settings: list[dict] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * len(rows)))
    y = list(range(len(rows)))[::-1]
    for yi, row in zip(y, rows):
        gain = row["val_kd_gain"]
        low, high = gain["ci95_low"], gain["ci95_high"]
        xerr = None if low is None else [[(gain["mean"] - low) * 100], [(high - gain["mean"]) * 100]]
        ax.errorbar(gain["mean"] * 100, yi, xerr=xerr, fmt="o", color="tab:blue", capsize=4,
                    label="validation (ranks)" if yi == y[0] else None)
        if row["test_kd_gain_not_used"]:
            ax.plot(row["test_kd_gain_not_used"]["mean"] * 100, yi, "x", color="grey",
                    label="test (not used)" if yi == y[0] else None)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [_label(r["recipe"]) for r in rows], fontsize="small")
    title = "Recipe search on validation, best first"
    if settings is not None:
        chosen = " or ".join(_label(s) or "the workspace" for s in settings)
        title += f"\n{chosen} chosen first, on the scratch students"
    ax.set(xlabel="paired KD gain, points of accuracy (distilled − scratch), 95% CI", title=title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--set-param", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"a grid axis, as in `dvc exp run -S` (default: {DEFAULT_GRID})")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    parser.add_argument("--no-apply", action="store_true", help="rank only; leave the workspace as it is")
    parser.add_argument("--give-up-after", type=float, default=GIVE_UP_SECONDS, metavar="SECONDS",
                        help="stop waiting when the queue has had no live worker and no running experiment "
                             f"process this long (default {GIVE_UP_SECONDS:g})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    command(parser.parse_args(argv))


def command(args: argparse.Namespace) -> None:
    """Run the search the arguments describe, rank, write the outputs, apply the best."""
    if args.jobs < 1:
        raise KdflowError(f"--jobs {args.jobs}: must be at least 1")
    results = run(parse_grid(args.grid) if args.grid else None, args.jobs, args.give_up_after)
    for recipe, _, failure in results:
        if failure is not None:
            print(f"search: FAILED: {_label(recipe)} (experiment {failure}), left out of the ranking; "
                  f"`dvc queue logs {failure}` ends: {logs_tail(failure)}")
    done = [(r, e) for r, e, _ in results if e is not None]
    if not done:
        raise KdflowError("every recipe failed: see `dvc queue status` and `dvc queue logs <name>`")
    order, settings = choose(done)
    write_outputs(done, order, settings)
    best = order[0]
    recipe = next(r for r, e in done if e is best)
    gain = best.val_gain("distilled", "scratch")
    print(table(order, ordered=True))
    if settings is not None:
        print(f"search: first chosen by the scratch students' validation accuracy: {_settings_label(settings)}; "
              f"then the recipes within {'it' if len(settings) == 1 else 'them'} by their paired validation KD gain")
    print(f"search: best on validation: {_label(recipe)} (experiment {best.name}), val KD gain "
          f"{gain['mean'] * 100:+.2f} points; table and plot in {SELECTION_DIR}/")
    if args.no_apply:
        return
    if best.baseline:
        print(f"search: the best is the committed recipe ({best.name}): the workspace is left as it is")
        return
    dvc("exp", "apply", best.name)
    print(f"search: applied {best.name} to the workspace; `git add -A && git commit` keeps it")


if __name__ == "__main__":
    from kdflow.runner import run_stage

    run_stage(main)

"""The recipe search: a grid of distillation recipes run as DVC experiments, ranked on the
validation split (kdflow.selection), the best applied to the workspace.

    kdflow search                                  # the default grid below (14 recipes)
    kdflow search -S alpha=0.1,0.5 -S temperature=1,2,4 -S distill.method=kd,dkd -j 2

(`python -m kdflow.search` is the same command.)

Each recipe is one `dvc exp run --queue -S ...`, run by `dvc queue start`: DVC's own engine,
so the teacher, its cached outputs and the scratch students come from DVC's cache and are
trained once, and every recipe is an experiment to `dvc exp show`. Alpha = 1 (no distillation)
is always added, so the chosen recipe is never worse than the scratch students on validation.
A recipe already finished (or queued) in `dvc exp show` is not run again: after an interruption
the same command picks up where it stopped. The ranked table goes to selection/ranking.md (and
.json, and a plot, ranking.png); the best recipe is applied with `dvc exp apply`.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from kdflow.errors import KdflowError
from kdflow.extensions import distilled_only, load_all, schema, validate_all
from kdflow.paths import PARAMS_FILE, SELECTION_DIR
from kdflow.selection import Experiment, _flat, exp_show, experiments, ranked, table
from kdflow.teacher_check import warning as teacher_warning

# The grid when no -S is given: the KD knobs that matter most (docs/methods.md), with and without
# the views: on small images the default shifts can cost the scratch students more than the
# teacher gives back (8x8 digits, docs/results.md). Views are chosen on the scratch students first.
DEFAULT_GRID = {"views.count": [0, "<workspace>"], "alpha": [0.1, 0.5, 0.9], "temperature": [2.0, 4.0]}


def default_grid(workspace: dict) -> dict[str, list]:
    """DEFAULT_GRID with the workspace's views.count as the second value (no duplicate when it is 0)."""
    counts = sorted({0, workspace["views.count"]})
    return {**DEFAULT_GRID, "views.count": counts}
NO_DISTILLATION = {"alpha": 1.0, "distill.method": "kd"}
POLL_SECONDS = 2  # `dvc queue status` itself takes about a second


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
        if full["alpha"] == 1.0 and full["distill.method"] == "kd":
            recipe = {**baseline_part(recipe), **NO_DISTILLATION}
        if recipe not in found:
            found.append(recipe)
    return found


def choose(done: list[tuple[dict, Experiment]]) -> tuple[list[Experiment], dict | None]:
    """The ranking to choose from, and the baseline setting chosen first when the grid varies
    what the scratch students train on (None when it does not). A recipe must not win by
    weakening its own baseline: the setting whose scratch students are best on validation is
    chosen first, then the recipes within it are ranked by their paired validation KD gain."""
    settings: list[dict] = []
    for recipe, _ in done:
        if baseline_part(recipe) not in settings:
            settings.append(baseline_part(recipe))
    if len(settings) == 1:
        return ranked([e for _, e in done]), None
    scratch = {i: max(e.val_mean("scratch") for r, e in done if baseline_part(r) == setting)
               for i, setting in enumerate(settings)}
    best = settings[max(scratch, key=scratch.get)]  # ties: the first setting
    within = ranked([e for r, e in done if baseline_part(r) == best])
    return within + [e for e in ranked([e for _, e in done]) if e not in within], best


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


def pending(show: list[dict]) -> list[dict]:
    """The params of experiments queued or running (no commit time yet, no error)."""
    return [_flat(rev["data"]["params"]["params.yaml"]["data"])
            for base in show for exp in base.get("experiments") or [] for rev in exp.get("revs") or []
            if not rev.get("error") and not (rev.get("data") or {}).get("timestamp")]


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


def queue_counts() -> dict[str, int]:
    """How many experiments `dvc queue status` lists in each state."""
    counts: dict[str, int] = {}
    for line in dvc("queue", "status").splitlines():
        state = line.split()[-1] if line.split() else ""
        if state in {"Queued", "Running", "Success", "Failed"}:
            counts[state] = counts.get(state, 0) + 1
    return counts


def run(grid: dict[str, list] | None, jobs: int) -> list[tuple[dict, Experiment | None]]:
    """Queue the recipes of ``grid`` (None: the default grid) not yet finished or queued, run
    the queue, and return each recipe with its finished experiment (None if it failed)."""
    load_all()  # the workspace's params.yaml is valid, every section of it
    workspace = _flat(yaml.safe_load(Path(PARAMS_FILE).read_text()))
    wanted = recipes(grid or default_grid(workspace), workspace)
    for recipe in wanted:  # every recipe is valid before anything runs
        validate_all(_unflat({**workspace, **recipe}), source=f"-S {_label(recipe)}")
    show = exp_show()
    finished, waiting = experiments(show), pending(show)
    baseline = next((e for e in finished if e.baseline), None)
    if baseline and baseline.teacher_check and (warning := teacher_warning(baseline.teacher_check)):
        print(f"search: WARNING: {warning}")
    to_queue = [r for r in wanted if not any(_same(e.params, r, workspace) for e in finished)
                and not any(_same(p, r, workspace) for p in waiting)]
    print(f"search: {len(wanted)} recipes, {len(wanted) - len(to_queue)} already finished or queued, "
          f"{len(to_queue)} to run")
    for recipe in to_queue:
        # `-S +key=...` adds a key that params.yaml leaves at its default (DVC refuses `-S key=` for it)
        dvc("exp", "run", "--queue", *[arg for k, v in recipe.items()
                                       for arg in ("-S", f"{'' if k in workspace else '+'}{k}={_yaml(v)}")])
    if to_queue or waiting:
        start_queue(jobs)
        last = None
        while (counts := queue_counts()).get("Queued", 0) + counts.get("Running", 0):
            if counts != last:
                print(f"search: queue {', '.join(f'{n} {s.lower()}' for s, n in sorted(counts.items()))}", flush=True)
                last = counts
            time.sleep(POLL_SECONDS)
    finished = experiments(exp_show())
    return [(r, next((e for e in finished if _same(e.params, r, workspace)), None)) for r in wanted]


def _yaml(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _label(recipe: dict) -> str:
    return ", ".join(f"{k}={_yaml(v)}" for k, v in recipe.items())


def write_outputs(results: list[tuple[dict, Experiment]], order: list[Experiment], setting: dict | None = None,
                  directory: Path = SELECTION_DIR) -> None:
    """ranking.md (the table), ranking.json (the numbers) and ranking.png (the plot), in ``order``;
    ``setting``: the baseline setting chosen first on the scratch students (kdflow.search.choose)."""
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
    first = "" if setting is None else (
        f"First the setting `{_label(setting)}`, whose scratch students are the best on validation; its recipes come "
        "first, the other settings' after them.\n\n")
    (directory / "ranking.md").write_text(
        "# Recipe search: ranked by the mean paired validation KD gain\n\n" + first
        + table(order, ordered=True) + "\n\nThe first row is the choice (`dvc exp apply`).\n")
    _plot(rows, directory / "ranking.png", setting)


def _plot(rows: list[dict], path: Path, setting: dict | None) -> None:
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
    if setting is not None:
        title += f"\n{_label(setting)} chosen first, on the scratch students"
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    command(parser.parse_args(argv))


def command(args: argparse.Namespace) -> None:
    """Run the search the arguments describe, rank, write the outputs, apply the best."""
    if args.jobs < 1:
        raise KdflowError(f"--jobs {args.jobs}: must be at least 1")
    results = run(parse_grid(args.grid) if args.grid else None, args.jobs)
    failed = [r for r, e in results if e is None]
    for recipe in failed:
        print(f"search: FAILED: {_label(recipe)} (see `dvc queue logs`); left out of the ranking")
    done = [(r, e) for r, e in results if e is not None]
    if not done:
        raise KdflowError("every recipe failed: see `dvc queue status` and `dvc queue logs <name>`")
    order, setting = choose(done)
    write_outputs(done, order, setting)
    best = order[0]
    recipe = next(r for r, e in done if e is best)
    gain = best.val_gain("distilled", "scratch")
    print(table(order, ordered=True))
    if setting is not None:
        print(f"search: first chosen by the scratch students' validation accuracy: {_label(setting) or 'the workspace'}"
              f" ({best.val_mean('scratch'):.4f}); then the recipes within it by their paired validation KD gain")
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

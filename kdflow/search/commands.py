"""The search's two commands, as `kdflow` runs them (kdflow/cli.py):

    kdflow search                                  # the default grid (kdflow.search.grid: 20 recipes)
    kdflow search -S alpha=0.1,0.5 -S temperature=1,2,4 -S distill.method=kd,dkd -j 2
    kdflow rank [--by scratch]                     # the finished experiments, ranked on validation

The search runs each recipe as a DVC experiment, always with alpha = 1 (no distillation) among
them, ranks them on the validation split, writes selection/ranking.md (and .json, .png) and
applies the best with `dvc exp apply`.
"""

from __future__ import annotations

import argparse

from kdflow.core import KdflowError
from kdflow.core.paths import SELECTION_DIR
from kdflow.search.grid import DEFAULT_GRID, Distilled, label, parse_grid
from kdflow.search.outputs import settings_label, write_outputs
from kdflow.search.queue import dvc, logs_tail
from kdflow.search.ranking import choose, exp_show, experiments, table
from kdflow.search.supervise import GIVE_UP_SECONDS, run


def search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--set-param", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"a grid axis, as in `dvc exp run -S` (default: {DEFAULT_GRID})")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    parser.add_argument("--no-apply", action="store_true", help="rank only; leave the workspace as it is")
    parser.add_argument("--give-up-after", type=float, default=GIVE_UP_SECONDS, metavar="SECONDS",
                        help="stop waiting when the queue has had no live worker and no running experiment "
                             f"process this long (default {GIVE_UP_SECONDS:g})")


def search(args: argparse.Namespace) -> None:
    """Run the search the arguments describe, rank, write the outputs, apply the best."""
    if args.jobs < 1:
        raise KdflowError(f"--jobs {args.jobs}: must be at least 1")
    distilled = Distilled()
    results = run(parse_grid(args.grid) if args.grid else None, args.jobs, distilled, args.give_up_after)
    for recipe, _, failure in results:
        if failure is not None:
            print(f"search: FAILED: {label(recipe)} (experiment {failure}), left out of the ranking; "
                  f"`dvc queue logs {failure}` ends: {logs_tail(failure)}")
    done = [(r, e) for r, e, _ in results if e is not None]
    if not done:
        raise KdflowError("every recipe failed: see `dvc queue status` and `dvc queue logs <name>`")
    order, settings = choose(done, distilled)
    write_outputs(done, order, settings)
    best = order[0]
    recipe = next(r for r, e in done if e is best)
    gain = best.val_gain("distilled", "scratch")
    print(table(order, ordered=True))
    if settings is not None:
        print(f"search: first chosen by the scratch students' validation accuracy: {settings_label(settings)}; "
              f"then the recipes within {'it' if len(settings) == 1 else 'them'} by their paired validation KD gain")
    print(f"search: best on validation: {label(recipe)} (experiment {best.name}), val KD gain "
          f"{gain['mean'] * 100:+.2f} points; table and plot in {SELECTION_DIR}/")
    if args.no_apply:
        return
    if best.baseline:
        print(f"search: the best is the committed recipe ({best.name}): the workspace is left as it is")
        return
    dvc("exp", "apply", best.name)
    print(f"search: applied {best.name} to the workspace; `git add -A && git commit` keeps it")


def rank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", choices=("kd", "scratch"), default="kd",
                        help="rank by the paired KD gain (default) or by the scratch students' accuracy")


def rank(args: argparse.Namespace) -> None:
    print(table(experiments(exp_show()), args.by))

"""The search's two commands, as `kdflow` runs them (kdflow/cli.py):

    kdflow search                                  # the default grid (kdflow.search.grid: 20 recipes)
    kdflow search -S alpha=0.1,0.5 -S temperature=1,2,4 -S distill.method=kd,dkd -j 2
    kdflow rank [--by scratch]                     # the finished experiments, ranked on validation

    kdflow search -S alpha=0.1,0.5 --part 1/2 --push origin   # on host 1 (host 2: --part 2/2)
    kdflow rank -S alpha=0.1,0.5 --from origin --apply        # on any host, when the parts are in

The search runs each recipe as a DVC experiment, always with alpha = 1 (no distillation) among
them, ranks them on the validation split, writes selection/ranking.md (and .json, .png) and
applies the best with `dvc exp apply`. On several hosts (kdflow.search.remote) each runs a part
of the grid and pushes what it finishes; `rank --from` ranks them all as one search would.
"""

from __future__ import annotations

import argparse

from kdflow.core import KdflowError
from kdflow.core.paths import SELECTION_DIR
from kdflow.search.grid import DEFAULT_GRID, Distilled, label, parse_grid
from kdflow.search.outputs import settings_label, write_outputs
from kdflow.search.queue import dvc, logs_tail
from kdflow.search.ranking import Experiment, choose, exp_show, experiments, table
from kdflow.search.remote import Team
from kdflow.search.supervise import GIVE_UP_SECONDS, Search, run, wanted_recipes


def search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--set-param", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"a grid axis, as in `dvc exp run -S` (default: {DEFAULT_GRID})")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    parser.add_argument("--no-apply", action="store_true", help="rank only; leave the workspace as it is")
    parser.add_argument("--give-up-after", type=float, default=GIVE_UP_SECONDS, metavar="SECONDS",
                        help="stop waiting when the queue has had no live worker and no running experiment "
                             f"process this long (default {GIVE_UP_SECONDS:g})")
    parser.add_argument("--push", metavar="GIT_REMOTE",
                        help="share the search with other hosts through this git remote and the project's DVC "
                             "remote: skip what they finished, push each experiment as it finishes")
    parser.add_argument("--part", type=part_of, metavar="I/N",
                        help="run only part I of N of the grid (needs --push; rank with `kdflow rank --from`)")


def part_of(text: str) -> tuple[int, int]:
    """``--part i/n`` as (i, n), 1 <= i <= n."""
    part, sep, parts = text.partition("/")
    if not (sep and part.isdigit() and parts.isdigit() and 1 <= int(part) <= int(parts)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 1 <= I <= N, e.g. 1/2")
    return int(part), int(parts)


def search(args: argparse.Namespace) -> None:
    """Run the search the arguments describe, rank, write the outputs, apply the best."""
    if args.jobs < 1:
        raise KdflowError(f"--jobs {args.jobs}: must be at least 1")
    if args.part and not args.push:
        raise KdflowError("--part needs --push GIT_REMOTE: the other hosts see a part only through the remote")
    distilled = Distilled()
    team = Team(args.push) if args.push else None
    results = run(parse_grid(args.grid) if args.grid else None, args.jobs, distilled, args.give_up_after, team,
                  args.part)
    if args.part:
        finished = sum(e is not None for _, e, _ in results)
        grid = "".join(f" -S {g}" for g in args.grid)
        print(f"search: part {args.part[0]}/{args.part[1]}: {finished} of its {len(results)} recipes finished and "
              f"on {args.push}; when every part is in, on any host: kdflow rank{grid} --from {args.push} --apply")
        failed(results)
        return
    choose_and_apply(results, distilled, not args.no_apply, team)


def failed(results: list[tuple[dict, Experiment | None, str | None]]) -> None:
    """Say which recipes failed, with the end of their logs."""
    for recipe, _, failure in results:
        if failure is not None:
            print(f"search: FAILED: {label(recipe)} (experiment {failure}), left out of the ranking; "
                  f"`dvc queue logs {failure}` ends: {logs_tail(failure)}")


def choose_and_apply(results: list[tuple[dict, Experiment | None, str | None]], distilled: Distilled, apply: bool,
                     team: Team | None = None) -> None:
    """Rank the finished recipes on validation, write selection/, and apply the best (its
    outputs pulled from the team's remote first, if it has one)."""
    failed(results)
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
    if gain["mean"] < 0:  # only with images without labels: alpha = 1 is then the pseudo-labelled students
        print("search: WARNING: no recipe beat the scratch students on validation, pseudo-labels (alpha = 1) "
              "included: the images without labels did not help here; the scratch students "
              "(models/student_scratch.keras) are the better students")
    if not apply:
        return
    if best.baseline:
        print(f"search: the best is the committed recipe ({best.name}): the workspace is left as it is")
        return
    if team is not None:
        team.pull_outputs(best.name)
    dvc("exp", "apply", best.name)
    print(f"search: applied {best.name} to the workspace; `git add -A && git commit` keeps it")


def rank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", choices=("kd", "scratch"), default="kd",
                        help="rank by the paired KD gain (default) or by the scratch students' accuracy")
    parser.add_argument("--from", dest="remote", metavar="GIT_REMOTE",
                        help="pull every experiment of this commit from the remote (refs and metrics) and rank "
                             "the grid's recipes as `kdflow search` does, writing selection/; trains nothing")
    parser.add_argument("-S", "--set-param", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="with --from: the grid the hosts searched, as given to `kdflow search`")
    parser.add_argument("--apply", action="store_true", help="with --from: apply the best (its outputs pulled)")


def rank(args: argparse.Namespace) -> None:
    if not args.remote:
        if args.grid or args.apply:
            raise KdflowError("-S and --apply go with --from GIT_REMOTE (a local search ranks itself)")
        print(table(experiments(exp_show()), args.by))
        return
    if args.by != "kd":
        raise KdflowError("--by scratch ranks local experiments only; --from ranks as the search chooses")
    team = Team(args.remote)
    team.check(committed=False)  # selection/ changes with every ranking
    distilled = Distilled()
    wanted, workspace = wanted_recipes(parse_grid(args.grid) if args.grid else None, distilled)
    pulled = team.pull_finished()
    print(f"rank: {args.remote} holds {len(team.on_remote)} experiment(s) of this commit; pulled {len(pulled)} "
          "new here (refs and metrics, no outputs)")
    results = Search(wanted, workspace, distilled, jobs=1, give_up_after=0).results(exp_show())
    missing = [label(r) for r, e, _ in results if e is None]
    rerun = f"`kdflow search{''.join(f' -S {g}' for g in args.grid)} --push {args.remote}` on any host runs them"
    if len(missing) == len(results):
        raise KdflowError(f"no recipe of the grid has a finished experiment on {args.remote} or here yet: {rerun}")
    if missing:
        print(f"rank: {len(missing)} of the grid's {len(results)} recipes have no finished experiment on "
              f"{args.remote} or here, left out: {'; '.join(missing)} ({rerun})")
    choose_and_apply([(r, e, None) for r, e, _ in results], distilled, args.apply, team)

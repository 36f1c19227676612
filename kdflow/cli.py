"""kdflow's own tools, as one command (the pipeline itself runs with `dvc`):

    kdflow check                  # validate every section of params.yaml, as the stages will
    kdflow search [-S k=v1,v2]    # choose a recipe on validation: a queued grid, ranked, best applied
    kdflow rank [--by scratch]    # the finished experiments ranked by paired validation gain

`python -m kdflow.cli ...` is the same command.
"""

from __future__ import annotations

import argparse

from kdflow.core.runner import run_stage
from kdflow.search import commands


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", nargs="?", default="params.yaml", help="the params file (default: params.yaml)")


def _check(args: argparse.Namespace) -> None:
    """Each stage validates the sections it reads; this validates every section at once, so that a
    typo anywhere shows before `dvc repro`."""
    from kdflow.schema import Schema

    Schema.load(args.params)
    print(f"kdflow check: {args.params} is valid: every section, with every entry's keys")


COMMANDS = {
    "check": ("validate every section of params.yaml", _check_arguments, _check),
    "search": ("choose a recipe on validation: a queued grid of DVC experiments, ranked, the best applied",
               commands.search_arguments, commands.search),
    "rank": ("rank the finished DVC experiments by their paired validation KD gain",
             commands.rank_arguments, commands.rank),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kdflow", description=__doc__.splitlines()[0])
    tools = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, _) in COMMANDS.items():
        add_arguments(tools.add_parser(name, help=summary, description=summary))
    args = parser.parse_args(argv)
    run = COMMANDS[args.command][2]
    run_stage(lambda: run(args), name=args.command)


if __name__ == "__main__":
    main()

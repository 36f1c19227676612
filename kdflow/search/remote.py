"""A search shared by several hosts, through what a team already has: a git remote (the
baseline commit and the experiment refs: `dvc exp push`, `dvc exp pull`, `dvc exp list`) and the
project's default DVC remote (the outputs and the run cache). No server of kdflow's own.

Two gaps in DVC 3.67's run cache across hosts, measured here, and what this module does:
- `dvc exp push` leaves the run cache behind unless asked: every push passes `--run-cache`.
- `dvc push --run-cache` pushes the records of the runs but not the files only they refer to
  (a stage's `cache: false` metrics, copied into the cache for the run cache alone), so another
  host finds the run and still trains: ``push_run_cache_files`` pushes those with DVC's own
  data-cloud call. The receiving side pulls them as it restores (`dvc repro --pull`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from kdflow.core import KdflowError
from kdflow.core.paths import DVC_YAML
from kdflow.search.queue import dvc


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise KdflowError(f"`git {' '.join(args)}` failed: {said[0] if said else f'exit {result.returncode}'}")
    return result.stdout


def _shown(*command: str) -> str:
    """Run ``command`` with its output shown as it comes (indented: training the baseline can take
    long) and return that output; one line on failure."""
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(f"  {line}", end="", flush=True)
            lines.append(line)
    if process.returncode != 0:
        said = [line.strip() for line in lines if line.strip()]
        raise KdflowError(f"`{' '.join(command)}` failed: {said[-1] if said else f'exit {process.returncode}'}")
    return "".join(lines)


def pipeline_outputs(dvc_yaml: str | Path = DVC_YAML) -> list[str]:
    """dvc.lock and every output dvc.yaml declares (outs, metrics, plots): what `dvc repro` may change."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    return ["dvc.lock"] + [str(next(iter(out))) if isinstance(out, dict) else str(out)
                           for stage in stages.values() for kind in ("outs", "metrics", "plots")
                           for out in stage.get(kind) or []]


def push_run_cache_files() -> None:
    """Push the files the run cache refers to that `dvc push --run-cache` leaves behind (see above)."""
    from dvc.repo import Repo

    with Repo() as repo:
        runs = Path(repo.stage_cache.cache_dir)
        # the run cache's layout: runs/<key[:2]>/<key>/<value>, one file per run
        entries = [(run.parent.name, run.name) for run in runs.glob("*/*/*") if run.is_file()]
        for odb, files in repo.stage_cache.get_used_objs(entries).items():
            failed = repo.cloud.push(files, odb=odb).failed
            if failed:
                raise KdflowError(f"{len(failed)} file(s) of the run cache could not be pushed to the DVC remote")


class Team:
    """The git remote ``remote`` (a name of `git remote -v`, or a URL) the hosts share, with
    the project's default DVC remote."""

    def __init__(self, remote: str):
        self.remote = remote
        self.on_remote: set[str] = set()  # experiment names the remote holds, as far as this host knows

    def check(self, committed: bool = True) -> None:
        """The remote answers, the project has a default DVC remote, and this host's commit is
        a branch head on the git remote: every host must search from the same commit, or their
        experiments are of different baselines and none sees the others'. ``committed``: nor
        may tracked files other than the pipeline's outputs differ from it (a queued experiment
        would carry the difference)."""
        try:
            heads = git("ls-remote", "--heads", self.remote)
        except KdflowError as error:
            raise KdflowError(f"{self.remote}: not a git remote here (`git remote -v`) nor a reachable "
                              f"repository: {error}") from None
        if subprocess.run(["dvc", "remote", "default"], capture_output=True).returncode != 0:
            raise KdflowError("no default DVC remote: the hosts share outputs and the run cache through one; "
                              "`dvc remote add -d <name> <url>` and commit .dvc/config (docs/remote-storage.md)")
        if committed:
            outputs = pipeline_outputs()
            changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                       if not any(line[3:] == out or line[3:].startswith(f"{out}/") for out in outputs)]
            if changed:
                files = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
                raise KdflowError(f"uncommitted changes ({files}): every host must search from the same commit; "
                                  f"commit and `git push {self.remote}` them, or `git stash` them")
        head = git("rev-parse", "HEAD").strip()
        if head not in {line.split()[0] for line in heads.splitlines() if line.strip()}:
            raise KdflowError(f"this host's commit {head[:7]} is not a branch head on {self.remote}: every host "
                              f"must search from the same commit; `git push {self.remote} HEAD` it (or check out "
                              "the one the other hosts search from)")

    def share_baseline(self) -> str:
        """The baseline here, trained at most once for the team: `dvc repro --pull` restores
        each stage from the DVC remote (the commit's dvc.lock or the run cache of the host that
        reproduced it) and runs only what no host has run; then this host's outputs and run
        cache go to the DVC remote. Returns a line saying what `dvc repro` did."""
        subprocess.run(["dvc", "fetch", "--run-cache"], capture_output=True)  # the runs' records; may lack files
        output = _shown("dvc", "repro", "--pull")
        restored = re.findall(r"Stage '([\w-]+)' is cached", output)
        pulled = re.findall(r"Pulling data for stage: '([\w-]+)'", output)
        ran = re.findall(r"Running stage '([\w-]+)'", output)
        dvc("push", "--run-cache")
        push_run_cache_files()
        said = [f"{len(restored)} stage(s) restored from the run cache" + (f" ({', '.join(restored)})" if restored
                                                                          else "")]
        if pulled:
            said.append(f"{len(pulled)} pulled as the commit's dvc.lock names them ({', '.join(pulled)})")
        if ran:
            said.append(f"{len(ran)} run here ({', '.join(ran)})")
        return f"the baseline: {', '.join(said)}, the rest up to date; its outputs and run cache are on the DVC remote"

    def pull_finished(self) -> list[str]:
        """The refs of the remote's experiments of this commit that this host lacks (their params
        and metrics, which are in git; no outputs): the names pulled."""
        listed = set(dvc("exp", "list", self.remote, "--name-only").split())
        self.on_remote |= listed
        new = sorted(listed - set(dvc("exp", "list", "--name-only").split()))
        if new:
            dvc("exp", "pull", "--no-cache", self.remote, *new)
        return new

    def push(self, names: list[str]) -> list[str]:
        """Push the finished experiments ``names`` not yet on the remote, with their outputs and
        the run cache; the names pushed."""
        new = [name for name in names if name not in self.on_remote]
        if new:
            dvc("exp", "push", "--run-cache", self.remote, *new)
            push_run_cache_files()
            self.on_remote |= set(new)
        return new

    def pull_outputs(self, name: str) -> None:
        """The outputs of experiment ``name`` from the DVC remote (for `dvc exp apply`)."""
        dvc("exp", "pull", self.remote, name)

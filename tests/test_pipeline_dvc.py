"""End to end with the real `dvc` CLI in temporary git repositories (tiny epochs). The session's
one `dvc repro` is the `pipeline_repo` fixture (conftest); tests that change it use a copy."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ALL_STAGES, copy_repo, sh, sh_together, stages_run, stages_skipped

pytestmark = pytest.mark.e2e

# What depends on alpha / temperature: the distilled student and what consumes it.
ALPHA_STAGES = {"distill", "export", "evaluate"}
ROLES = ("teacher", "student_distilled", "student_scratch", "student_plain")
UPSTREAM = {"prepare", "train_teacher", "soft_targets", "train_scratch", "train_plain", "train_pseudo"}  # never rerun by alpha


def tracked_bytes(repo):
    """Everything `dvc repro` writes that git tracks: the lock, metrics, curves, the report."""
    files = [repo / "dvc.lock", *sorted((repo / "metrics").glob("*.json")), *sorted((repo / "dvclive").rglob("*")),
             *sorted((repo / "reports").rglob("*"))]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def reruns(pipeline_repo, tmp_path_factory):
    """Two copies of the baseline, side by side: `dvc repro --force` in one (with its tracked
    files before), `dvc exp run -S alpha=0.2` in the other. Returns {"forced": (repo, before,
    output), "alpha": (repo, output)}."""
    forced = copy_repo(pipeline_repo, tmp_path_factory.mktemp("forced"))
    alpha = copy_repo(pipeline_repo, tmp_path_factory.mktemp("alpha"))
    assert yaml.safe_load((alpha / "params.yaml").read_text())["alpha"] != 0.2
    before = tracked_bytes(forced)
    forced_run, alpha_run = sh_together((["dvc", "repro", "--force"], forced, None),
                                        (["dvc", "exp", "run", "-S", "alpha=0.2"], alpha, None))
    return {"forced": (forced, before, forced_run.stdout), "alpha": (alpha, alpha_run.stdout + alpha_run.stderr)}


@pytest.mark.xdist_group("reruns")
def test_forced_rerun_is_identical(reruns):
    repo, baseline, output = reruns["forced"]
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluate["kd_gain"]["pairs"] == 2
    for name, (better, baseline_role) in {"kd_gain": ("student_distilled", "student_scratch"),
                                          "augment_gain": ("student_scratch", "student_plain"),
                                          "combined_gain": ("student_distilled", "student_plain")}.items():
        assert evaluate[name]["mean"] == pytest.approx(
            evaluate[better]["accuracy_mean"] - evaluate[baseline_role]["accuracy_mean"], abs=1e-5), name
    assert sorted(p.name for p in (repo / "models/student_distilled_repeats").iterdir()) == \
        ["repeat_0.keras", "repeat_1.keras"]

    # Reproducibility: rerunning every stage rewrote dvc.lock, metrics, curves and report byte for
    # byte (no wall-clock number is in any DVC output).
    assert len([name for name in baseline if name.endswith(".tsv")]) >= 3 * 6
    assert stages_run(output) == ALL_STAGES
    assert tracked_bytes(repo) == baseline
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    assert (repo / "timings/evaluate.json").is_file() and (repo / "timings/export.json").is_file()


@pytest.mark.xdist_group("reruns")
def test_an_alpha_experiment_reruns_only_what_depends_on_it(reruns, pipeline_repo):
    repo, output = reruns["alpha"]
    assert stages_run(output) == ALPHA_STAGES
    assert stages_skipped(output) == UPSTREAM

    committed_alpha = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["alpha"]
    params_diff = json.loads(sh(["dvc", "params", "diff", "--json"], repo).stdout)
    assert set(params_diff["params.yaml"]) == {"alpha"}
    assert (params_diff["params.yaml"]["alpha"]["old"], params_diff["params.yaml"]["alpha"]["new"]) == (committed_alpha, 0.2)
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {(path, key) for path, keys in diff.items() for key in keys}
    assert ("metrics/evaluate.json", "student_distilled.loss_mean") in changed
    assert ("metrics/distill.json", "repeat_0.loss") in changed
    assert not any(key.startswith(("teacher.", "student_scratch.", "student_plain.", "augment_gain.")) for _, key in changed)
    assert not {"metrics/train_teacher.json", "metrics/train_scratch.json", "metrics/train_plain.json"} & set(diff)

    experiments = [rev for baseline in json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
                   for exp in (baseline.get("experiments") or []) for rev in exp["revs"]]
    assert [rev["data"]["params"]["params.yaml"]["data"]["alpha"] for rev in experiments] == [0.2]
    assert "ece_mean" in experiments[0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["student_distilled"]


# A code change reruns only the stages whose outputs it can change (docs/extending.md has the table).
EDITS = {
    "kdflow/distill/methods.py": {"distill", "evaluate"},  # a KD method: never the teacher, its cache, the scratch students
    "kdflow/evaluate/report.py": {"evaluate"},             # the report: evaluate alone
    "kdflow/data/sources.py": {"prepare"},                 # a dataset source: prepare alone
    # the view kinds (the teacher's own crops, train_teacher.augment.crop_scale, are the crop kind's)
    "kdflow/views/kinds.py": {"train_teacher", "soft_targets", "distill", "train_scratch", "train_pseudo", "evaluate"},
    "kdflow/search/supervise.py": set(),                   # the tools: nothing
    "kdflow/schema.py": set(),
    "kdflow/__init__.py": set(),                           # the version
}


def test_a_code_change_leaves_up_to_date_every_stage_it_cannot_affect(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)
    for path, stale in EDITS.items():
        original = (repo / path).read_text()
        (repo / path).write_text(original + "\n# an edit\n")
        status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
        assert set(status) == stale, path
        (repo / path).write_text(original)
    assert json.loads(sh(["dvc", "status", "--json"], repo).stdout) == {}


def test_turning_tensorboard_on_reruns_nothing(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["tensorboard"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert json.loads(sh(["dvc", "status", "--json"], repo).stdout) == {}


def test_a_changed_weights_file_reruns_the_stages_it_feeds(pipeline_repo, tmp_path):
    """teacher.weights_file and student.weights_file are DVC deps (dvc commit records them as a run
    would: the tiny project's archs take no weights, and no stage needs to run for DVC to tell)."""
    repo = copy_repo(pipeline_repo, tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "weights").mkdir()
    for model in ("teacher", "student"):
        (repo / f"weights/{model}_no_top.h5").write_bytes(b"first")
        params[model].update(weights="file", weights_file=f"weights/{model}_no_top.h5")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "commit", "-f", "-q"], repo)
    assert json.loads(sh(["dvc", "status", "--json"], repo).stdout) == {}
    for model, stale in (("teacher", {"train_teacher"}), ("student", {"distill", "train_scratch", "train_plain"})):
        (repo / f"weights/{model}_no_top.h5").write_bytes(b"second")
        status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
        assert set(status) == stale, model
        assert all({"changed deps": {f"weights/{model}_no_top.h5": "modified"}} in status[stage] for stage in stale)
        sh(["dvc", "commit", "-f", "-q"], repo)


def test_plots_report_and_evaluation_metrics(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)  # `dvc plots show` writes DVC's own state there
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    for role in ROLES:
        assert len(evaluate[role]["per_class_accuracy"]) == 10
    assert evaluate["compression"]["param_ratio"] == pytest.approx(
        evaluate["teacher"]["params"] / evaluate["student_distilled"]["params"], rel=1e-3)

    summary = (repo / "reports/summary.md").read_text()
    for row in ("| teacher |", "| distilled student (views) |", "| scratch student (views) |",
                "| plain scratch student (no augmentation) |", "**Which to use on this data**",
                "| KD gain (distilled − scratch, both on the views) |", "| Augmentation alone", "alpha=", "views.count=8"):
        assert row in summary
    for image in ("reliability", *(f"confusion_{role}" for role in ROLES)):
        png = repo / f"reports/figures/{image}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{image}.png" in summary
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["tflite_int8"]["size_bytes"] < export["tflite_float32"]["size_bytes"]
    assert "**Deployment**" in summary and "TFLite int8" in summary
    assert sorted(p.name for p in (repo / "export").iterdir()) == ["saved_model", "student.keras",
                                                                   "student_float32.tflite", "student_int8.tflite"]
    assert export["keras"]["accuracy"] == export["keras"]["uncalibrated_accuracy"]  # the temperature keeps it
    for role in ROLES:
        assert evaluate[role]["temperature"] > 0 and "ece_calibrated_mean" in evaluate[role]
    assert set(evaluate["teacher_check"]) == {"teacher_val_accuracy", "scratch_val_accuracy", "scratch_val_std",
                                              "teacher_clearly_better"}
    assert "Distillation **" in summary and "after temperature scaling" in summary
    assert set(json.loads((repo / "timings/evaluate.json").read_text())) == {"unit", *ROLES}
    # no images without labels: no pseudo-labelled students, and the report does not speak of them
    assert json.loads((repo / "metrics/train_pseudo.json").read_text()) == {"repeats": 0, "unlabeled_images": 0}
    assert [p.name for p in (repo / "models/student_pseudo_repeats").iterdir()] == ["none.txt"]
    assert "student_pseudo" not in evaluate and "soft_gain" not in evaluate and "pseudo" not in summary

    shown = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert {"val_accuracy", "learning_rate", "distill_loss_terms"} <= set(shown)
    assert sum("confusion" in plot_id for plot_id in shown) == 4
    # One page, three curves: DVC shortens the file names to what differs between them.
    sources = {d["filename"].split("/")[0] for d in shown["val_accuracy"][0]["content"]["data"]["values"]}
    assert sources == {"train_teacher", "distill", "train_scratch", "train_plain"}
    terms = {d["filename::field"] for d in shown["distill_loss_terms"][0]["content"]["data"]["values"]}
    assert {"train/hard_ce.tsv::hard_ce", "train/soft_loss.tsv::soft_loss", "eval/soft_loss.tsv::soft_loss"} <= terms
    sh(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    html = (tmp_path / "plots/index.html").read_text()
    assert "Confusion matrix, distilled student" in html and "Validation accuracy per epoch" in html


def without_nulls(tree):
    if isinstance(tree, dict):
        return {k: without_nulls(v) for k, v in tree.items() if v is not None}
    return tree


def queue_status(repo) -> dict[str, str]:
    """Experiment name -> status, from `dvc queue status`."""
    rows = {}
    for line in sh(["dvc", "queue", "status"], repo).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in {"Queued", "Running", "Success", "Failed"}:
            rows[parts[1]] = parts[-1]
    return rows


def stages_cached(output: str) -> set[str]:
    """The stages DVC restored from its run cache."""
    return set(re.findall(r"Stage '([a-z_]+)' is cached", output))


def student_val(rev: dict) -> dict[str, list[float]]:
    """Per-repeat validation accuracies of the distilled and scratch students of an experiment."""
    metrics = rev["data"]["metrics"]
    return {role: [r["val_accuracy"] for k, r in sorted(metrics[f"metrics/{stage}.json"]["data"].items())
                   if k.startswith("repeat_")] for role, stage in (("distilled", "distill"), ("scratch", "train_scratch"))}


def kill_the_queue(repo, spare: int) -> list[str]:
    """SIGKILL the queue's processes working in ``repo`` (DVC's queue workers, their `dvc exp
    exec-run` and the stages they run), as the OOM killer or a reboot would; not ``spare`` (the
    search) nor the search's own `dvc` calls."""
    import os
    import signal

    killed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            inside = os.readlink(f"/proc/{pid}/cwd").startswith(str(repo))
            command = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
        queue = ("queue-worker", "exec-run", "queue start", "stages.")  # not the search's own `dvc queue status`
        if inside and int(pid) not in (spare, os.getpid()) and any(part in command for part in queue):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(command)
    return killed


def test_recipe_search_survives_a_dead_queue_ranks_by_validation_and_applies_the_best(pipeline_repo, tmp_path):
    """The search, its queue killed mid-run: it stops instead of waiting forever; the same
    command clears what the dead queue left, runs each recipe once (a failing one is retried
    once, then reported), ranks by validation and applies the best."""
    import subprocess
    import time

    from scipy import stats

    from conftest import _env

    repo = copy_repo(pipeline_repo, tmp_path)
    # The committed recipe (kd: finished, the baseline commit), alpha = 1 (always added), and
    # FitNets, which fails at run time: the tiny teacher has no layer `pool` (its default).
    search = [sys.executable, "-m", "kdflow.cli", "search", "-S", "distill.method=kd,fitnet", "-j", "2",
              "--give-up-after", "1"]
    first = subprocess.Popen(search, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while list(queue_status(repo).values()).count("Running") < 2:
        assert first.poll() is None and time.monotonic() < deadline, "two experiments never ran"
        time.sleep(1)
    assert any("exec-run" in c for c in kill_the_queue(repo, spare=first.pid))
    out, err = first.communicate(timeout=60)
    assert first.returncode == 1 and "Traceback" not in err
    assert "3 recipes, 1 already finished or queued, 2 to run" in out
    assert err.strip().splitlines()[-1].startswith(
        "kdflow search: error: the queue made no progress for 1 s (2 running, 0 queued, no busy worker, no "
        "experiment process): run the same command again")
    assert sorted(queue_status(repo).values()) == ["Running", "Running"]  # what the dead queue left, for good
    assert "Worker status: 0 active, 0 idle" in sh(["dvc", "queue", "status"], repo).stdout
    # A recipe left queued, twice, as an older search or a hand could leave it.
    for _ in range(2):
        sh(["dvc", "exp", "run", "--queue", "-S", "distill.method=fitnet"], repo)

    second = sh(search, repo).stdout
    assert second.count("was left Running by a queue that died") == 2
    assert "search: removed 1 queued duplicate(s) of recipes DVC already holds" in second
    assert "3 recipes, 2 already finished or queued, 1 to run" in second  # the queued one is not queued again
    assert "distill.method=fitnet: experiment" in second and "removed, queued again once" in second
    failed = [line for line in second.splitlines() if line.startswith("search: FAILED: ")]
    assert len(failed) == 1 and "distill.method=fitnet" in failed[0]
    assert "distill.fitnet.teacher_layer = 'pool' is not a teacher layer" in failed[0]
    status = queue_status(repo)
    assert sorted(status.values()) == ["Failed", "Success"], status  # each recipe once
    (done,) = (name for name, state in status.items() if state == "Success")
    log = sh(["dvc", "queue", "logs", done], repo).stdout  # the teacher, the scratch students: DVC's cache
    assert stages_run(log) == ALPHA_STAGES and UPSTREAM <= stages_skipped(log)

    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    baseline = next(base for base in shown if base["rev"] != "workspace")
    revs = {rev["name"]: rev for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    assert revs[done]["data"]["params"]["params.yaml"]["data"]["alpha"] == 1.0
    # The same numbers as without the crash: alpha = 1 trains exactly the scratch students (a
    # gain of exactly 0), and those are the baseline commit's, from DVC's cache.
    no_kd = student_val(revs[done])
    assert no_kd["distilled"] == no_kd["scratch"] == student_val(baseline)["scratch"]

    # Ranked by the mean paired validation gain (then its CI's lower bound), computed here from
    # `dvc exp show`; the test gain is never used.
    def val_rank(rev):
        val = student_val(rev)
        gains = np.subtract(val["distilled"], val["scratch"])
        half = stats.t.ppf(0.975, len(gains) - 1) * gains.std(ddof=1) / np.sqrt(len(gains))
        return round(gains.mean(), 6), round(gains.mean() - half, 6)

    ranking = json.loads((repo / "selection/ranking.json").read_text())
    ranked = [row["experiment"] for row in ranking]
    by_name = {**revs, baseline.get("name") or baseline["rev"][:7]: baseline}
    assert len(ranked) == 2 and done in ranked
    assert [val_rank(by_name[name]) for name in ranked] == sorted((val_rank(by_name[n]) for n in ranked), reverse=True)
    assert (repo / "selection/ranking.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in (repo / "selection/ranking.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ranked  # the table, in the same order
    if ranked[0] == done:
        assert f"search: applied {done}" in second
        assert yaml.safe_load((repo / "params.yaml").read_text())["alpha"] == 1.0
    else:
        assert "search: the best is the committed recipe" in second


def test_a_search_on_two_hosts_ranks_and_applies_as_one_host_would(pipeline_repo, tmp_path):
    """Two hosts search half a grid each, sharing a bare git repository (the team's git server)
    and a folder (the DVC remote); a third clone ranks and applies. The team's commit is not
    reproduced (no dvc.lock): host 1 reproduces it (its run cache knows every stage: it ran them
    for the session's pipeline) and shares it; host 2 restores it from the DVC remote's run
    cache, training nothing. The reference is the one-host `kdflow search` over the same grid,
    on a fourth clone that got the experiments with plain `dvc exp pull` (every run reproduces
    bit for bit: test_forced_rerun_is_identical; running them twice more would cost a minute)."""
    import subprocess
    import time

    from conftest import _env

    grid = ["-S", "alpha=0.3"]  # alpha = 1 (part 1) and alpha 0.3 (part 2)
    team, store = tmp_path / "team.git", tmp_path / "dvc-store"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(team)], tmp_path)
    host1 = copy_repo(pipeline_repo, tmp_path / "host1")
    sh(["git", "rm", "-q", "dvc.lock"], host1)
    sh(["dvc", "remote", "add", "-d", "team", str(store)], host1)
    sh(["git", "commit", "-qam", "the team's commit, with its DVC remote"], host1)
    sh(["git", "remote", "add", "origin", str(team)], host1)
    sh(["git", "push", "-q", "origin", "main"], host1)
    host2, ranker, alone = tmp_path / "host2", tmp_path / "ranker", tmp_path / "alone"
    for clone in (host2, ranker, alone):
        sh(["git", "clone", "-q", str(team), str(clone)], tmp_path)
    kdflow = [sys.executable, "-m", "kdflow.cli"]

    # Host 1 first, until it has shared the baseline; then host 2.
    first = subprocess.Popen(kdflow + ["search", *grid, "--part", "1/2", "--push", "origin"], cwd=host1, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said, deadline = [], time.monotonic() + 300
    while not any("search: the baseline:" in line for line in said):
        assert first.poll() is None and time.monotonic() < deadline, (said, first.stderr.read())
        said.append(first.stdout.readline())
    part2 = sh(kdflow + ["search", *grid, "--part", "2/2", "--push", "origin"], host2).stdout
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    part1 = "".join(said) + out
    assert "part 1/2: 1 of the grid's 2 recipes\n  alpha=1.0, distill.method=kd" in part1
    assert "part 2/2: 1 of the grid's 2 recipes\n  alpha=0.3" in part2

    def baseline(output):
        line = next(line for line in output.splitlines() if line.startswith("search: the baseline:"))
        restored = re.search(r"(\d+) stage\(s\) restored from the run cache \(([\w, ]+)\)", line)
        ran = re.search(r"(\d+) run here \(([\w, ]+)\)", line)
        return set(restored[2].split(", ")) if restored else set(), set(ran[2].split(", ")) if ran else set()

    # Nothing was trained for the baseline on either host; evaluate, whose report is in git
    # (`cache: false`), is the one stage the run cache does not hold.
    for output in (part1, part2):
        assert baseline(output) == (ALL_STAGES - {"evaluate"}, {"evaluate"}), output
    for host, output in ((host1, part1), (host2, part2)):
        (name,) = queue_status(host)  # one recipe ran on each host, once
        assert f"search: pushed {name} to origin" in output
        log = sh(["dvc", "queue", "logs", name], host).stdout
        assert stages_run(log) == ALPHA_STAGES and UPSTREAM <= stages_skipped(log) | stages_cached(log), log
    assert "when every part is in, on any host: kdflow rank -S alpha=0.3 --from origin --apply" in part2

    # A late host (or one rerun after a crash), without --part: both recipes are on the remote, so
    # it runs nothing, ranks and leaves the workspace alone.
    late = sh(kdflow + ["search", *grid, "--push", "origin", "--no-apply"], host2).stdout
    assert "2 recipes, 2 already finished or queued, 0 to run" in late and "pulled 1 new here" in late
    assert len(queue_status(host2)) == 1

    ranked = sh(kdflow + ["rank", *grid, "--from", "origin", "--apply"], ranker).stdout
    assert "origin holds 2 experiment(s) of this commit; pulled 2 new here" in ranked
    sh(["dvc", "exp", "pull", "origin"], alone)
    single = sh(kdflow + ["search", *grid], alone).stdout
    assert "2 recipes, 2 already finished or queued, 0 to run" in single
    for repo in (ranker, alone):
        assert queue_status(repo) == {}  # trained nothing

    def ranking(repo):
        return [(row["experiment"], row["recipe"], row["val_kd_gain"])
                for row in json.loads((repo / "selection/ranking.json").read_text())]

    assert ranking(ranker) == ranking(alone) and len(ranking(alone)) == 2
    assert re.search(r"search: applied [\w-]+ to the workspace", ranked)
    assert ranked.splitlines()[-1] == single.splitlines()[-1]  # the same experiment applied
    assert (ranker / "params.yaml").read_text() == (alone / "params.yaml").read_text()
    # The applied experiment's outputs came from the DVC remote: the workspace is complete.
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], ranker).stdout


def test_a_shared_search_refuses_what_would_split_the_team_with_one_line_each(tmp_path):
    """Before anything runs: no such remote, no DVC remote, uncommitted changes, a commit the
    remote does not have, --part without --push, rank's flags without --from, and a ranking
    with nothing on the remote yet."""
    from conftest import make_repo

    repo = make_repo(tmp_path / "repo")
    team = tmp_path / "team.git"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(team)], tmp_path)
    kdflow = [sys.executable, "-m", "kdflow.cli"]

    def refused(*args):
        result = sh(kdflow + list(args), repo, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        return line

    assert refused("search", "--part", "1/2").startswith("kdflow search: error: --part needs --push GIT_REMOTE")
    assert refused("rank", "-S", "alpha=0.3").startswith("kdflow rank: error: -S and --apply go with --from")
    assert refused("search", "-S", "alpha=0.3", "--push", "nowhere").startswith(
        "kdflow search: error: nowhere: not a git remote here (`git remote -v`) nor a reachable repository")
    sh(["git", "remote", "add", "origin", str(team)], repo)
    assert "no default DVC remote: the hosts share outputs and the run cache through one" in refused(
        "search", "-S", "alpha=0.3", "--push", "origin")
    sh(["dvc", "remote", "add", "-d", "team", str(tmp_path / "store")], repo)
    assert refused("search", "-S", "alpha=0.3", "--push", "origin").startswith(
        "kdflow search: error: uncommitted changes (.dvc/config): every host must search from the same commit")
    sh(["git", "commit", "-qam", "remote"], repo)
    assert "is not a branch head on origin: every host must search from the same commit; `git push origin HEAD`" \
        in refused("search", "-S", "alpha=0.3", "--push", "origin")
    sh(["git", "push", "-q", "origin", "main"], repo)
    assert refused("rank", "-S", "alpha=0.3", "--from", "origin").startswith(
        "kdflow rank: error: no recipe of the grid has a finished experiment on origin or here yet: "
        "`kdflow search -S alpha=0.3 --push origin` on any host runs them")
    assert queue_status(repo) == {}


def test_own_npz_data_and_own_teacher_run_end_to_end(byo_repo):
    """A user's dataset (string labels, 3 classes, RGB) and a user's .h5 teacher (probabilities,
    [0, 255] inputs), tracked with `dvc add`, distilled with attention transfer: only params
    change; replacing the data file reruns it all."""
    import numpy as np

    repo, first = byo_repo
    assert stages_run(first) == ALL_STAGES
    assert "(Keras H5): outputs are probabilities" in first
    assert "teacher val accuracy 1.0000 with inputs in [0, 255] (also tried: [0, 1]" in first
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["class_names"] == ["ant", "bee", "cow"] and meta["input_shape"] == [10, 10, 3]
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate["teacher"]["per_class_accuracy"]) == {"ant", "bee", "cow"}
    assert json.loads((repo / "metrics/train_teacher.json").read_text())["epochs_run"] == 0  # not trained
    # The teacher check covers a user's teacher: the stage's warning line says what the metrics say.
    check = evaluate["teacher_check"]
    assert ("evaluate: WARNING: teacher val accuracy" in first) == (not check["teacher_clearly_better"])
    assert ("> **Teacher check**" in (repo / "reports/summary.md").read_text()) == (not check["teacher_clearly_better"])
    # attention transfer from the teacher's spatial layer inside its wrapper, logged as it weighs in the loss
    distilled = json.loads((repo / "metrics/distill.json").read_text())
    assert distilled["repeat_0"]["attention_loss"] > 0
    assert distilled["val_accuracy_mean"] > 0.5  # 3 classes: the students learned
    # cutmix views: the cache holds the partner and the box of every view, its logits in float16
    views_table = np.load(repo / "data/soft_targets/train_views-00000.npy")
    assert views_table.shape[-1] == 3 + 5 and np.load(repo / "data/soft_targets/train-00000.npy").dtype == np.float16
    assert "fidelity_per_repeat" in evaluate["student_distilled"] and "teacher_kl_mean" in evaluate["student_scratch"]
    # images without labels: 8 labels per class kept, the other 12 of each class's 20 training
    # images and the 45 of inputs/unlabeled.npz without; the teacher's cache covers all of them
    assert meta["sizes"] == {"train": 24, "val": 12, "test": 12, "unlabeled": 81 - 24}
    assert np.load(repo / "data/soft_targets/train-00000.npy").shape[0] == 81
    assert "train_pseudo: mean val_accuracy" in first
    pseudo = json.loads((repo / "metrics/train_pseudo.json").read_text())
    assert pseudo["unlabeled_images"] == 57 and pseudo["val_accuracy_mean"] > 0.5  # they learned
    assert evaluate["student_pseudo"]["repeats"] == 2 and evaluate["student_pseudo"]["accuracy_mean"] > 0.5
    for gain in ("extra_images_gain", "soft_gain"):
        assert set(evaluate[gain]) == {"mean", "std", "ci95_low", "ci95_high", "pairs"}
    assert evaluate["soft_gain"]["mean"] == pytest.approx(
        evaluate["student_distilled"]["accuracy_mean"] - evaluate["student_pseudo"]["accuracy_mean"], abs=1e-5)
    summary = (repo / "reports/summary.md").read_text()
    assert "| pseudo-labelled student (views, with the images without labels) |" in summary
    assert "| The soft targets on top (distilled − pseudo-labelled, same images) |" in summary
    # the pseudo-labelled students rerun bit for bit (labelled and unlabelled batches, the teacher's labels)
    lock = (repo / "dvc.lock").read_bytes()
    sh(["dvc", "repro", "--force", "--single-item", "train_pseudo"], repo)
    assert (repo / "dvc.lock").read_bytes() == lock

    # New data under the same name: `dvc add` records it and the whole pipeline is out of date.
    with np.load(repo / "inputs/mine.npz") as npz:
        x, labels = npz["x_train"], npz["y_train"]
    np.savez(repo / "inputs/mine.npz", x_train=x[::-1].copy(), y_train=labels[::-1].copy())
    sh(["dvc", "add", "inputs/mine.npz"], repo)
    status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
    assert {"prepare"} <= set(status)

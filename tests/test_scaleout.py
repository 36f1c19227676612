"""Growing past one run on one device: resumable training, tf.distribute, remote storage.
Real stages, real `dvc` CLI, real TensorFlow (tiny settings)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, copy_repo, minimal_params, run_stage, sh, stage_env, stages_run

pytestmark = pytest.mark.e2e


def set_params(repo, section, **values):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def distill_outputs(repo):
    files = [*sorted((repo / "models/student_distilled_repeats").glob("*.keras")),
             repo / "metrics/distill.json", *sorted((repo / "dvclive/distill").rglob("*.tsv"))]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files}


def test_killed_stage_resumes_at_its_last_epoch_and_ends_with_the_same_weights(pipeline_repo, tmp_path):
    """SIGKILL (no clean-up at all) of `dvc repro distill` in its second repeat: no output is
    left, the next run resumes where the checkpoints say and ends bit for bit where an
    uninterrupted run ends."""
    repo = copy_repo(pipeline_repo, tmp_path / "killed")
    assert yaml.safe_load((repo / "params.yaml").read_text())["views"]["count"] > 0  # on augmented views
    # Long enough to be killed mid-run; patience > epochs keeps early stopping's state in play
    # (best weights restored at the end) without stopping.
    set_params(repo, "train_student", epochs=8, batch_size=128, patience=20)
    # The same run, never interrupted, in a copy of its own, side by side.
    reference = copy_repo(repo, tmp_path / "reference")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    uninterrupted = subprocess.Popen(["dvc", "repro", "distill"], cwd=reference, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    process = subprocess.Popen(["dvc", "repro", "distill"], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in process.stdout:  # kill once epoch 3 of the second repeat has begun
        seen.append(line)
        if line.startswith("Epoch 3/8") and any("repeat 2/2" in s for s in seen):
            break
    else:
        pytest.fail("distill ended before it could be killed:\n" + "".join(seen[-30:]))
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage process, no cleanup at all
    process.wait(timeout=30)
    assert not (repo / "models/student_distilled.keras").exists()
    assert len(list((repo / ".kdflow/runs/distill").glob("*/repeat_*.npz"))) == 2
    # What the checkpoints belong to: the stage's code is the sub-packages dvc.yaml lists for it
    # (editing the report throws none away), and what its training reads of the params.
    (key,) = (repo / ".kdflow/runs/distill").glob("*/key.json")
    described = json.loads(key.read_text())
    deps = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["distill"]["deps"]
    assert [f"kdflow/{folder}" for folder in described["code"]] == sorted(d for d in deps if d.startswith("kdflow/"))
    assert described["params"][:4] == [42, 2, 0.1, 2.0]  # seed, repeats, alpha, temperature

    resumed = sh(["dvc", "repro", "distill"], repo).stdout
    assert "student_distilled: finished from the checkpoint" in resumed  # repeat 1 was done
    # the second repeat resumed after the last epoch it finished (at least the two before the kill)
    epoch = re.search(r"student_distilled: resuming at epoch (\d)/8 from the checkpoint", resumed)
    assert epoch and 3 <= int(epoch.group(1)) < 8, resumed[-3000:]
    assert "Epoch 1/8" not in resumed.split("repeat 2/2")[1]  # the second repeat did not start over
    assert not list((repo / ".kdflow/runs/distill").glob("*/*"))  # checkpoints removed on success
    # the killed run's temp files were removed by the next run
    assert [p.name for folder in ("models", "dvclive") for p in (repo / folder).glob(".*.tmp")] == []
    out = uninterrupted.communicate(timeout=600)[0]
    assert uninterrupted.returncode == 0, out[-3000:]
    assert distill_outputs(repo) == distill_outputs(reference)  # weights, metrics and curves, bit for bit


DISTRIBUTED_FIT = ROOT / "tests/distributed_fit.py"


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def result_of(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def start_fits(strategy, workers=1):
    """Start the helper under ``strategy`` as ``workers`` processes (a cluster on loopback ports)."""
    ports = free_ports(workers)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return [subprocess.Popen([sys.executable, str(DISTRIBUTED_FIT), strategy], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**env, "TF_CONFIG": tf_config(ports, i)} if workers > 1 else env)
            for i in range(workers)]


def results(processes):
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    return [result_of(out) for out, _ in outputs]


def max_difference(a, b):
    return max(np.max(np.abs(np.array(x) - np.array(y))) for x, y in zip(a["weights"], b["weights"]))


def test_mirrored_replicas_and_two_workers_train_as_one_device():
    """The same small fit (same data, seeds, global batches) on one device, on 2 logical CPU
    devices (mirrored) and as 2 worker processes on loopback ports (multi_worker)."""
    from distributed_fit import fit_under

    started = start_fits("mirrored") + start_fits("multi_worker", workers=2)  # fresh processes, side by side
    single = json.loads(json.dumps(fit_under("default")))  # in this process, as the JSON of the others
    mirrored, chief, worker = results(started)
    assert single["replicas_in_sync"] == 1
    assert mirrored["replicas_in_sync"] == chief["replicas_in_sync"] == worker["replicas_in_sync"] == 2
    # The training step ran on both replicas: both local ones, or one in each worker process.
    assert {0, 1} <= set(mirrored["traced_on"]) and 1 not in single["traced_on"]
    assert chief["traced_on"] == [0] and worker["traced_on"] == [1]
    assert chief["losses"][-1] < 0.6 * chief["losses"][0]  # it learns
    assert chief["weights"] == worker["weights"]  # the workers hold one model, bit for bit
    assert chief["summary"] == worker["summary"]  # metrics reduced over both workers
    # Each update is the single-device update up to float round-off: a wrongly scaled loss
    # (mean per replica, not / global batch) or gradients summed twice would move them by far more.
    for run in (mirrored, chief):
        assert max_difference(single, run) < 1e-4
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-4)
        assert run["summary"]["val_accuracy"] == single["summary"]["val_accuracy"]


def test_multi_worker_without_a_cluster_is_one_line(tmp_path):
    """Stages under a strategy run end to end in the dvc test below; without TF_CONFIG (or with
    a broken one) multi_worker stops before any work, naming the variable."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(minimal_params(runtime={"strategy": "multi_worker"})))
    result = run_stage("train_teacher", tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "runtime.strategy = multi_worker: set TF_CONFIG on every worker" in result.stderr
    broken = subprocess.run([sys.executable, "-m", "stages.train_teacher"], cwd=tmp_path, capture_output=True,
                            text=True, env=stage_env(TF_CONFIG='{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}'))
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "TF_CONFIG: not a valid cluster description" in broken.stderr, broken.stderr
    assert not (tmp_path / "models").exists()


def test_a_training_stage_runs_under_dvc_repro_on_two_workers(pipeline_repo, tmp_path):
    """The chief runs `dvc repro train_scratch` in its checkout; a second worker runs the same
    stage's script in its own copy (as on a second host): the stage completes, DVC records it,
    and the worker's checkout is left exactly as it was."""
    repo = copy_repo(pipeline_repo, tmp_path / "chief")
    set_params(repo, "runtime", strategy="multi_worker")
    second_host = copy_repo(repo, tmp_path / "worker")
    before = {p: p.stat().st_mtime_ns for p in second_host.rglob("*")}
    ports = free_ports(2)
    worker = subprocess.Popen([sys.executable, "-m", "stages.train_scratch"], cwd=second_host,
                              env=stage_env(TF_CONFIG=tf_config(ports, 1)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chief = sh(["dvc", "repro", "train_scratch"], repo, env={"TF_CONFIG": tf_config(ports, 0)})
    worker_output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 0, worker_output[-3000:]
    assert stages_run(chief.stdout) == {"train_scratch"}
    assert "runtime: multi_worker strategy, 2 replicas on 2 workers (this is worker 0, the chief)" in chief.stdout
    assert "(this is worker 1, writes nothing)" in worker_output
    assert "Data and pipelines are up to date" in sh(["dvc", "status", "train_scratch"], repo).stdout
    assert json.loads((repo / "metrics/train_scratch.json").read_text())["repeat_0"]["epochs_run"] >= 1
    # The worker trained every repeat with the chief, and wrote nothing: no output, curve or checkpoint.
    assert worker_output.count("student_scratch: repeat") == 2
    assert {p: p.stat().st_mtime_ns for p in second_host.rglob("*")} == before


def test_push_to_a_remote_then_a_fresh_clone_pulls_and_reruns_nothing(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)
    storage = tmp_path / "storage"
    sh(["dvc", "remote", "add", "-d", "shared", str(storage)], repo)
    sh(["git", "commit", "-qam", "add a DVC remote"], repo)
    pushed = sh(["dvc", "push"], repo)
    assert storage.exists() and any(storage.rglob("*")), pushed.stdout

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models/teacher.keras").exists()  # only git-tracked files so far
    sh(["dvc", "pull"], clone)
    for path in ("models/teacher.keras", "models/student_distilled.keras", "data/soft_targets", "export"):
        assert (clone / path).exists(), path
    assert (clone / "models/teacher.keras").read_bytes() == (repo / "models/teacher.keras").read_bytes()
    repro = sh(["dvc", "repro"], clone)
    assert stages_run(repro.stdout + repro.stderr) == set(), repro.stdout[-2000:]
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone).stdout

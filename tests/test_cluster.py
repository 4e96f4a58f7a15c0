"""`harness run` on a Ray cluster of two nodes on this machine (separate raylets, one logical GPU
each), sweep files in an S3 bucket (moto's server) and MLflow on a tracking server backed by
PostgreSQL: the commands of docs/clusters.md. Trials on both nodes end with the same MLflow
artifacts; a node lost mid-sweep costs a retry, not a trial; a sweep resumes from the bucket."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import storage
from helpers import run_cli
from services import (answers, free_port, mlflow_server, postgres, ray_env, ray_node, raylet_of, s3_server,
                      wait_for)

pytestmark = pytest.mark.cluster
BUCKET = "harness-sweeps"
SWEEPS = f"s3://{BUCKET}/sweeps"
FILES = {"adapter", "gsm8k_samples.jsonl", "metrics.json", "peft_result.json"}
REPO = str(Path(__file__).resolve().parents[1])


@dataclass
class Cluster:
    address: str            # the head's GCS, host:port
    tracking: str           # the MLflow server's URL
    env: dict               # Ray token and bucket variables, for the driver as for the nodes
    secrets: list           # what must never show: bucket secret key, Ray token, database password
    head_node: str
    worker_node: str
    worker_raylet: int      # process id
    mlf: object = None


def started_node(log: Path, proc):
    wait_for(lambda: "Ray runtime started" in log.read_text(), log.name, 120, proc)
    return raylet_of(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    start = time.monotonic()
    with ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        s3 = stack.enter_context(s3_server(root, BUCKET))
        for key, value in s3.items():  # for this process's own reads of the bucket
            mp.setenv(key, value)
        backend = stack.enter_context(postgres())
        server, tracking = mlflow_server(backend, f"s3://{BUCKET}/mlartifacts", root / "mlflow.log", env=s3)
        server = stack.enter_context(server)
        token = root / "ray-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = ray_env(token, s3, os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        port, sessions = free_port(), Path(tempfile.mkdtemp(prefix="ray-"))
        stack.callback(shutil.rmtree, sessions, ignore_errors=True)  # after the nodes stopped
        head = stack.enter_context(ray_node(sessions / "head", root / "head.log", env, port, head=True))
        _, head_node = started_node(root / "head.log", head)
        worker = stack.enter_context(ray_node(sessions / "worker", root / "worker.log", env, port, head=False))
        worker_raylet, worker_node = started_node(root / "worker.log", worker)
        wait_for(lambda: answers(f"{tracking}/health"), "mlflow server", 180, server)
        from mlflow.tracking import MlflowClient
        print(f"\ncluster up in {time.monotonic() - start:.0f} s")
        hidden = [s3["AWS_SECRET_ACCESS_KEY"], token.read_text(), urllib.parse.urlsplit(backend).password]
        yield Cluster(f"127.0.0.1:{port}", tracking, env, hidden, head_node, worker_node, worker_raylet,
                      MlflowClient(tracking))


def harness_run(cluster, name, *extra, data_dir):
    """The command of docs/clusters.md, section 5, against this cluster."""
    return ["run", "--address", cluster.address, "--storage", SWEEPS, "--tracking-uri", cluster.tracking,
            "--gpus-per-trial", "1", "--cpus-per-trial", "1", "--preset", "smoke", "--eval-limit", "1",
            "--data-dir", data_dir, "--name", name, *extra]


def start_driver(cluster, args, log: Path):
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], env={**os.environ, **cluster.env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def trial_runs(cluster, name) -> list:
    exp = cluster.mlf.get_experiment_by_name("gsm8k")
    if exp is None:
        return []
    return cluster.mlf.search_runs([exp.experiment_id], max_results=1000, filter_string=
                                   f"tags.`harness.sweep` = '{name}' and tags.`harness.kind` = 'trial'")


def wait_until(check, what: str, timeout: float, driver):
    deadline = time.monotonic() + timeout
    while not check():
        assert driver.poll() is None, f"the driver exited ({driver.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(2)


def attempts_in_bucket(name: str) -> list[dict]:
    """Each attempt of each trial, from the result.json files Tune wrote to the bucket: its node,
    GPU ids and the span of its reports."""
    spans = {}
    sweep = storage.join(SWEEPS, name)
    for folder in storage.listdir(sweep):
        if not storage.exists(storage.join(sweep, folder, "result.json")):
            continue
        for line in storage.read_text(storage.join(sweep, folder, "result.json")).splitlines():
            r = json.loads(line)
            if r.get("recorded"):  # a resumed trial the record held as done: it reported, never trained
                continue
            key = (r["trial_id"], r["pid"])
            span = spans.setdefault(key, dict(trial=r["trial_id"], node=r["ray.node_id"],
                                              gpu=r["cuda_visible_devices"], start=r["timestamp"], end=r["timestamp"]))
            span["start"], span["end"] = min(span["start"], r["timestamp"]), max(span["end"], r["timestamp"])
    return list(spans.values())


def bucket_files(prefix: str) -> list[str]:
    fs, path = storage.resolve(prefix)
    from pyarrow.fs import FileSelector, FileType
    return [f"s3://{i.path}" for i in fs.get_file_info(FileSelector(path, recursive=True)) if i.type == FileType.File]


@pytest.fixture(scope="module")
def spread(cluster, data_dir, tmp_path_factory):
    """Four trials on the two nodes. Once the worker node has finished a trial and runs another,
    its raylet is stopped: that trial must be retried on the head node. Once it runs there, the
    driver is killed too, and `--resume spread --storage s3://...` finishes the sweep from the bucket."""
    log = tmp_path_factory.mktemp("spread") / "driver.log"
    start = time.monotonic()
    driver = start_driver(cluster, harness_run(cluster, "spread", "--methods", "lora,lora-ga", "--lrs", "1e-2,2e-2",
                                               "--max-failures", "2", data_dir=data_dir), log)
    try:
        def on(node, status):
            return [r for r in trial_runs(cluster, "spread")
                    if r.data.tags.get("ray.node_id") == node and r.data.tags["status"] == status]
        wait_until(lambda: on(cluster.worker_node, "finished") and on(cluster.worker_node, "running"),
                   "second trial on the worker node", 300, driver)
        lost = on(cluster.worker_node, "running")[0].info.run_id
        os.kill(cluster.worker_raylet, signal.SIGTERM)  # the worker node is gone
        wait_until(lambda: lost in {r.info.run_id for r in on(cluster.head_node, "running")},
                   "retry on the head node", 300, driver)
        # killed at once: a trial shown finished in MLflow is in the sweep's record already (the
        # record comes first), so the resume must not run it again whatever Tune last saved
        finished = {r.info.run_id for r in trial_runs(cluster, "spread") if r.data.tags["status"] == "finished"}
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver is lost too
        driver.wait()
    assert not storage.exists(f"{SWEEPS}/spread/results.json")
    killed = time.monotonic() - start
    resumed = run_cli("run", "--resume", "spread", "--storage", SWEEPS, env=cluster.env, timeout=400)
    print(f"\nsweep spread: {killed:.0f} s until the driver was killed, {time.monotonic() - start:.0f} s with --resume")
    return log.read_text(), resumed, lost, finished


def test_trials_ran_on_both_nodes_and_the_lost_ones_were_retried(cluster, spread):
    _, resumed, lost, _ = spread
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    runs = trial_runs(cluster, "spread")
    keys = sorted((r.data.params["method"], float(r.data.params["lr"]), int(r.data.params["seed"])) for r in runs)
    assert keys == [(m, lr, 0) for m in ("lora", "lora-ga") for lr in (1e-2, 2e-2)]  # each once
    assert {r.data.tags["status"] for r in runs} == {"finished"}
    nodes = {r.info.run_id: r.data.tags["ray.node_id"] for r in runs}
    assert cluster.worker_node in nodes.values() and cluster.head_node in nodes.values()
    retried = next(r for r in runs if r.info.run_id == lost)
    assert nodes[lost] == cluster.head_node and retried.data.metrics["attempts"] >= 2
    assert {r.data.tags["host"] for r in runs} == {socket.gethostname()}
    print("\ntrials per node: " + ", ".join(f"{'worker' if n == cluster.worker_node else 'head'} "
                                             f"{list(nodes.values()).count(n)}" for n in set(nodes.values())))


def test_no_two_concurrent_trials_shared_a_gpu(cluster, spread):
    attempts = attempts_in_bucket("spread")
    assert len({a["trial"] for a in attempts}) == 4 and len(attempts) >= 5  # the lost one at least twice
    assert {a["gpu"] for a in attempts} == {"0"}  # each node's one logical GPU, as Ray assigned it
    for i, a in enumerate(attempts):
        for b in attempts[i + 1:]:
            if (a["node"], a["gpu"]) == (b["node"], b["gpu"]):
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)


def test_every_trial_has_its_files_whichever_node_ran_it(cluster, spread, tmp_path):
    for run in trial_runs(cluster, "spread"):
        run_id = run.info.run_id
        assert {a.path for a in cluster.mlf.list_artifacts(run_id)} == FILES, run.data.tags["ray.node_id"]
        assert "adapter/adapter_model.safetensors" in {a.path for a in cluster.mlf.list_artifacts(run_id, "adapter")}
        saved = json.loads(Path(cluster.mlf.download_artifacts(run_id, "metrics.json", str(tmp_path))).read_text())
        assert (saved["config"]["method"], saved["config"]["lr"]) == (run.data.params["method"], float(run.data.params["lr"]))


def test_results_report_and_log_are_in_the_bucket(cluster, spread):
    rows = json.loads(storage.read_text(f"{SWEEPS}/spread/results.json"))
    assert sorted((r["method"], r["lr"]) for r in rows) == [(m, lr) for m in ("lora", "lora-ga") for lr in (1e-2, 2e-2)]
    assert {r["status"] for r in rows} == {"finished"}
    report = json.loads(storage.read_text(f"{SWEEPS}/spread/report/report.json"))
    assert {m: report["methods"][m]["trials"] for m in ("lora", "lora-ga")} == {"lora": 2, "lora-ga": 2}
    table = storage.read_text(f"{SWEEPS}/spread/report/report.md").split("## Trials")[1]
    assert table.count(f"| {socket.gethostname()} |") == 4
    assert "Connecting to existing Ray cluster" in storage.read_text(f"{SWEEPS}/spread/harness.log")
    entries = storage.listdir(f"{SWEEPS}/spread/inits")  # LoRA-GA's init, shared by its trials on any node
    assert len(entries) == 1 and entries[0].startswith("lora-ga-") and entries[0].endswith(".pt"), entries


def test_report_command_reads_a_sweep_in_the_bucket(cluster, spread):
    fs, path = storage.resolve(f"{SWEEPS}/spread/report")
    fs.delete_dir(path)
    proc = run_cli("report", "spread", "--storage", SWEEPS, "--tracking-uri", cluster.tracking, env=cluster.env,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(f"{SWEEPS}/spread/report/report.html")
    assert storage.listdir(f"{SWEEPS}/spread/report") == ["report.html", "report.json", "report.md"]


def test_no_secret_in_output_bucket_or_mlflow(cluster, spread):
    output, resumed, *_ = spread
    texts = [output, resumed.stdout, resumed.stderr] + [storage.read_bytes(f).decode(errors="replace") for f in bucket_files(f"{SWEEPS}/spread")]
    exp = cluster.mlf.get_experiment_by_name("gsm8k").experiment_id
    for run in cluster.mlf.search_runs([exp], filter_string="tags.`harness.sweep` = 'spread'"):
        texts.append(json.dumps([run.data.params, run.data.tags]))
    assert len(texts) > 20
    for secret in cluster.secrets:
        assert not [t[:80] for t in texts if secret in t]


def test_resume_keeps_the_finished_trials(cluster, spread):
    """Trials that finished before the driver was killed ran once (one validation at step 0 each);
    the resumed driver recorded into the same parent and child runs."""
    _, resumed, lost, finished = spread
    assert finished and lost not in finished
    for run_id in finished:
        starts = [m for m in cluster.mlf.get_metric_history(run_id, "val_loss") if m.step == 0]
        assert len(starts) == 1, run_id
    exp = cluster.mlf.get_experiment_by_name("gsm8k").experiment_id
    parents = cluster.mlf.search_runs([exp], filter_string="tags.`harness.sweep` = 'spread' and tags.`harness.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "sweep spread" in resumed.stdout and f"results: {SWEEPS}/spread/results.json" in resumed.stdout

"""`harness run` end to end: a real Ray Tune sweep on the tiny model, read back from MLflow."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.sweep import unfit
from harness.tracking import sweep_rows
from helpers import run_cli, sweep_runs


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, data_dir):
    storage = tmp_path_factory.mktemp("sweeps")
    start = time.monotonic()
    proc = run_cli("run", "--methods", "all", "--task", "gsm8k", "--preset", "smoke",
                   "--data-dir", data_dir, "--storage", storage, "--name", "smoke")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return storage, proc, time.monotonic() - start


def test_smoke_sweep_records_every_trial_in_mlflow(smoke_sweep):
    storage, proc, seconds = smoke_sweep
    client, parents, children = sweep_runs(storage / "mlflow.db", "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["version.peft"] and parents[0].data.tags["git_commit"]
    assert len(children) == 15  # 5 methods x the 3-rung smoke ladder
    seen = set()
    for run in children:
        params, metrics = run.data.params, run.data.metrics
        seen.add((params["method"], float(params["lr"]), int(params["seed"])))
        assert {"rank", "alpha"} <= set(params)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [0, 8, 16, 24]
        assert 0.0 <= metrics["gsm8k_strict"] <= 1.0 and 0.0 <= metrics["gsm8k_flexible"] <= 1.0
        assert metrics["gsm8k_n"] == 5
        assert all(metrics[f"{phase}_seconds"] > 0 for phase in ("load", "data", "train", "val", "score"))
        assert 0 < metrics["mfu"] < 1 and metrics["peak_tflops"] > 0
        assert run.data.tags["status"] == "finished"
        assert "adapter" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert len(seen) == 15
    print(f"smoke sweep: {seconds:.0f} s")


def test_terminal_shows_progress_not_library_noise(smoke_sweep):
    storage, proc, _ = smoke_sweep
    assert "trials 15/15: 15 done" in proc.stdout
    assert "time in trials (" in proc.stdout and "training " in proc.stdout
    assert "Configuration for experiment" not in proc.stdout + proc.stderr
    rows = json.loads((storage / "smoke" / "results.json").read_text())
    assert {r["status"] for r in rows} == {"finished"}


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path, data_dir):
    proc = run_cli("run", "--methods", "lora,lora-one", "--preset", "smoke", "--data-dir", data_dir,
                   "--storage", tmp_path / "s", "--seeds", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" lr=") == 2 * 3 * 2
    assert "TFLOP" in proc.stdout and "resources per trial" in proc.stdout
    assert not (tmp_path / "s").exists()


def test_optuna_gives_each_method_its_trials(tmp_path, data_dir):
    proc = run_cli("run", "--methods", "lora,riemannian", "--preset", "smoke", "--data-dir", data_dir,
                   "--storage", tmp_path, "--name", "tpe", "--search", "optuna", "--trials", "2",
                   "--steps", "4", "--eval-interval", "2", "--eval-limit", "0", "--cpus-per-trial", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "tpe" / "results.json").read_text())
    assert sorted(r["method"] for r in rows) == ["lora", "lora", "riemannian", "riemannian"]
    lrs = [r["lr"] for r in rows]
    assert all(1e-3 <= lr <= 3e-2 for lr in lrs) and len(set(lrs)) == 4
    assert all(r["hparams"]["reg"] == 1e-6 for r in rows if r["method"] == "riemannian")


def test_asha_stops_the_hopeless_learning_rates(tmp_path, data_dir):
    proc = run_cli("run", "--methods", "lora", "--preset", "smoke", "--data-dir", data_dir,
                   "--storage", tmp_path, "--name", "asha", "--scheduler", "asha",
                   "--lrs", "3e-2,1e-2,1e-7,1e-8", "--max-concurrent", "1", "--steps", "16",
                   "--eval-interval", "2", "--eval-limit", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["lr"]: r for r in json.loads((tmp_path / "asha" / "results.json").read_text())}
    assert rows[3e-2]["status"] == "finished"
    assert rows[1e-8]["status"] == "stopped" and rows[1e-8]["step"] < 16


def test_resume_after_the_driver_is_killed(tmp_path, data_dir):
    args = ["run", "--methods", "lora", "--preset", "smoke", "--data-dir", data_dir, "--storage", tmp_path,
            "--name", "killed", "--lrs", "1e-2,2e-2,3e-2", "--steps", "16", "--eval-limit", "0"]
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    finished = "killed/*/checkpoint_*/metrics.json"  # a trial's files, persisted by Ray as its checkpoint
    while not list(tmp_path.glob(finished)) and time.monotonic() < deadline:
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    assert list(tmp_path.glob(finished)), "no trial finished before the kill"
    # A flag that would change the saved sweep is refused before anything starts ...
    conflict = run_cli("run", "--resume", "killed", "--storage", tmp_path, "--lrs", "5e-2")
    assert conflict.returncode == 2 and "--lrs 0.05 differs" in conflict.stderr, conflict.stderr
    # ... and the name alone resumes it with its saved settings; repeating them is fine too.
    proc = run_cli("run", "--resume", "killed", "--storage", tmp_path, "--preset", "smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"harness: sweep killed: taking over the lock of pid {driver.pid} on host" in proc.stderr
    rows = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert sorted(r["lr"] for r in rows) == [1e-2, 2e-2, 3e-2]
    assert {r["status"] for r in rows} == {"finished"}
    _, parents, children = sweep_runs(tmp_path / "mlflow.db", "killed")
    assert len(parents) == 1
    assert sorted(float(r.data.params["lr"]) for r in children) == [1e-2, 2e-2, 3e-2]
    # What the report reads and shows: each (method, lr, seed) once.
    _, _, recorded = sweep_rows(f"sqlite:///{tmp_path / 'mlflow.db'}", "gsm8k", "killed")
    assert sorted((r["method"], r["lr"], r["seed"]) for r in recorded) == [("lora", lr, 0) for lr in (1e-2, 2e-2, 3e-2)]
    report = json.loads((tmp_path / "killed" / "report" / "report.json").read_text())["methods"]["lora"]
    assert report["trials"] == 3 and [(g["lr"], g["trials"]) for g in report["rungs"]] == \
        [(1e-2, 1), (2e-2, 1), (3e-2, 1)]


def test_a_trial_that_no_node_fits_is_named_with_the_largest_node():
    nodes = [{"CPU": 8, "GPU": 0}, {"CPU": 2, "GPU": 1}]  # ray.nodes()' resources
    assert unfit(8, 0, nodes, "h:6379") == "" and unfit(2, 1, nodes, "h:6379") == ""
    assert unfit(16, 0, nodes, "h:6379") == "--cpus-per-trial 16 but the largest node of the cluster at h:6379 has 8 CPUs"
    assert unfit(1, 2, nodes, "h:6379") == "--gpus-per-trial 2 but the largest node of the cluster at h:6379 has 1 GPUs"
    assert unfit(4, 1, nodes, "h:6379") == \
        "--cpus-per-trial 4 with --gpus-per-trial 1 but no node of the cluster at h:6379 has both"
    assert unfit(64, 0, [{"CPU": 2, "GPU": 0}]) == "--cpus-per-trial 64 but this machine has 2 CPUs"

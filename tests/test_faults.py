"""Faults in a sweep: crashed and killed trials are retried, then recorded as failed with their
error, and the rest of the sweep completes; two sweeps share one MLflow store safely."""

import json
import subprocess
import sys

from helpers import run_cli, sweep_runs

SMALL = ["--preset", "smoke", "--steps", "4", "--eval-interval", "2", "--eval-limit", "0",
         "--cpus-per-trial", "1"]


def rows_of(storage, name):
    return {r["lr"]: r for r in json.loads((storage / name / "results.json").read_text())}


def sweep_with_fault(tmp_path, data_dir, fault, name, max_failures):
    """A two-trial lora sweep whose lr=2e-2 trial meets the fault at step 2."""
    proc = run_cli("run", "--methods", "lora", "--lrs", "1e-2,2e-2", "--max-failures", max_failures,
                   "--data-dir", data_dir, "--storage", tmp_path, "--name", name, *SMALL,
                   env={"HARNESS_FAULT": f"{fault}@2,method=lora,lr=0.02"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, rows_of(tmp_path, name)


def test_crashing_trial_is_recorded_as_failed_and_the_sweep_completes(tmp_path, data_dir):
    proc, rows = sweep_with_fault(tmp_path, data_dir, "error", "crash", max_failures=1)
    assert rows[1e-2]["status"] == "finished"
    assert rows[2e-2]["status"] == "failed" and "injected error" in rows[2e-2]["error"]
    _, _, children = sweep_runs(tmp_path / "mlflow.db", "crash")
    failed = [r for r in children if r.data.tags["status"] == "failed"]
    assert len(children) == 2 and len(failed) == 1
    assert "injected error" in failed[0].data.tags["error"]
    report = json.loads((tmp_path / "crash" / "report" / "report.json").read_text())
    assert report["methods"]["lora"]["failed"] == 1
    assert "1 failed" in proc.stdout


def test_killed_worker_is_recorded_as_failed(tmp_path, data_dir):
    _, rows = sweep_with_fault(tmp_path, data_dir, "kill", "killed", max_failures=0)
    assert rows[1e-2]["status"] == "finished" and rows[2e-2]["status"] == "failed"


def test_two_sweeps_share_one_store(tmp_path, data_dir):
    def start(name):
        args = ["run", "--methods", "lora,riemannian", "--lrs", "1e-2,2e-2", "--data-dir", data_dir,
                "--storage", tmp_path, "--name", name, *SMALL]
        return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, second = start("one"), start("two")
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    for name in ("one", "two"):
        _, parents, children = sweep_runs(tmp_path / "mlflow.db", name)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted((r.data.params["method"], float(r.data.params["lr"])) for r in children) == \
            [("lora", 1e-2), ("lora", 2e-2), ("riemannian", 1e-2), ("riemannian", 2e-2)]

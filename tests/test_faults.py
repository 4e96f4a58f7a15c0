"""Faults in a sweep: crashed, out-of-memory and killed trials are retried, then recorded as
failed with their error, and the rest of the sweep completes; an absurd learning rate on the real
model diverges early; two sweeps share one MLflow store safely and agree; nothing secret leaks
(tokens in the environment, a password in the tracking URI); SIGINT, SIGTERM and SIGHUP stop a
sweep cleanly; a second driver of a running sweep is refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.cli import ui_command
from harness.tracking import sweep_rows
from helpers import run_cli, sweep_runs

SMALL = ["--preset", "smoke", "--steps", "4", "--eval-interval", "2", "--eval-limit", "0",
         "--cpus-per-trial", "1"]
SECRETS = {"HF_TOKEN": "hf-s3cret-token", "MLFLOW_TRACKING_TOKEN": "mlflow-s3cret-token"}
RETRIES = 2


def rows_of(storage, name):
    return {r["lr"]: r for r in json.loads((storage / name / "results.json").read_text())}


def sweep_with_faults(storage, data_dir, faults, name, max_failures, lrs="1e-2,2e-2", env=None, extra=()):
    """A lora sweep over `lrs` with HARNESS_FAULT=faults."""
    proc = run_cli("run", "--methods", "lora", "--lrs", lrs, "--max-failures", max_failures,
                   "--data-dir", data_dir, "--storage", storage, "--name", name, *SMALL, *extra,
                   env={"HARNESS_FAULT": faults, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, rows_of(storage, name)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory, data_dir):
    """lr 2e-2 raises an exception and lr 3e-2 runs out of memory at step 2 of every attempt;
    tokens in the environment must not leak."""
    storage = tmp_path_factory.mktemp("crashes")
    faults = "error@2,method=lora,lr=0.02;oom@2,method=lora,lr=0.03"
    proc, rows = sweep_with_faults(storage, data_dir, faults, "crash", RETRIES, lrs="1e-2,2e-2,3e-2",
                                   env=SECRETS)
    client, parents, children = sweep_runs(storage / "mlflow.db", "crash")
    by_lr = {float(r.data.params["lr"]): r for r in children}
    return storage, proc, rows, client, parents, by_lr


def test_crashing_trial_is_retried_then_recorded_as_failed(crashes):
    storage, proc, rows, client, _, runs = crashes
    assert rows[1e-2]["status"] == "finished"
    assert rows[2e-2]["status"] == "failed" and "injected error" in rows[2e-2]["error"]
    assert len(runs) == 3 and runs[2e-2].data.tags["status"] == "failed"
    assert "injected error" in runs[2e-2].data.tags["error"]
    # Tune's count, recorded as the attempts metric, and an independent one: every attempt
    # reported its initial validation loss at step 0.
    assert runs[1e-2].data.metrics["attempts"] == 1
    for lr in (2e-2, 3e-2):
        assert runs[lr].data.metrics["attempts"] == 1 + RETRIES
        starts = [m for m in client.get_metric_history(runs[lr].info.run_id, "val_loss") if m.step == 0]
        assert len(starts) == 1 + RETRIES
    report = json.loads((storage / "crash" / "report" / "report.json").read_text())
    assert report["methods"]["lora"]["failed"] == 2
    assert "2 failed" in proc.stdout


def test_out_of_memory_is_recorded_with_its_error_and_the_fix(crashes):
    storage, _, rows, _, _, runs = crashes
    assert rows[3e-2]["status"] == "failed"
    for text in (rows[3e-2]["error"], runs[3e-2].data.tags["error"]):
        assert "OutOfMemoryError: out of memory" in text and "--batch-size" in text
    report = (storage / "crash" / "report" / "report.md").read_text()
    failed = report[report.index("Failed trials"):]
    assert "| lora | 3e-2 |" in failed and "out of memory" in failed


def test_secrets_are_never_printed_logged_or_recorded(crashes):
    storage, proc, _, _, parents, runs = crashes
    texts = [proc.stdout, proc.stderr, (storage / "crash" / "harness.log").read_text(),
             (storage / "crash" / "results.json").read_text(), (storage / "crash" / "sweep.json").read_text()]
    for run in [*parents, *runs.values()]:
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for secret in SECRETS.values():
        assert not any(secret in text for text in texts)
    assert parents[0].data.params["trial.trust_remote_code"] == "False"


def test_library_notices_go_to_the_log_not_the_terminal(crashes):
    storage, proc, *_ = crashes
    log = (storage / "crash" / "harness.log").read_text()
    for notice in ("Token authentication is enabled", "Creating initial MLflow database tables"):
        assert notice in log and notice not in proc.stdout + proc.stderr
    assert not proc.stderr.strip(), proc.stderr


@contextmanager
def tracking_server(storage):
    """`mlflow server` (as `harness ui` starts it) on the SQLite store under storage; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv, env = ui_command(f"sqlite:///{storage / 'mlflow.db'}", "127.0.0.1", port)
    server = subprocess.Popen(argv, env=env, cwd=storage, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait()


def test_killed_worker_is_recorded_as_failed(tmp_path, data_dir):
    """Recorded through a tracking server whose URI holds a password, which must not leak."""
    with tracking_server(tmp_path) as address:
        proc, rows = sweep_with_faults(tmp_path, data_dir, "kill@2,method=lora,lr=0.02", "killed", max_failures=0,
                                       extra=["--tracking-uri", f"http://user:s3cret@{address}"])
    assert rows[1e-2]["status"] == "finished" and rows[2e-2]["status"] == "failed"
    _, parents, children = sweep_runs(tmp_path / "mlflow.db", "killed")
    assert len(parents) == 1 and {r.data.tags["status"] for r in children} == {"finished", "failed"}
    assert parents[0].data.params["tracking_uri"] == f"http://user:***@{address}"
    texts = [proc.stdout, proc.stderr] + [json.dumps([r.data.params, r.data.tags]) for r in [*parents, *children]]
    assert not any("s3cret" in text for text in texts)
    # nor in any file of the sweep: harness.log, sweep.json, results.json, Tune's tuner.pkl
    assert not [p for p in (tmp_path / "killed").rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()]


def test_absurd_learning_rate_diverges_early_on_the_real_model(tmp_path, data_dir):
    """SmolLM2-135M at lr 1.0 (the tiny random model cannot diverge: its logits stay bounded)."""
    steps = 24
    proc = run_cli("run", "--methods", "lora", "--lrs", "1.0", "--preset", "cpu", "--steps", steps,
                   "--val-size", "8", "--eval-limit", "0", "--data-dir", data_dir,
                   "--storage", tmp_path, "--name", "absurd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = rows_of(tmp_path, "absurd")[1.0]
    assert row["status"] == "diverged" and row["step"] < 8, row  # before its first validation
    _, _, children = sweep_runs(tmp_path / "mlflow.db", "absurd")
    assert [r.data.tags["status"] for r in children] == ["diverged"]
    report = json.loads((tmp_path / "absurd" / "report" / "report.json").read_text())
    assert report["methods"]["lora"]["diverged"] == 1
    assert report["methods"]["lora"]["rungs"][0]["status"] == "diverged"
    assert "1 diverged" in proc.stdout


def test_two_sweeps_share_one_store_and_agree(tmp_path, data_dir):
    """Both complete with all their runs, and the same seeds give the same metrics (CPU)."""
    def start(name):
        args = ["run", "--methods", "lora,lora-one", "--lrs", "1e-2,2e-2", "--data-dir", data_dir,
                "--storage", tmp_path, "--name", name, *SMALL, "--eval-limit", "2"]
        return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, second = start("one"), start("two")
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    results = []
    for name in ("one", "two"):
        _, parents, children = sweep_runs(tmp_path / "mlflow.db", name)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted((r.data.params["method"], float(r.data.params["lr"])) for r in children) == \
            [("lora", 1e-2), ("lora", 2e-2), ("lora-one", 1e-2), ("lora-one", 2e-2)]
        _, _, rows = sweep_rows(f"sqlite:///{tmp_path / 'mlflow.db'}", "gsm8k", name)
        results.append({(r["method"], r["lr"]): (r["history"], r["val_loss"], r["gsm8k_flexible"],
                                                 r["gsm8k_strict"]) for r in rows})
    assert len(results[0]) == 4 and all(len(v[0]) == 3 for v in results[0].values())
    assert results[0] == results[1]


# Four trials of several seconds each, one at a time: a signal sent once the first has finished
# finds the sweep mid-way.
LONG = ["--methods", "lora", "--lrs", "1e-2,2e-2,3e-2,4e-2", "--preset", "smoke", "--steps", "48",
        "--eval-interval", "8", "--eval-limit", "0", "--max-concurrent", "1"]
FINISHED_TRIAL = "*/checkpoint_*/metrics.json"  # a trial's files, persisted by Ray as its checkpoint


def start_driver(storage, data_dir, name, env=None):
    """`harness run` of LONG in a session of its own (its pid is the session's id)."""
    args = ["run", *LONG, "--data-dir", data_dir, "--storage", storage, "--name", name]
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for(folder, pattern, driver, timeout=300):
    deadline = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.5)


def session_processes(session: int) -> list[str]:
    """The live processes (not zombies) of a session: what a driver started and left behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        state, _, _, sid = rest.split()[:4]
        if int(sid) == session and state != "Z":
            found.append(f"{stat.parent.name} {name.partition('(')[2]}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_the_sweep_cleanly(sig, tmp_path, data_dir):
    """Sent by pid mid-sweep: one line, exit 128 + the signal's number, the parent run KILLED, no
    process of the driver's Ray left, the lock released; after SIGINT, the resume runs every trial once."""
    driver = start_driver(tmp_path, data_dir, "sig")
    wait_for(tmp_path / "sig", FINISHED_TRIAL, driver)
    driver.send_signal(sig)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 128 + sig, err[-3000:]
    assert err.splitlines() == [f"harness: interrupted: resume with harness run --resume sig --storage {tmp_path}"]
    assert session_processes(driver.pid) == []
    assert not (tmp_path / "sig" / "driver.lock").exists()
    _, parents, _ = sweep_runs(tmp_path / "mlflow.db", "sig")
    assert [p.info.status for p in parents] == ["KILLED"]
    if sig != signal.SIGINT:
        return
    proc = run_cli("run", "--resume", "sig", "--storage", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(rows_of(tmp_path, "sig")) == [1e-2, 2e-2, 3e-2, 4e-2]
    _, parents, children = sweep_runs(tmp_path / "mlflow.db", "sig")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(float(r.data.params["lr"]) for r in children) == [1e-2, 2e-2, 3e-2, 4e-2]


def test_a_second_driver_of_a_running_sweep_is_refused(tmp_path, data_dir):
    """Two `harness run --name same` at once: one runs, the other exits 2 with one line naming the
    first; `--resume same` while it runs is refused the same way, creating nothing."""
    drivers = [start_driver(tmp_path, data_dir, "same") for _ in range(2)]
    deadline = time.monotonic() + 300
    while all(d.poll() is None for d in drivers) and time.monotonic() < deadline:
        time.sleep(0.5)
    loser = next(d for d in drivers if d.poll() is not None)
    winner = drivers[1 - drivers.index(loser)]
    _, err = loser.communicate()
    assert loser.returncode == 2 and winner.poll() is None, err[-3000:]
    assert len(err.splitlines()) == 1
    assert err.startswith(f"harness: error: sweep 'same' is running: its driver is pid {winner.pid} on host ")
    wait_for(tmp_path / "same", "sweep.json", winner)
    work, ray_tmp = tmp_path / "cwd", tmp_path / "raytmp"
    work.mkdir()
    proc = run_cli("run", "--resume", "same", "--storage", tmp_path, cwd=work, timeout=120,
                   env={"RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert f"is running: its driver is pid {winner.pid}" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(work.iterdir()) and not ray_tmp.exists()
    assert json.loads((tmp_path / "same" / "driver.lock").read_text())["pid"] == winner.pid
    proc = run_cli("report", "same", "--storage", tmp_path, timeout=120)   # nothing half-done is reported
    assert proc.returncode == 2 and proc.stderr.startswith("harness: error: sweep 'same' is still running")
    assert not (tmp_path / "same" / "report").exists()
    winner.send_signal(signal.SIGTERM)
    winner.communicate(timeout=120)
    assert winner.returncode == 143

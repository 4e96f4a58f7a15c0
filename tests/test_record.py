"""The sweep's own record of settled trials (harness/record.py): results.json and a resume rebuilt
from it when Tune's state is damaged; a full disk (a small tmpfs mounted here) stops the sweep
with one line and the sweep resumes once space is freed; a tracking server stopped around the
trials' completion fails no trial, and `harness sync` sends what waited."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import storage
from helpers import run_cli, sweep_runs
from services import answers, free_port, mlflow_server, wait_for

QUICK = ["--methods", "lora", "--preset", "smoke", "--steps", "4", "--eval-interval", "2", "--eval-limit", "0",
         "--cpus-per-trial", "1", "--max-concurrent", "1"]


def records(sweep: Path) -> dict:
    """lr -> the bytes of its record."""
    return {json.loads(p.read_text())["spec"]["lr"]: p.read_bytes() for p in (sweep / "trials").glob("*.json")}


def results(sweep: Path) -> dict:
    return {r["lr"]: r["status"] for r in json.loads((sweep / "results.json").read_text())}


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs, unmounted at the end whatever happened."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of the folder's file system."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: a partial write fills the last bytes
        try:
            while True:
                f.write(b"\0" * 2**20)
        except OSError:
            pass
    return filler


def test_atomic_write_on_a_full_disk_names_the_folder_and_size_and_leaves_nothing(small_disk):
    fill(small_disk)
    target = storage.join(str(small_disk), "sweep", "trials", "a.json")
    told = rf"no space left in {small_disk}/sweep/trials: 3.0 MiB needed, 0 bytes free"
    with pytest.raises(storage.DiskFull, match=told):
        storage.write_bytes(target, b"x" * 3 * 2**20)
    assert storage.listdir(storage.join(str(small_disk), "sweep", "trials")) == []  # no temporary file left


def test_results_and_resume_come_from_the_record_when_tunes_state_is_damaged(tmp_path, data_dir):
    sweep = tmp_path / "rec"
    proc = run_cli("run", *QUICK, "--lrs", "1e-2,2e-2", "--data-dir", data_dir, "--storage", tmp_path, "--name", "rec")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = records(sweep)
    assert sorted(before) == [1e-2, 2e-2] and results(sweep) == {1e-2: "finished", 2e-2: "finished"}
    # The damage: Tune's experiment state truncated (a full disk). The lr 2e-2 trial is
    # made unsettled by removing its record, results.json is gone.
    for state in sweep.glob("experiment_state-*.json"):
        state.write_bytes(state.read_bytes()[:200])
    next(p for p in (sweep / "trials").glob("*.json") if json.loads(p.read_text())["spec"]["lr"] == 2e-2).unlink()
    (sweep / "results.json").unlink()
    proc = run_cli("run", "--resume", "rec", "--storage", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Tune's state of sweep rec is damaged" in proc.stderr and "Traceback" not in proc.stderr
    after = records(sweep)
    assert after[1e-2] == before[1e-2]  # the recorded trial did not run again ...
    assert results(sweep) == {1e-2: "finished", 2e-2: "finished"}  # ... the other did, once
    _, parents, children = sweep_runs(tmp_path / "mlflow.db", "rec")
    assert len(parents) == 1 and sorted(float(c.data.params["lr"]) for c in children) == [1e-2, 2e-2]
    assert {c.data.tags["status"] for c in children} == {"finished"}
    # Tune's state gone altogether: the resume runs nothing and rebuilds results.json.
    for name in ["tuner.pkl", *(p.name for p in sweep.glob("experiment_state-*.json"))]:
        (sweep / name).unlink()
    (sweep / "results.json").unlink()
    proc = run_cli("run", "--resume", "rec", "--storage", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records(sweep) == after and results(sweep) == {1e-2: "finished", 2e-2: "finished"}
    assert len(sweep_runs(tmp_path / "mlflow.db", "rec")[2]) == 2


def test_disk_full_is_one_line_and_the_sweep_resumes_once_space_is_freed(small_disk, data_dir):
    sweep = small_disk / "full"
    args = ["run", *QUICK, "--lrs", "1e-2,2e-2,3e-2", "--data-dir", data_dir, "--storage", small_disk, "--name", "full"]
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: list((sweep / "trials").glob("*.json")), "the first record", 300, driver)
        filler = fill(small_disk)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out[-2000:] + err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"harness: no space left in {sweep}"), err[-3000:]
    assert "needed" in lines[0] and "harness run --resume full" in lines[0]
    print(lines[0])
    first = records(sweep)
    assert 1 <= len(first) < 3
    filler.unlink()
    proc = run_cli("run", "--resume", "full", "--storage", small_disk)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(sweep) == {1e-2: "finished", 2e-2: "finished", 3e-2: "finished"}
    assert all(records(sweep)[lr] == rec for lr, rec in first.items())  # recorded trials did not run again
    _, _, children = sweep_runs(small_disk / "mlflow.db", "full")
    assert sorted(float(c.data.params["lr"]) for c in children) == [1e-2, 2e-2, 3e-2]


def test_a_tracking_server_down_at_trial_end_fails_nothing_and_sync_sends_the_runs(tmp_path, data_dir):
    port, backend = free_port(), f"sqlite:///{tmp_path / 'store.db'}"
    url = f"http://127.0.0.1:{port}"

    def server():
        proc, _ = mlflow_server(backend, str(tmp_path / "artifacts"), tmp_path / "mlflow.log", port=port)
        return proc

    args = ["run", *QUICK, "--lrs", "1e-2,2e-2", "--data-dir", data_dir, "--storage", tmp_path, "--name", "out",
            "--tracking-uri", url]
    with server() as proc:
        wait_for(lambda: answers(f"{url}/health"), "mlflow server", 180, proc)
        driver = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True,
                                  env={**os.environ, "HARNESS_TRACKING_RETRY_SECONDS": "3"})
        mlf = MlflowClient(url)
        wait_for(lambda: mlf.search_runs(["1"], "tags.`harness.kind` = 'trial'"), "the first trial's run", 300, driver)
    # the server is stopped while the trials train, score and end
    try:
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-2000:] + err[-3000:]
    assert results(tmp_path / "out") == {1e-2: "finished", 2e-2: "finished"}  # the trials' own status
    assert err.count("not answering") == 1 and "harness sync out" in err and "Traceback" not in out + err
    assert len(list((tmp_path / "out" / "pending").glob("*.json"))) == 3  # two trials and the parent's end
    early = run_cli("report", "out", "--storage", tmp_path, "--tracking-uri", url)
    assert early.returncode == 2 and "harness sync out" in early.stderr, early.stderr[-2000:]
    with server() as proc:
        wait_for(lambda: answers(f"{url}/health"), "mlflow server", 180, proc)
        sync = run_cli("sync", "out", "--storage", tmp_path, "--tracking-uri", url)
        assert sync.returncode == 0 and "sent 3 queued records" in sync.stdout, sync.stdout + sync.stderr
        runs = mlf.search_runs(["1"], "tags.`harness.sweep` = 'out'")
        trials = [r for r in runs if r.data.tags["harness.kind"] == "trial"]
        assert sorted(float(r.data.params["lr"]) for r in trials) == [1e-2, 2e-2]
        for run in trials:
            assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
            assert sorted(m.step for m in mlf.get_metric_history(run.info.run_id, "val_loss")) == [0, 2, 4]
            assert "adapter" in [a.path for a in mlf.list_artifacts(run.info.run_id)]
        parent = next(r for r in runs if r.data.tags["harness.kind"] == "sweep")
        assert parent.info.status == "FINISHED"
        assert not list((tmp_path / "out" / "pending").glob("*.json"))
        again = run_cli("sync", "out", "--storage", tmp_path, "--tracking-uri", url)
        assert again.returncode == 0 and "nothing waits" in again.stdout
        report = run_cli("report", "out", "--storage", tmp_path, "--tracking-uri", url)
        assert report.returncode == 0, report.stderr[-2000:]

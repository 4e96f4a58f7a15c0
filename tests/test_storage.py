"""harness/storage.py on a local folder and on an S3 bucket (moto's server): atomic writes, read,
exists, list; a sweep's lock (one owner among racing takers, stale owners taken over, heartbeat);
a bad URI, a missing bucket or an unreachable endpoint is one line and exit code 2 before anything
is created; credentials stay in the environment."""

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from harness import storage
from harness.config import UsageError
from helpers import run_cli
from services import free_port, s3_server

BUCKET = "harness-storage"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env


@pytest.fixture(params=["folder", "bucket"])
def root(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "sweeps")
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/{tmp_path.name}"


def test_write_read_exists_and_list(root):
    target = storage.join(root, "sweep", "results.json")
    assert not storage.exists(target) and storage.listdir(root) == []
    storage.write_text(target, '{"a": 1}')
    storage.write_bytes(storage.join(root, "sweep", "adapter", "w.bin"), b"\x00\x01")
    assert storage.read_text(target) == '{"a": 1}' and storage.exists(target)
    assert storage.listdir(storage.join(root, "sweep")) == ["adapter", "results.json"]  # no temporary left
    assert storage.read_bytes(storage.join(root, "sweep", "adapter", "w.bin")) == b"\x00\x01"


def test_a_failed_write_keeps_the_old_file(root):
    target = storage.join(root, "sweep.json")
    storage.write_text(target, "old")
    with pytest.raises(TypeError):
        storage.write_bytes(target, object())  # fails after the temporary file was opened
    assert storage.read_text(target) == "old" and storage.listdir(root) == ["sweep.json"]


def test_readers_see_a_whole_version_only(root):
    """A reader racing a writer that alternates two 1 MB versions never sees a mix, a
    truncated file or no file."""
    target = storage.join(root, "results.json")
    versions = [b"a" * 2**20, b"b" * 2**20]
    storage.write_bytes(target, versions[0])
    seen, done = [], threading.Event()

    def read():
        while not done.is_set():
            seen.append(storage.read_bytes(target))
    reader = threading.Thread(target=read)
    reader.start()
    for i in range(12):
        storage.write_bytes(target, versions[i % 2])
    done.set()
    reader.join()
    assert seen and all(data in versions for data in seen)


def test_folders_are_made_absolute_and_uris_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.location("") == str(tmp_path / "runs")
    assert storage.location(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert storage.location(f"s3://{BUCKET}/sweeps/") == f"s3://{BUCKET}/sweeps"


@pytest.mark.parametrize("uri, message", [("foo://bucket/x", "does not resolve"), ("s3://", "names no bucket"),
                                          ("s3:/bucket", "neither a folder nor a URI")])
def test_a_bad_uri_is_one_line(uri, message):
    with pytest.raises(UsageError, match=message) as err:
        storage.location(uri)
    assert "\n" not in str(err.value) and len(str(err.value)) < 250


def test_a_missing_bucket_is_named(s3):
    with pytest.raises(UsageError, match="bucket 'no-such-bucket' does not exist: create it"):
        storage.check("s3://no-such-bucket/sweeps")
    storage.check(f"s3://{BUCKET}/sweeps")  # the bucket exists: no error


def test_unreachable_endpoint_fails_before_anything_starts(tmp_path, s3):
    """`harness run` against an endpoint where nothing listens: one line, exit 2, no secret shown,
    nothing created (no SQLite store, no Ray: it fails in seconds)."""
    env = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = run_cli("run", "--methods", "lora", "--preset", "smoke", "--storage", f"s3://{BUCKET}/sweeps",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"harness: error: --storage s3://{BUCKET}/sweeps is unreachable (")
    assert proc.stderr.count("\n") == 1 and "AWS_ENDPOINT_URL" in proc.stderr
    assert s3["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bucket_needs_a_tracking_server(tmp_path, s3):
    proc = run_cli("run", "--methods", "lora", "--preset", "smoke", "--storage", f"s3://{BUCKET}/sweeps",
                   "--dry-run", env={"MLFLOW_TRACKING_URI": ""}, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "cannot hold the SQLite store: pass --tracking-uri" in proc.stderr
    assert storage.listdir(f"s3://{BUCKET}/sweeps") == [] and list(tmp_path.iterdir()) == []


def test_dry_run_on_a_bucket_shows_no_credentials(tmp_path, s3, data_dir):
    proc = run_cli("run", "--methods", "lora", "--preset", "smoke", "--data-dir", data_dir, "--storage",
                   f"s3://{BUCKET}/sweeps", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--dry-run",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"storage s3://{BUCKET}/sweeps/" in proc.stdout
    assert not any(secret in proc.stdout + proc.stderr for secret in (s3["AWS_SECRET_ACCESS_KEY"], s3["AWS_ACCESS_KEY_ID"]))
    assert storage.listdir(f"s3://{BUCKET}/sweeps") == []


def lock_record(**fields) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(), "token": "old",
                       **fields})


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def race(where: str, takers: int = 8) -> tuple[list, list]:
    """(locks taken, records of the owner the others were refused by) of takers starting at once."""
    won, refused, start = [], [], threading.Barrier(takers)

    def take():
        start.wait()
        try:
            won.append(storage.Lock(where).acquire())
        except storage.Held as err:
            refused.append(err.holder)
    threads = [threading.Thread(target=take) for _ in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, refused


def test_one_of_many_racing_takers_gets_the_lock(root):
    where = storage.join(root, "sweep", "driver.lock")
    won, refused = race(where)
    assert len(won) == 1 and len(refused) == 7
    owner = storage.read_lock(where)
    assert owner["token"] == won[0].token and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    won[0].release()
    assert storage.read_lock(where) is None


def test_a_dead_owners_lock_is_taken_over_once(root):
    where = storage.join(root, "sweep", "driver.lock")
    storage.write_text(where, lock_record(pid=dead_pid()))
    won, refused = race(where)
    assert len(won) == 1 and len(refused) == 7 and won[0].replaced["token"] == "old"
    assert storage.read_lock(where)["token"] == won[0].token
    won[0].release()


def test_a_lock_replaced_between_the_look_and_the_read_is_read_anew(root, monkeypatch):
    where = storage.join(root, "sweep", "driver.lock")
    storage.write_text(where, lock_record(token="new"))
    read, calls = storage.read_bytes, []

    def replaced_once(location):
        calls.append(location)
        if len(calls) == 1:
            raise FileNotFoundError(location)  # what a reader sees while a taker unlinks and recreates it
        return read(location)
    monkeypatch.setattr(storage, "read_bytes", replaced_once)
    assert storage.read_lock(where)["token"] == "new" and len(calls) == 2


def test_a_live_owner_keeps_the_lock_until_it_ends(root):
    where = storage.join(root, "driver.lock")
    owner = subprocess.Popen(["sleep", "60"])
    storage.write_text(where, lock_record(pid=owner.pid))
    with pytest.raises(storage.Held) as err:
        storage.Lock(where).acquire()
    assert err.value.holder["pid"] == owner.pid and storage.lock_holder(where)["pid"] == owner.pid
    owner.kill()
    owner.wait()
    assert storage.lock_holder(where) is None
    lock = storage.Lock(where).acquire()
    assert lock.replaced["pid"] == owner.pid
    lock.release()


def test_another_hosts_lock_is_stale_once_its_heartbeat_is(root):
    where = storage.join(root, "driver.lock")
    storage.write_text(where, lock_record(host="elsewhere", pid=1, heartbeat=time.time() - 30))
    with pytest.raises(storage.Held):
        storage.Lock(where).acquire()
    storage.write_text(where, lock_record(host="elsewhere", pid=1, heartbeat=time.time() - storage.STALE_SECONDS - 1))
    lock = storage.Lock(where).acquire()
    assert lock.replaced["host"] == "elsewhere"
    lock.release()


def test_the_heartbeat_is_refreshed_and_a_lock_taken_over_is_left_to_its_owner(root, monkeypatch):
    monkeypatch.setattr(storage, "HEARTBEAT_SECONDS", 0.2)
    where = storage.join(root, "driver.lock")
    lock = storage.Lock(where).acquire()
    first = storage.read_lock(where)["heartbeat"]
    deadline = time.monotonic() + 20
    while storage.read_lock(where)["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert storage.read_lock(where)["heartbeat"] > first
    while lock.lost is None and time.monotonic() < deadline:  # taken over, as after a stalled heartbeat
        storage.write_text(where, lock_record(host="elsewhere", token="theirs"))  # again if a beat overwrote it
        time.sleep(0.3)
    lock.release()
    assert lock.lost["token"] == "theirs" and storage.read_lock(where)["token"] == "theirs"

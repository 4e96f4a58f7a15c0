"""Servers for the storage and cluster tests: an S3 server (moto), PostgreSQL, an MLflow tracking
server and Ray nodes. Each is a process of its own session on 127.0.0.1, started here and stopped
by its process id (its group) when its `with` block ends, also when a test fails."""

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(ready, what: str, timeout: float = 120, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def answers(url: str) -> bool:
    urllib.request.urlopen(url, timeout=2)
    return True


def stop(proc, grace: float = 5):
    """SIGTERM to the process group we started (the process and its children), SIGKILL after `grace`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


@contextmanager
def started(argv, log: Path, env=None, **popen):
    """A process in its own session, output to `log`; stopped at the end of the block."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(a) for a in argv], env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop(proc)


def s3_env(port: int) -> dict:
    """The standard variables that point every AWS client at the local S3 server."""
    return {"AWS_ACCESS_KEY_ID": "harness-test", "AWS_SECRET_ACCESS_KEY": "sk-" + secrets.token_hex(16),
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


@contextmanager
def s3_server(folder: Path, bucket: str):
    """moto's S3 server with `bucket` created; yields the AWS_* variables to use it."""
    port = free_port()
    env = s3_env(port)
    with started([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
                 folder / "moto.log") as proc:
        wait_for(lambda: answers(env["AWS_ENDPOINT_URL"]), "moto server", 60, proc)
        import boto3
        session = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        yield env


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL not found under /usr/lib/postgresql: .ci/install installs Debian's postgresql")
    return Path(found[-1]).parent


@contextmanager
def postgres():
    """A PostgreSQL server on 127.0.0.1 in a new temporary cluster, run as the postgres user when we
    are root (it refuses root); yields the URI of its `mlflow` database (password login)."""
    import psycopg2
    pg, port, password = _postgres_bin(), free_port(), secrets.token_hex(12)
    folder = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not under pytest's root-only tmp
    user = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    try:
        if user:
            shutil.chown(folder, "postgres", "postgres")
        (folder / "pw").write_text(password)
        if user:
            shutil.chown(folder / "pw", "postgres", "postgres")
        subprocess.run([pg / "initdb", "-D", folder / "data", "-U", "mlflow", "--pwfile", folder / "pw",
                        "--auth", "scram-sha-256", "-E", "UTF8"], check=True, capture_output=True, **user)
        argv = [pg / "postgres", "-D", folder / "data", "-h", "127.0.0.1", "-p", port, "-k", folder]
        with started(argv, folder / "server.log", **user) as proc:
            admin = dict(host="127.0.0.1", port=port, user="mlflow", password=password, dbname="postgres")
            wait_for(lambda: psycopg2.connect(**admin).close() or True, "postgres", 60, proc)
            conn = psycopg2.connect(**admin)
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE mlflow")
            conn.close()
            yield f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def mlflow_server(backend: str, artifacts: str, log: Path, env=None, port: int = 0):
    """`mlflow server` on `backend` (PostgreSQL or SQLite; passed in the environment: a password in
    argv shows in every user's process list), proxying artifacts to `artifacts`, on `port` (a free
    one by default; the same again to restart it); its URL."""
    port = port or free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
            "--serve-artifacts", "--artifacts-destination", artifacts]
    env = {**(env or {}), "MLFLOW_BACKEND_STORE_URI": backend}
    return started(argv, log, env=env), f"http://127.0.0.1:{port}"


def ray_env(token_file: Path, s3: dict, pythonpath: str) -> dict:
    """What every Ray node and the driver share: token authentication with our own token file,
    trials at normal priority, the worktree's code, and the bucket's variables."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_worker_niceness": "0",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": pythonpath, **s3}


def ray_node(folder: Path, log: Path, env: dict, head_port: int, head: bool):
    """`ray start --block` of a node with 1 CPU and 1 logical GPU (scheduled like a real one, while
    torch sees no CUDA device), its session under `folder` (a short path: Ray's socket paths must
    fit in 107 bytes). Every port is chosen here: two nodes share this host."""
    ports = [free_port() for _ in range(6)]
    workers = free_port()
    argv = [BIN / "ray", "start", "--block", "--disable-usage-stats", "--num-cpus", 1, "--num-gpus", 1,
            "--object-store-memory", 100 * 2**20, "--temp-dir", folder,
            "--node-manager-port", ports[0], "--object-manager-port", ports[1],
            "--dashboard-agent-listen-port", ports[2], "--dashboard-agent-grpc-port", ports[3],
            "--runtime-env-agent-port", ports[4], "--metrics-export-port", ports[5],
            "--min-worker-port", workers, "--max-worker-port", workers + 40]
    argv += ["--head", "--port", head_port, "--include-dashboard", "false", "--dashboard-port", free_port()] \
        if head else ["--address", f"127.0.0.1:{head_port}"]
    folder.mkdir(parents=True, exist_ok=True)
    return started(argv, log, env=env)


def raylet_of(proc) -> tuple[int, str]:
    """(process id, Ray node id) of the raylet that a `ray start --block` process started."""
    import psutil
    for child in psutil.Process(proc.pid).children(recursive=True):
        if child.name() == "raylet":
            node = next(a for a in child.cmdline() if a.startswith("--node_id="))
            return child.pid, node.split("=", 1)[1]
    raise RuntimeError("no raylet under this ray start")

"""Sweep files on a local folder or an object store, through pyarrow.fs.

A location is a string: an absolute folder path, or a URI that pyarrow resolves (s3://bucket/prefix,
gs://bucket/prefix, ...). `join` extends either kind. Object-store credentials and endpoint come
only from the standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION), which pyarrow reads itself: no secret passes through the
harness's flags, output or files.

A sweep is owned by one driver at a time through a lock file in its location (`Lock`)."""

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from harness.config import Halt, UsageError

REACH_SECONDS = 30  # an unreachable endpoint fails within this, before anything starts
# how a full disk reads in errors that carry no errno: pyarrow's, SQLite's, ours from a worker
NO_SPACE = ("No space left on device", "database or disk is full", "[Errno 28]", "[errno 28]", "no space left in ")
SPARE = 2**20  # bytes a write leaves free beyond its own: the records and Tune's state follow it


class DiskFull(Halt):
    """A write that found no space; the message names the folder, what it needed and what is free."""


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def says_no_space(text: str) -> bool:
    return any(s in text for s in NO_SPACE)


def no_space(err: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is a full disk."""
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or says_no_space(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(location: str) -> int | None:
    """Free space of a folder's file system (None for a bucket)."""
    if is_uri(location):
        return None
    existing = next(p for p in (Path(location), *Path(location).parents) if p.exists())
    return shutil.disk_usage(existing).free


def disk_full(location: str, needed: int | None) -> DiskFull:
    free = free_bytes(location)
    need = f"{size_text(needed)} needed, " if needed else ""
    have = f"{size_text(free)} free" if free is not None else "the store is full"
    return DiskFull(f"no space left in {location}: {need}{have}")


def check_space(location: str, needed: int):
    """DiskFull now rather than a write that fails half-way (a folder; a bucket has no free size)."""
    free = free_bytes(location)
    if free is not None and free < needed + SPARE:
        raise disk_full(location, needed)


def is_uri(location: str) -> bool:
    return "://" in location


def location(text: str) -> str:
    """A --storage value as a location: a folder made absolute (default ./runs), or a URI of a
    bucket that resolves (file:// URIs become folders)."""
    text = text or "runs"
    if ":/" in text and not is_uri(text):  # s3:/bucket would be a folder named s3:
        raise UsageError(f"--storage {text[:100]} is neither a folder nor a URI: write scheme://bucket/prefix")
    if not is_uri(text):
        return str(Path(text).expanduser().resolve())
    fs, path = resolve(text)
    return path if isinstance(fs, pafs.LocalFileSystem) else text.rstrip("/")


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def _from_uri(uri: str):
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as err:  # ArrowInvalid for an unknown scheme, a URI without a bucket, ...
        reason = str(err).splitlines()[0][:80]
        raise UsageError(f"--storage {uri[:100]} does not resolve ({reason}): pass a folder or a URI "
                         f"such as s3://bucket/prefix") from None
    if not path.strip("/"):
        raise UsageError(f"--storage {uri[:100]} names no bucket: pass s3://bucket/prefix")
    return fs, path.rstrip("/")


def resolve(location: str) -> tuple:
    """(pyarrow filesystem, path on it) of a location."""
    return _from_uri(location) if is_uri(location) else (pafs.LocalFileSystem(), location)


def check(location: str):
    """A bucket that does not exist or an endpoint that does not answer fails here, in seconds,
    with one line (pyarrow retries for minutes, and some stores never time out)."""
    if not is_uri(location):
        return
    fs, path = resolve(location)
    bucket = path.split("/")[0]
    found = {}

    def probe():
        try:
            found["type"] = fs.get_file_info(bucket).type
        except Exception as err:
            found["error"] = str(err).replace("\n", " ")

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(REACH_SECONDS)
    if "type" not in found:
        reason = found.get("error", f"no answer in {REACH_SECONDS} s")
        reason = reason.split("AWS Error ")[-1][:100]
        raise UsageError(f"--storage {location[:100]} is unreachable ({reason}): check AWS_ENDPOINT_URL, "
                         f"the credentials in the environment and the network")
    if found["type"] == pafs.FileType.NotFound:
        raise UsageError(f"--storage {location[:100]}: bucket {bucket!r} does not exist: create it first")


def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    """The whole file in one read (a stream would read a bucket object in ranges, which may come
    from two versions when a writer replaces it meanwhile)."""
    fs, path = resolve(location)
    with fs.open_input_file(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


@contextmanager
def atomic_writer(location: str, size: int | None = None):
    """A file to write, which appears at `location` only once complete: it is written under a
    temporary name beside it, then moved into place, so a reader sees the old file or the whole
    new one (a rename on disk, a copy on buckets). No space for it is DiskFull, naming `size`."""
    fs, path = resolve(location)
    parent, _, name = path.rpartition("/")
    temp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(temp) as f:
            yield f
        fs.move(temp, path)
    except BaseException as err:
        if fs.get_file_info(temp).type != pafs.FileType.NotFound:
            fs.delete_file(temp)
        if no_space(err):
            raise disk_full(location.rpartition("/")[0], size) from None
        raise


def write_bytes(location: str, data: bytes):
    with atomic_writer(location, len(data)) as f:
        f.write(data)


def write_text(location: str, text: str):
    write_bytes(location, text.encode())


def delete(location: str):
    fs, path = resolve(location)
    fs.delete_file(path)


def listdir(location: str) -> list[str]:
    """Names of the entries in a folder (none if it does not exist)."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def upload(folder: Path, location: str):
    """Copy a local folder's files to a location (replacing files of the same name)."""
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextmanager
def local_folder(location: str):
    """A local folder for writers that need one (reports): the location itself when it is a
    folder, else a temporary folder uploaded to it at the end."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    temp = Path(tempfile.mkdtemp(prefix="harness-"))
    try:
        yield temp
        upload(temp, location)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


HEARTBEAT_SECONDS = 15  # how often a driver rewrites its lock's heartbeat
STALE_SECONDS = 120     # another host's lock without a heartbeat for this long is stale (clocks must agree)
SETTLE_SECONDS = 2      # bucket: how long a writer waits before reading back whether its lock stands


class Held(Exception):
    """The lock belongs to a live owner; `holder` is its record (host, pid, heartbeat)."""

    def __init__(self, holder: dict):
        super().__init__(f"pid {holder.get('pid')} on host {holder.get('host')}")
        self.holder = holder


def read_lock(location: str) -> dict | None:
    """A lock's record, or None if there is none. A record being written (empty) or damaged counts
    as a fresh one of an unknown owner, dated by the file's time."""
    fs, path = resolve(location)
    for attempt in range(3):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            data = read_bytes(location)
            break
        except OSError:
            if not exists(location):
                return None  # released meanwhile
            if attempt == 2:
                raise
            # else replaced between our two looks (a take-over): read the new one
    try:
        return json.loads(data)
    except ValueError:
        return {"host": "unknown", "pid": 0, "heartbeat": info.mtime.timestamp(), "token": ""}


def alive(holder: dict) -> bool:
    """Whether a lock's owner may still run: on this host, its process exists; on another, its
    heartbeat is recent."""
    if holder.get("host") == socket.gethostname() and holder.get("pid"):
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True
    return time.time() - holder.get("heartbeat", 0) < STALE_SECONDS


def lock_holder(location: str) -> dict | None:
    """The live owner of a lock, if any."""
    holder = read_lock(location)
    return holder if holder and alive(holder) else None


class Lock:
    """Exclusive ownership of a sweep: a file holding its driver's host, pid and heartbeat,
    rewritten every HEARTBEAT_SECONDS by a thread until `release`.

    On a folder it is created with O_CREAT|O_EXCL, which is atomic; a stale lock is replaced by
    one rename under an flock of a guard file beside it, so two takers cannot both replace it, and
    no taker finds the file missing in between and creates its own. A bucket has no write-if-absent: the lock is written, and
    read back SETTLE_SECONDS later; the writer whose record stands owns it. Two drivers whose read
    (finding no lock) and write are more than SETTLE_SECONDS apart could both win: a race of two
    starts within that window, in practice only a stalled store."""

    def __init__(self, location: str):
        self.location = location
        self.token = uuid.uuid4().hex
        self.replaced = None  # the stale owner's record, when taken over
        self.lost = None      # the record of whoever took it over from us, if anyone did
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    def record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
                           "token": self.token})

    def acquire(self) -> "Lock":
        """Take the lock, or raise Held with its live owner's record."""
        holder = read_lock(self.location)
        if holder and alive(holder):
            raise Held(holder)
        self.replaced = holder
        if is_uri(self.location):
            self._take_bucket()
        else:
            self._take_folder(holder)
        self._beat.start()
        return self

    def _take_folder(self, stale: dict | None):
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        if stale is not None:
            with open(f"{path}.guard", "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                current = read_lock(self.location)
                if current == stale:
                    # one rename over the stale record: a lock file stays there throughout, so no
                    # other taker finds none and creates its own meanwhile
                    write_text(self.location, self.record())
                    return
                if current is not None:  # taken over by another meanwhile
                    raise Held(current)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise Held(read_lock(self.location) or {}) from None
        with os.fdopen(fd, "w") as f:
            f.write(self.record())

    def _take_bucket(self):
        write_text(self.location, self.record())
        time.sleep(SETTLE_SECONDS)
        standing = read_lock(self.location)
        if not standing or standing.get("token") != self.token:
            raise Held(standing or {})

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                current = read_lock(self.location)
                if not current or current.get("token") != self.token:
                    self.lost = current or {}
                    return
                write_text(self.location, self.record())
            except (OSError, DiskFull):  # a store that does not answer, or is full, for a while: next beat
                continue

    def release(self):
        """Stop the heartbeat and remove the lock, unless someone else holds it now."""
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()
        current = read_lock(self.location)
        if current and current.get("token") == self.token:
            fs, path = resolve(self.location)
            fs.delete_file(path)

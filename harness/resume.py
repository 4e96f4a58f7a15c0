"""Resuming a sweep. Its resolved config is saved in <sweep>/sweep.json, so `--resume NAME` needs
no other flag. Tune restores the sweep as it was planned, so a flag that would change what it runs
is refused rather than silently ignored; repeating a saved value is fine (the original command
line with --resume added works)."""

import json
import os
from dataclasses import asdict
from pathlib import Path

from harness import storage, tracking
from harness.config import TrialConfig, UsageError, check_name, quote

CONFIG_FILE = "sweep.json"
# May differ on resume: where the sweep runs, not what it runs (and the template's method, which
# follows --methods, compared itself). The tracking store may not: its runs hold the sweep so far.
WHERE = ("storage", "address", "scale_wait", "resume", "method")


def save(sc):
    """The tracking URI is saved without its password (give it again on resume)."""
    saved = {**asdict(sc), "tracking_uri": tracking.redact(sc.tracking_uri)}
    storage.write_text(storage.join(sc.path, CONFIG_FILE), json.dumps(saved, indent=2))


def load(where: str, name: str):
    """The saved config of sweep `name` under the storage `where` (a folder or bucket URI), set to resume."""
    from harness.sweep import SweepConfig
    root = storage.location(where)
    storage.check(root)
    path = storage.join(root, check_name("--resume", name), CONFIG_FILE)
    if not storage.exists(path):
        raise UsageError(f"no sweep named {quote(name)} under {root}: check --resume and --storage")
    saved = json.loads(storage.read_text(path))
    return SweepConfig(**{**saved, "trial": TrialConfig(**saved["trial"]), "resume": True})


def merge(saved, given, default):
    """The saved config, checked against the config the command line gives (`given`; `default`
    is the one an empty command line gives), with where it runs taken from the command line."""
    ours, theirs, blank = _flat(saved), _flat(given), _flat(default)
    for key, value in theirs.items():
        if key not in WHERE and value != blank[key] and not _same(key, value, ours[key]):
            flag = f"--{key.replace('_', '-')}"
            raise UsageError(f"{flag} {_shown(value)} differs from sweep {saved.name!r}, saved with "
                             f"{_shown(ours[key])}: a resumed sweep keeps its settings: leave {flag} out, "
                             f"or start a new sweep with --name")
    saved.storage, saved.address = given.storage or saved.storage, given.address or saved.address
    saved.scale_wait = given.scale_wait or saved.scale_wait
    if given.tracking_uri or "***" in saved.tracking_uri:  # the password was not saved: give it again
        saved.tracking_uri = given.tracking_uri
        if not (saved.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
            raise UsageError(f"sweep {saved.name!r} records to a tracking server with a password, which is not "
                             f"saved: give --tracking-uri (or MLFLOW_TRACKING_URI) again")
    return saved


def _flat(sc) -> dict:
    return {**asdict(sc.trial), **{k: v for k, v in asdict(sc).items() if k != "trial"}}


def _same(key: str, given, saved) -> bool:
    if key in ("data_dir", "spaces", "tasks_dir"):
        return str(Path(given).expanduser().resolve()) == saved
    if key == "tracking_uri":  # saved without its password
        return tracking.redact(given) == saved
    return given == saved


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)

"""The harness's own record of a sweep's settled trials: one small JSON per trial under
<sweep>/trials/, written atomically by the driver as the trial settles, before anything goes to
MLflow. results.json, a resume after Tune's state was damaged, and the MLflow writes queued while
the tracking store was down (`harness sync`) are rebuilt from it alone."""

import hashlib
import json

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from harness import storage
from harness.config import trial_spec

FOLDER = "trials"
DONE = ("finished", "diverged", "stopped")  # settled by the trial itself: never run again
# lr_now: the scheduled learning rate at that step (the trial's lr is a param).
STEP_METRICS = ("train_loss", "val_loss", "lr_now", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb", "alignment")
PLACEMENT = ("ray.node_id", "host", "cuda_visible_devices")  # reported by each trial, tags of its run
ROW_METRICS = ("val_loss", "val_loss_init", "gsm8k_strict", "gsm8k_flexible", "gsm8k_n", "step")
TUNE_KEYS = {*AUTO_RESULT_KEYS, "done", "trial_id"}  # Tune's own, which a replayed report must not carry


def key(spec: dict) -> str:
    """A trial's file name, from its (method, lr, seed, hyperparameters) alone."""
    text = json.dumps({"method": spec["method"], "lr": float(spec["lr"]), "seed": int(spec["seed"]),
                       "hparams": spec["hparams"]}, sort_keys=True)
    return f"{spec['method']}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def _path(where: str, name: str) -> str:
    return storage.join(where, FOLDER, f"{name}.json")


def save(where: str, rec: dict):
    storage.write_text(_path(where, rec["key"]), json.dumps(rec))


def find(where: str, name: str) -> dict | None:
    path = _path(where, name)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def records(where: str) -> list[dict]:
    """Every record of the sweep at `where` ('.*.tmp' files are writes a crash interrupted)."""
    folder = storage.join(where, FOLDER)
    return [json.loads(storage.read_text(storage.join(folder, name))) for name in storage.listdir(folder)
            if name.endswith(".json") and not name.startswith(".")]


def done_keys(where: str) -> set[str]:
    return {rec["key"] for rec in records(where) if rec["status"] in DONE}


def row(rec: dict) -> dict:
    """The trial's row of results.json."""
    metrics = rec["metrics"]
    out = {**rec["spec"], "status": rec["status"], **{k: metrics.get(k) for k in ROW_METRICS}}
    out.update(rec.get("refine") or {})  # why the searcher added the trial
    if rec.get("error"):
        out["error"] = rec["error"].strip().splitlines()[-1][:300]
    return out


def rows(where: str) -> list[dict]:
    return sorted((row(rec) for rec in records(where)), key=lambda r: (r["method"], r["lr"], r["seed"]))


def error_text(trial) -> str:
    """The end of the trial's error file (its last line is the exception)."""
    path = trial.error_file
    try:
        with open(path) as f:
            return f.read().strip()[-4000:]
    except (OSError, TypeError):  # no file (yet), or no path
        return "unknown error"


class Recorder(Callback):
    """Writes each trial's record when it settles (first among the callbacks, so before the
    tracker), with its step metrics, placement and files. A full disk stops the sweep (at the end
    of Tune's step, where an exception leaves the trial unsettled for the resume) and records
    nothing of the trial it hit."""

    where = ""  # of a recorder restored by Tune.restore: set by the driver that resumes

    def __init__(self, where: str):
        self.where = where
        self.history, self.placed, self.files, self.halted = {}, {}, {}, None

    def __getstate__(self):
        return {"history": {}, "placed": {}, "files": {}, "halted": None}  # the location may move

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.placed[trial.trial_id] = {k: str(result[k]) for k in PLACEMENT if k in result}
        if result.get("final"):
            return
        points = self.history.setdefault(trial.trial_id, {})
        for name in STEP_METRICS:
            if isinstance(result.get(name), (int, float)):
                points.setdefault(name, []).append([int(result["step"]), float(result[name])])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        path = checkpoint.path
        self.files[trial.trial_id] = f"{self.where.split('://')[0]}://{path}" if storage.is_uri(self.where) else path

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.last_result.get("recorded"):  # skipped by the trainable: its record stands
            return
        status = trial.last_result.get("status", "finished")
        self._save(trial, "stopped" if status == "running" else status, "")  # early-stopped by the scheduler

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_text(trial)
        if not self._halt_on_full_disk(error):
            self._save(trial, "failed", error)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.history.pop(trial.trial_id, None)  # the retry starts again from step 0
        self._halt_on_full_disk(error_text(trial))  # a retry would meet the same full disk

    def on_step_end(self, iteration, trials, **info):
        if self.halted:
            raise self.halted

    def _halt_on_full_disk(self, error: str) -> bool:
        if not storage.says_no_space(error):
            return False
        last = error.splitlines()[-1]
        if "no space left in" in last:  # a worker's check_space: the sizes are in it
            self.halted = storage.DiskFull(last[last.find("no space left in"):])
        else:
            self.halted = storage.disk_full(self.where, None)
        return True

    def _save(self, trial, status: str, error: str):
        rec = dict(key=key(trial_spec(trial.config)), trial_id=trial.trial_id, spec=trial_spec(trial.config),
                   status=status, error=error, attempts=trial.num_failures + (status != "failed"),
                   metrics={k: v for k, v in trial.last_result.items()
                            if k not in TUNE_KEYS and isinstance(v, (int, float))},
                   history=self.history.pop(trial.trial_id, {}), placement=self.placed.pop(trial.trial_id, {}),
                   files=self.files.pop(trial.trial_id, None), refine=trial.config.get("refine"))
        try:
            save(self.where, rec)
        except storage.DiskFull as err:
            self.halted = err

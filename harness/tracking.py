"""MLflow tracking: one experiment per task, a parent run per sweep, a child run per trial, and a
summary run per seed group (method, lr, hyperparameters) with the mean, spread and count over seeds.

Everything is written from the driver (a Ray Tune callback), because SQLite wants one writer.
Runs are found again by tags (harness.sweep, harness.trial_id, harness.group), so a resumed sweep
reuses its parent and summary runs and never records a trial twice."""

import fcntl
import hashlib
import json
import logging
import math
import os
import statistics
import platform
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path

from ray.tune import Callback

from harness import record, storage, tasks
from harness.config import UsageError, quote, trial_spec, writable
from harness.record import PLACEMENT, STEP_METRICS

PHASES = ("load", "data", "grad", "init", "train", "val", "score")  # <phase>_seconds of each trial
FINAL_METRICS = ("val_loss_init", "best_val_loss", "step_seconds", "grad_peak_mb", "init_cached", "peak_tflops",
                 "gsm8k_strict", "gsm8k_strict_stderr", "gsm8k_flexible", "gsm8k_flexible_stderr", "gsm8k_n",
                 "eval_seconds") + tuple(f"{phase}_seconds" for phase in PHASES)
# a summary run holds <metric>_mean, _std, _n of each over its finished seeds
SUMMARY_METRICS = ("val_loss",) + FINAL_METRICS
SETTLED = ("finished", "diverged", "failed", "stopped")
PACKAGES = ("torch", "transformers", "peft", "ray", "optuna", "lm_eval", "mlflow", "datasets")


def redact(uri: str) -> str:
    """The URI without a password (user:secret@host -> user:***@host)."""
    return re.sub(r"(//[^/:@]+:)[^/@]+@", r"\1***@", uri)


STORES = ("http://", "https://", "sqlite:///", "file:///", "postgresql://", "mysql://", "mssql://", "databricks")


def resolve_uri(uri: str, root: str) -> str:
    """The tracking URI, checked before anything is written: a known scheme, a server that answers,
    an SQLite file in a folder we may write in (by default in the storage folder `root`)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri and storage.is_uri(root):
        raise UsageError(f"--storage {root[:100]} is a bucket, which cannot hold the SQLite store: pass "
                         f"--tracking-uri http://HOST:PORT of an mlflow server (docs/clusters.md)")
    if not uri:
        return f"sqlite:///{Path(root, 'mlflow.db').resolve()}"
    if not uri.startswith(STORES):
        raise UsageError(f"tracking URI {quote(redact(uri))} is not one MLflow can use: pass --tracking-uri "
                         f"(or MLFLOW_TRACKING_URI) as http(s)://host:port, sqlite:////abs/path.db or file:///abs/folder")
    if uri.startswith("sqlite:///"):  # sqlite:///relative.db or sqlite:////absolute.db
        writable("tracking store", Path(uri.removeprefix("sqlite:///")).resolve().parent)
    if uri.startswith("file:///"):
        writable("tracking store", Path(uri.removeprefix("file://")))
    if uri.startswith(("http://", "https://")):
        # urllib takes user:password@ for part of the host name: check the server without them
        # (its /health needs no login).
        parts = urllib.parse.urlsplit(uri)
        health = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + "/health"
        try:
            urllib.request.urlopen(health, timeout=5)
        except Exception:
            raise UsageError(f"tracking server {redact(uri)} is unreachable: start it "
                             f"(mlflow server) or pass another --tracking-uri") from None
    return uri


def client(uri: str):
    from mlflow.tracking import MlflowClient
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    # Two drivers creating one SQLite store at once race in its schema migration, so the client
    # (whose store creates or migrates the tables) is made under a file lock.
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlf = MlflowClient(tracking_uri=uri)
        mlf.search_experiments(max_results=1)
    return mlf


# MLflow's UI opens an experiment by its kind: training runs, not the GenAI overview (MLflow 3)
KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(mlf, task: str) -> str:
    found = mlf.get_experiment_by_name(task)
    if found:
        if found.tags.get(KIND[0]) != KIND[1]:
            mlf.set_experiment_tag(found.experiment_id, *KIND)
        return found.experiment_id
    uri = mlf.tracking_uri
    # A SQLite store would put artifacts in ./mlruns of whatever folder the driver runs in.
    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri() \
        if uri.startswith("sqlite:///") else None
    return mlf.create_experiment(task, artifact_location=artifacts, tags=dict([KIND]))


def runs_link(uri: str, task: str, sweep: str = "", base: str = "http://127.0.0.1:5000") -> str:
    """The UI's runs table of a sweep's trials (of every sweep without one), flat and best first.
    MLflow 3.17's UI opens experiments in its GenAI view unless the URL asks for the training
    view (workflowType), and nests child runs under a collapsed parent unless the table is sorted
    by something other than time: by val_loss, every trial is a row, and the chart view plots the
    ten best."""
    exp = client(uri).get_experiment_by_name(task).experiment_id
    query = "tags.`harness.kind` = 'trial'" + (f" and tags.`harness.sweep` = '{sweep}'" if sweep else "")
    return f"{base}/#/experiments/{exp}/runs?" + urllib.parse.urlencode(
        {"workflowType": "machine_learning", "searchFilter": query, "orderByKey": "metrics.`val_loss`",
         "orderByAsc": "true"}, quote_via=urllib.parse.quote)


def experiment_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment, runs_link) of every experiment of the store but MLflow's empty Default."""
    return [(e.name, runs_link(uri, e.name, base=base)) for e in client(uri).search_experiments()
            if e.name != "Default"]


def find_run(mlf, exp_id: str, **tags) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlf.search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def find_parent(mlf, task: str, sweep: str) -> str | None:
    """The parent run of a sweep (None when the store holds no such sweep)."""
    exp = mlf.get_experiment_by_name(task)
    return find_run(mlf, exp.experiment_id, **{"harness.sweep": sweep, "harness.kind": "sweep"}) if exp else None


def environment() -> dict:
    tags = {f"version.{p}": _version(p) for p in PACKAGES}
    tags["git_commit"] = _git_commit()
    tags["hardware"] = _hardware()
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "missing"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _hardware() -> str:
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{platform.machine()}, {os.cpu_count()} CPUs" + (f", GPUs: {', '.join(gpus)}" if gpus else "")


def start_sweep(uri: str, task: str, name: str, params: dict, tags: dict | None = None) -> str:
    """The parent run of a sweep (reused when resuming), with its config and environment."""
    mlf = client(uri)
    exp = experiment_id(mlf, task)
    run_id = find_run(mlf, exp, **{"harness.sweep": name, "harness.kind": "sweep"})
    if run_id is None:
        run = mlf.create_run(exp, run_name=name, tags={"harness.sweep": name, "harness.kind": "sweep",
                                                        **environment(), **(tags or {})})
        run_id = run.info.run_id
        for key, value in params.items():
            mlf.log_param(run_id, key, str(value)[:6000])
    else:
        mlf.update_run(run_id, status="RUNNING")
    return run_id


def finish_sweep(uri: str, run_id: str, status: str = "FINISHED"):
    client(uri).set_terminated(run_id, status)


def name_sweep(uri: str, run_id: str, sweep: str, headline: str):
    """Name the parent run after what the sweep found: MLflow's runs table shows run names, and
    only the parent's until its children are expanded."""
    client(uri).update_run(run_id, name=f"{sweep}: {headline}"[:250])


def _value(text: str):
    """A param string back to its type (MLflow stores params as text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def sweep_rows(uri: str, task: str, name: str) -> tuple[str, dict, list[dict]]:
    """(parent run id, parent params, one row per trial) of a recorded sweep, for reports."""
    mlf = client(uri)
    exp = mlf.get_experiment_by_name(task)
    parent = find_run(mlf, exp.experiment_id, **{"harness.sweep": name, "harness.kind": "sweep"}) if exp else None
    if parent is None:
        raise UsageError(f"no sweep named {quote(name)} for task {task} in {redact(uri)}: "
                         f"check the name, --task and --tracking-uri")
    runs = mlf.search_runs([exp.experiment_id], max_results=50000,
                           filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    rows = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.data.tags.get("harness.kind") == "summary":  # seeds pooled: not a trial
            continue
        params = {k: _value(v) for k, v in run.data.params.items()}
        method, lr, seed = params.pop("method"), float(params.pop("lr")), params.pop("seed")
        history = _history(mlf, run.info.run_id, "val_loss")
        grad_norm = _history(mlf, run.info.run_id, "grad_norm") if "grad_norm" in run.data.metrics else []
        # only toy trials log alignment: no request per LLM run for a metric it never logged
        alignment = _history(mlf, run.info.run_id, "alignment") if "alignment" in run.data.metrics else []
        row = dict(method=method, lr=lr, seed=seed, hparams=params, history=history, alignment=alignment,
                   grad_norm=grad_norm,
                   status=run.data.tags.get("status", "running"), error=run.data.tags.get("error"),
                   host=run.data.tags.get("host"), node=run.data.tags.get("ray.node_id"),
                   **{k: run.data.metrics.get(k) for k in ("val_loss", "attempts") + FINAL_METRICS})
        rows[(method, lr, seed, tuple(sorted(params.items())))] = row
    return parent, mlf.get_run(parent).data.params, _searched_only(list(rows.values()))


def _history(mlf, run_id: str, key: str) -> list:
    """[(step, value)] of a metric, in step order."""
    points = {}
    for point in sorted(mlf.get_metric_history(run_id, key), key=lambda m: m.timestamp):
        points[point.step] = point.value  # a resumed trial may log a step twice: keep the last
    return sorted(points.items())


def _searched_only(rows: list[dict]) -> list[dict]:
    """Keep in each row's hparams only those that vary among its method's trials."""
    for method in {r["method"] for r in rows}:
        mine = [r for r in rows if r["method"] == method]
        fixed = {k for k in mine[0]["hparams"] if len({str(r["hparams"].get(k)) for r in mine}) == 1}
        for r in mine:
            r["hparams"] = {k: v for k, v in r["hparams"].items() if k not in fixed}
    return rows


def group_of(params: dict) -> str:
    """Key of a trial's seed group: a hash of its params (as MLflow stores them) but the seed."""
    rest = {k: str(v) for k, v in params.items() if k != "seed"}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def summary_metrics(trials: list[tuple[str, dict]]) -> dict:
    """Mean, standard deviation (two seeds or more) and count over the finished trials of each
    metric, and how many trials ended with each status, from (status, final metrics) pairs."""
    out = {"trials": len(trials), **{s: sum(status == s for status, _ in trials) for s in SETTLED}}
    for key in SUMMARY_METRICS:
        values = [v for status, m in trials if status == "finished"
                  and (v := m.get(key)) is not None and math.isfinite(v)]
        if values:
            out.update({f"{key}_mean": statistics.fmean(values), f"{key}_n": len(values)})
        if len(values) > 1:
            out[f"{key}_std"] = statistics.stdev(values)
    return out


def summary_name(method: str, lr: float, hparams: dict, defaults: dict, seeds: int) -> str:
    """'lora lr=2e-4 (3 seeds)', with the hyperparameters that differ from the method's defaults."""
    changed = "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                      for k, v in hparams.items() if defaults.get(k) != v)
    return f"{method} lr={lr:g}{changed} ({seeds} seed{'s' * (seeds != 1)})"


PENDING = "pending"    # <sweep>/pending/<record key>.json: trials whose MLflow writes wait for the store
PARENT = "_parent"     # pending/_parent.json: the parent run's end status
BATCH = 1000           # MLflow's most metrics in one log_batch


def retry_seconds() -> float:
    """How long a write is retried before its trial is queued (HARNESS_TRACKING_RETRY_SECONDS)."""
    return float(os.environ.get("HARNESS_TRACKING_RETRY_SECONDS", "60"))


def pending(where: str) -> list[str]:
    """Record keys (and PARENT) of the writes queued for the sweep at `where`."""
    return [n.removesuffix(".json") for n in storage.listdir(storage.join(where, PENDING))
            if n.endswith(".json") and not n.startswith(".")]


def queue(where: str, name: str, **content):
    storage.write_text(storage.join(where, PENDING, f"{name}.json"), json.dumps({"key": name, **content}))


class Tracker(Callback):
    """Mirrors every trial into a child run (params, metric histories, placement tags, status,
    the files of its checkpoint as artifacts), and each seed group into a summary run, updated
    whenever one of its trials ends. A settled trial is written from its record (harness.record),
    whole and idempotently; a store that stays down past the retry budget neither fails a trial
    nor stalls the sweep: the trial is queued for `harness sync` or --resume."""

    uri = where = ""  # of a tracker restored by Tune.restore: set by the driver that resumes
    down, halted = False, None

    def __init__(self, uri: str, task: str, sweep: str, parent_id: str, where: str):
        self.uri, self.task, self.sweep, self.parent_id, self.where = uri, task, sweep, parent_id, where
        self.runs, self.placed = {}, {}

    def __getstate__(self):
        # Tune pickles callbacks with the experiment (tuner.pkl): clients do not pickle, the URI
        # may hold a password, which must not be saved, and the sweep's location may move.
        kept = {k: v for k, v in self.__dict__.items() if k not in ("_mlf", "uri", "where", "down", "halted")}
        return kept | {"runs": {}, "placed": {}}

    @property
    def mlf(self):
        if "_mlf" not in self.__dict__:
            mlf = client(self.uri)
            self.exp = experiment_id(mlf, self.task)
            self._mlf = mlf
        return self._mlf

    def run_of(self, trial_id: str, spec: dict) -> str:
        if trial_id not in self.runs:
            mlf = self.mlf
            tags = {"harness.sweep": self.sweep, "harness.trial_id": trial_id}
            params = self._params(spec)
            run_id = find_run(mlf, self.exp, **tags) or self._same_trial(trial_id, params)
            if run_id is None:
                name = f"{params['method']} lr={params['lr']:g} seed={params['seed']}"
                run_id = mlf.create_run(self.exp, run_name=name, tags={
                    **tags, "mlflow.parentRunId": self.parent_id, "method": params["method"],
                    "harness.kind": "trial", "harness.group": group_of(params),
                    "status": "running"}).info.run_id
                self._log_params(run_id, params)
            self.runs[trial_id] = run_id
        return self.runs[trial_id]

    def _same_trial(self, trial_id: str, params: dict) -> str | None:
        """The run of the same config and seed under another trial id: a searcher restored from an
        older checkpoint than the trials (refine, after a kill), or a fresh Tuner after Tune's
        state was damaged, runs it again with a new id."""
        query = (f"tags.`harness.sweep` = '{self.sweep}' and tags.`harness.kind` = 'trial' and "
                 f"tags.`harness.group` = '{group_of(params)}' and params.seed = '{params['seed']}'")
        runs = self.mlf.search_runs([self.exp], filter_string=query, max_results=1)
        if not runs:
            return None
        self.mlf.set_tag(runs[0].info.run_id, "harness.trial_id", trial_id)
        return runs[0].info.run_id

    def _name(self, spec: dict, status: str, last: dict) -> str:
        """'lora lr=0.002 seed=0: val_loss 0.8707, GSM8K 1/10' once the trial ended: the runs
        table shows run names, and no metric until columns are picked."""
        name = f"{spec['method']} lr={spec['lr']:g} seed={spec['seed']}"
        if status != "finished" or last.get("val_loss") is None:
            return f"{name}: {status}"
        text = f"{name}: val_loss {last['val_loss']:.4g}"
        bench = next((k.removesuffix("_n") for k in last if k.endswith("_n")), None)
        if bench and f"{bench}_flexible" in last:  # the correct count of the questions scored
            n = int(last[f"{bench}_n"])
            text += f", {bench.upper()} {round(last[f'{bench}_flexible'] * n)}/{n}"
        return text

    def _params(self, spec: dict) -> dict:
        hparams = tasks.get(self.task).hparams(spec["method"], spec["hparams"])  # rank, alpha, ... too
        return {"method": spec["method"], "lr": spec["lr"], "seed": spec["seed"], **hparams}

    def _log_params(self, run_id, params):
        from mlflow.entities import Param
        self.mlf.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def update_summary(self, spec: dict):
        """Recompute the trial's seed-group summary from the group's child runs in the store, so
        a resumed sweep or a restarted driver updates the same run with every seed counted."""
        from mlflow.entities import Metric
        params = self._params(spec)
        group = group_of(params)
        mlf = self.mlf
        tags = {"harness.sweep": self.sweep, "harness.kind": "summary", "harness.group": group}
        run_id = find_run(mlf, self.exp, **tags)
        if run_id is None:
            run_id = mlf.create_run(self.exp, tags={**tags, "mlflow.parentRunId": self.parent_id,
                                                    "method": params["method"]}).info.run_id
            self._log_params(run_id, {k: v for k, v in params.items() if k != "seed"})
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {**tags, "harness.kind": "trial"}.items())
        runs = mlf.search_runs([self.exp], filter_string=query, max_results=50000)
        trials = [(r.data.tags.get("status"), r.data.metrics) for r in runs if r.data.tags.get("status") in SETTLED]
        hparams = {k: v for k, v in params.items() if k not in ("method", "lr", "seed")}
        defaults = tasks.get(self.task).hparams(params["method"], {})
        mlf.update_run(run_id, name=summary_name(params["method"], params["lr"], hparams, defaults, len(trials)))
        now = int(time.time() * 1000)
        mlf.log_batch(run_id, metrics=[Metric(k, float(v), now, len(trials))
                                       for k, v in summary_metrics(trials).items()])
        mlf.set_terminated(run_id, "FINISHED")

    def write_trial(self, rec: dict):
        """A settled trial from its record: its run, the metric points and final values the store
        lacks, tags, files and status, then its seed group's summary. Writing it twice changes
        nothing, so a replay after a partial write is safe."""
        from mlflow.entities import Metric, RunTag
        spec, status, last = rec["spec"], rec["status"], rec["metrics"]
        run_id, now = self.run_of(rec["trial_id"], spec), int(time.time() * 1000)
        run = self.mlf.get_run(run_id)
        points = [Metric(k, v, now, step) for k, steps in self._missing(run, rec["history"]).items()
                  for step, v in steps]
        finals = {k: float(last[k]) for k in FINAL_METRICS if isinstance(last.get(k), (int, float))}
        finals["attempts"] = rec["attempts"]
        points += [Metric(k, v, now, int(last.get("step", 0))) for k, v in finals.items()
                   if run.data.metrics.get(k) != v]
        tags = {**rec["placement"], "status": status}
        if status == "failed":
            tags["error"] = f"{rec['error'].splitlines()[-1][:300]}\n{rec['error']}"
        self.mlf.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for i in range(0, len(points), BATCH):
            self.mlf.log_batch(run_id, metrics=points[i:i + BATCH])
        self.mlf.update_run(run_id, name=self._name(spec, status, last))
        if rec.get("files") and not self.mlf.list_artifacts(run_id):
            self._log_files(run_id, rec["files"])
        self.mlf.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
        self.update_summary(spec)

    def _missing(self, run, history: dict) -> dict:
        """The points of each metric's history whose step the run has not logged."""
        out = {}
        for name, steps in history.items():
            logged = {m.step for m in self.mlf.get_metric_history(run.info.run_id, name)} \
                if name in run.data.metrics else set()
            out[name] = [(step, v) for step, v in steps if step not in logged]
        return out

    def _log_files(self, run_id: str, location: str):
        """Every file of the trial's checkpoint (adapter/, metrics.json, samples, peft_result.json),
        downloaded to a temporary folder first when it lies in a bucket."""
        from ray.tune import Checkpoint
        fs, path = storage.resolve(location)
        with Checkpoint(path, filesystem=fs).as_directory() as folder:
            for item in sorted(Path(folder).iterdir()):
                if item.is_dir():
                    self.mlf.log_artifacts(run_id, str(item), item.name)
                elif not item.name.startswith("."):  # Ray's own metadata
                    self.mlf.log_artifact(run_id, str(item))

    # ---- Tune's callback methods: never raise (a callback's exception fails the trial) ----

    def on_trial_start(self, iteration, trials, trial, **info):
        self._attempt(lambda: self.run_of(trial.trial_id, trial_spec(trial.config)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final"):  # the final values go with the settled trial, from its record
            self._attempt(lambda: self._log_step(trial, result))

    def _log_step(self, trial, result):
        from mlflow.entities import Metric, RunTag
        run_id, now = self.run_of(trial.trial_id, trial_spec(trial.config)), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, int(result["step"]))
                   for k in STEP_METRICS if isinstance(result.get(k), (int, float))]
        where = {k: str(result[k]) for k in PLACEMENT if k in result}
        tags = [RunTag(k, v) for k, v in where.items()] if where != self.placed.get(trial.trial_id) else []
        if metrics or tags:  # placement: on each attempt's first report (a retry may run elsewhere)
            self.mlf.log_batch(run_id, metrics=metrics, tags=tags)
        self.placed[trial.trial_id] = where

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._settle(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._settle(trial)

    def on_step_end(self, iteration, trials, **info):
        if self.halted:  # the queue found no space: stop the sweep (storage.DiskFull)
            raise self.halted

    def _settle(self, trial):
        rec = record.find(self.where, record.key(trial_spec(trial.config)))
        if rec is None:  # not recorded: its disk is full and the sweep halts, or it will run again
            return
        try:
            if self._attempt(lambda: self.write_trial(rec)):
                if rec["key"] in pending(self.where):  # written now, after an earlier queueing
                    storage.delete(storage.join(self.where, PENDING, f"{rec['key']}.json"))
            else:
                queue(self.where, rec["key"])
        except storage.DiskFull as err:
            self.halted = err

    def _attempt(self, write) -> bool:
        """write() against the store, retried with growing pauses for retry_seconds(), or tried
        once while the store is known to be down; False if it did not succeed."""
        deadline, pause = time.monotonic() + (0 if self.down else retry_seconds()), 1.0
        while True:
            try:
                write()
                self.down = False
                return True
            except Exception as err:  # the store's, its driver's or the network's: all mean "not now"
                if time.monotonic() + pause > deadline or storage.no_space(err):  # waiting frees no disk
                    self._went_down(err)
                    return False
                time.sleep(pause)
                pause = min(2 * pause, 10)

    def _went_down(self, err: Exception):
        logging.getLogger(__name__).warning("MLflow write failed", exc_info=err)
        if not self.down and not storage.no_space(err):  # a full disk gets its own line, from the halt
            print(f"harness: tracking store {redact(self.uri)} not answering ({type(err).__name__}): trials go "
                  f"on; their MLflow records wait in {storage.join(self.where, PENDING)} for `harness sync "
                  f"{self.sweep}` or --resume", file=sys.stderr, flush=True)
        self.down = True


def sync(uri: str, task: str, sweep: str, where: str, parent_id: str, ended: bool = True) -> int:
    """Write the queued records of the sweep at `where` to MLflow, each taken off the queue once
    written; how many there were. The parent's queued end is applied if the sweep has `ended`
    (a resumed sweep ends its parent itself). Raises on the first write the store refuses."""
    tracker = Tracker(uri, task, sweep, parent_id, where)
    names = pending(where)
    for name in names:
        marker = storage.join(where, PENDING, f"{name}.json")
        if name == PARENT and ended:
            finish_sweep(uri, parent_id, json.loads(storage.read_text(marker))["status"])
        elif (rec := record.find(where, name)) is not None:
            tracker.write_trial(rec)
        storage.delete(marker)
    return len(names)

"""Sweeps on Ray Tune: the plan, the trial function, progress, and the Tuner run.

Each trial trains one (method, lr, seed, hyperparameters) config, reports validation loss at
every interval, then is scored by its task (lm-eval on GSM8K for the LLM tasks). MLflow records
are written from the driver."""

import fnmatch
import json
import logging
import logging.handlers
import os
import shlex
import socket
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import methods
from harness import interrupt, record, resume, search, spaces, storage, tasks, tracking
from harness.config import (Halt, Interrupted, TrialConfig, UsageError, check_name, fraction, positive, quote,
                            trial_spec, writable)
from harness.progress import Progress
from harness.search import DIVERGED
from harness.tasks import preset_hparams, resolve
from reports.robustness import LOSS_TOL

LISTED = 200     # a dry run lists the trials of a grid up to this many, else summarizes it
LOCK = "driver.lock"  # in the sweep's location: its driver's host, pid and heartbeat (storage.Lock)


@dataclass
class SweepConfig:
    methods: list
    trial: TrialConfig              # template: everything but method, lr, seed, hparams
    name: str = ""
    search: str = "grid"            # grid | optuna | refine
    trials: int = 8                 # optuna trials per method
    resolution: float = 0.25        # refine: the finest ladder step, in decades
    budget: int = 0                 # refine: most trials in all (0: the full fine grid's count)
    loss_tol: float = LOSS_TOL      # robust window: val loss within this fraction of the best (refine, report)
    scheduler: str = "none"         # none | asha
    seeds: int = 1
    lrs: list = field(default_factory=list)
    cpus_per_trial: float = 0
    gpus_per_trial: float = 0
    max_concurrent: int = 0
    max_failures: int = 1
    address: str = ""
    scale_wait: float = 0           # seconds a trial may wait for nodes the cluster adds (0: refuse at once)
    storage: str = ""               # a folder or a bucket URI (harness/storage.py)
    tracking_uri: str = ""
    resume: bool = False
    spaces: str = ""                # search-space folder (default: the repository's search_spaces/)

    @property
    def path(self) -> str:
        """The sweep's location: <storage>/<name>."""
        return storage.join(self.storage, self.name)


def prepare(sc: SweepConfig) -> list[dict]:
    """Validate everything before anything starts; returns the grid plan (for refine, its first
    round: the coarse ladder of every line; empty for optuna)."""
    if sc.search not in ("grid", "optuna", "refine"):
        raise UsageError(f"unknown search {quote(sc.search)}: use grid, optuna or refine")
    if sc.scheduler not in ("none", "asha"):
        raise UsageError(f"unknown scheduler {quote(sc.scheduler)}: use none or asha")
    for name in ("trials", "seeds"):
        positive(f"--{name}", getattr(sc, name))
    for name in ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "scale_wait"):
        positive(f"--{name.replace('_', '-')}", getattr(sc, name), allow_zero=True)
    fraction("--loss-tol", sc.loss_tol)
    sc.methods = [methods.get(m).name for m in sc.methods]
    sc.trial = resolve(replace(sc.trial, method=sc.methods[0], lr=1.0, hparams={}))
    folder = Path(sc.spaces).resolve() if sc.spaces else spaces.FOLDER
    if not folder.is_dir():
        raise UsageError(f"--spaces {sc.spaces} is not a folder: pass a folder of search-space YAML files")
    sc.spaces = str(folder)
    task = tasks.get(sc.trial.task)
    sc.lrs = [positive("--lrs value", lr) for lr in sc.lrs] or task.ladder(sc.trial.preset, folder)
    sc.storage = storage.location(sc.storage)
    storage.check(sc.storage)
    sc.name = check_name("--name", sc.name or f"{sc.trial.task}-{sc.trial.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not storage.is_uri(sc.storage):
        writable("--storage", Path(sc.storage))
    sc.tracking_uri = tracking.resolve_uri(sc.tracking_uri, sc.storage)  # before any file is written
    holder = storage.lock_holder(storage.join(sc.path, LOCK))
    if holder:
        raise running(sc, holder)
    exists = storage.exists(storage.join(sc.path, resume.CONFIG_FILE))  # saved first, before Tune's state
    if sc.resume and not exists:
        raise UsageError(f"no sweep named {sc.name!r} under {sc.storage}: check --name/--storage, "
                         f"or start it without --resume")
    if exists and not sc.resume:
        raise UsageError(f"sweep {sc.name!r} already exists under {sc.storage}: "
                         f"use --resume {sc.name} to continue it, or another --name")
    _check_address(sc)
    if not (sc.address or os.environ.get("RAY_ADDRESS")):
        import torch
        _check_nodes(sc, [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}])
    task.preflight(sc.trial)
    seeds = list(range(sc.trial.seed, sc.trial.seed + sc.seeds))
    plan = spaces.plan(sc.methods, sc.trial.preset, sc.lrs, seeds, method_spaces(sc))
    for entry in plan:  # the preset's hyperparameters under the grid's, recorded with each trial
        entry["hparams"] = {**preset_hparams(sc.trial, entry["method"]), **entry["hparams"]}
        resolve(TrialConfig(**{**asdict(sc.trial), **entry}))  # valid for its method
    return refine_plan(sc, plan) if sc.search == "refine" else plan


def refine_plan(sc: SweepConfig, plan: list[dict]) -> list[dict]:
    """The coarse ladder of every (method, hyperparameters) line of the grid plan, one seed."""
    positive("--resolution", sc.resolution)
    if sc.resolution > 1:
        raise UsageError(f"--resolution {sc.resolution:g} is coarser than the coarse ladder (whole decades): "
                         f"use 1 or less, such as 0.25")
    positive("--budget", sc.budget, allow_zero=True)
    if sc.scheduler != "none":
        raise UsageError(f"--scheduler {sc.scheduler} stops trials early, and refine decides on final losses: "
                         f"use --scheduler none with --search refine")
    lines = search.lines_of(plan)
    least = search.least_budget(lines, sc.lrs)
    if sc.budget and sc.budget < least:
        raise UsageError(f"--budget {sc.budget} cannot run the coarse ladder of every method ({least} trials "
                         f"for an even share): raise --budget to at least {least}")
    sc.budget = sc.budget or len(lines) * len(search.fine(sc.lrs, sc.resolution)) * sc.seeds
    return [dict(method=m, lr=lr, seed=sc.trial.seed, hparams=hp)
            for lr in search.coarse(sc.lrs) for m, hp in lines]


def method_spaces(sc: SweepConfig) -> dict:
    return tasks.get(sc.trial.task).spaces(sc.methods, Path(sc.spaces))


def _check_address(sc: SweepConfig):
    """A Ray address that accepts no connection fails here, in seconds (ray.init retries longer)."""
    address = sc.address or os.environ.get("RAY_ADDRESS", "")
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise UsageError(f"cannot reach the Ray cluster at {address}: check --address / RAY_ADDRESS "
                         f"(host:port of the head node) and that `ray start --head` runs there") from None


def unfit(cpus: float, gpus: float, nodes: list[dict], cluster: str = "") -> str:
    """Why no node (its resources: {"CPU": n, "GPU": n}) of the cluster at `cluster` (or of this
    machine) can take a trial of `cpus` and `gpus`, or "" if one can."""
    have = [(node.get("CPU", 0), node.get("GPU", 0)) for node in nodes]
    if any(c >= cpus and g >= gpus for c, g in have):
        return ""
    where = f"the largest node of the cluster at {cluster} has" if cluster else "this machine has"
    # GPUs first: the CPUs' default follows from them
    for flag, need, i, unit in (("--gpus-per-trial", gpus, 1, "GPUs"), ("--cpus-per-trial", cpus, 0, "CPUs")):
        most = max((h[i] for h in have), default=0)
        if need > most:
            return f"{flag} {need:g} but {where} {most:g} {unit}"
    return f"--cpus-per-trial {cpus:g} with --gpus-per-trial {gpus:g} but no node of the cluster at {cluster} has both"


def _check_nodes(sc: SweepConfig, nodes: list[dict], cluster: str = ""):
    """A trial no node can take would wait forever: refused, unless the cluster may add nodes
    (--scale-wait), where it is a warning and the trials get that long to start."""
    problem = unfit(*_resources(sc), nodes, cluster)
    if problem and sc.scale_wait and cluster:
        print(f"harness: warning: {problem} now: waiting up to {sc.scale_wait:g} s for the cluster to add a "
              f"node that fits (--scale-wait)", file=sys.stderr, flush=True)
        interrupt.wait_for_nodes(sc.scale_wait)
    elif problem:
        raise UsageError(f"{problem}: lower it, or use --address of a cluster with such nodes (--scale-wait "
                         f"if it adds nodes on demand)")


def running(sc: SweepConfig, holder: dict) -> UsageError:
    age = time.time() - holder.get("heartbeat", 0)
    return UsageError(f"sweep {sc.name!r} is running: its driver is pid {holder.get('pid')} on host "
                      f"{holder.get('host')} (heartbeat {age:.0f} s ago): wait for it to end or stop it, then use "
                      f"--resume {sc.name} (its lock, {storage.join(sc.path, LOCK)}, is taken over once that "
                      f"driver is gone)")


def trial_count(sc: SweepConfig, plan: list[dict]) -> int:
    """Trials the sweep runs (refine: the most it may run)."""
    return {"grid": len(plan), "optuna": sc.trials * len(sc.methods), "refine": sc.budget}[sc.search]


def describe(sc: SweepConfig, plan: list[dict]) -> str:
    """The dry-run text: trials, resources, and a rough compute estimate."""
    t = sc.trial
    count = trial_count(sc, plan)
    lines = [f"{'at most ' if sc.search == 'refine' else ''}{count} trials", f"sweep {sc.name}: task {t.task}, preset {t.preset}, model {t.model}, "
             f"search {sc.search}, scheduler {sc.scheduler}", f"storage {sc.path}"]
    if sc.search == "grid" and count > LISTED:  # a summary: thousands of lines would hide the count
        for m in sc.methods:
            mine = [e for e in plan if e["method"] == m]
            combos = {json.dumps(e["hparams"], sort_keys=True) for e in mine}
            lines.append(f"  {m:<11} {len(mine)} trials: {len({e['lr'] for e in mine})} lr rungs x "
                         f"{len({e['seed'] for e in mine})} seeds x {len(combos)} hyperparameter combinations")
    elif sc.search == "grid":
        for i, e in enumerate(plan, 1):
            hp = " ".join(f"{k}={v}" for k, v in e["hparams"].items())
            lines.append(f"  {i:>3}. {e['method']:<11} lr={e['lr']:<8g} seed={e['seed']} {hp}")
    elif sc.search == "refine":
        lines += refine_text(sc, plan)
    else:
        lines.append(f"  {sc.trials} Optuna TPE trials per method over lr in "
                     f"[{min(sc.lrs):g}, {max(sc.lrs):g}] and each method's grid values")
    cpus, gpus = _resources(sc)
    lines.append(f"resources per trial: {cpus:g} CPUs, {gpus:g} GPUs; concurrency: "
                 f"{sc.max_concurrent or 'as resources allow'}")
    warmup = f"{t.warmup} steps" + (f" ({t.warmup_ratio:g} of the steps)" if t.warmup_ratio else "")
    lines.append(f"each trial: {t.steps} steps of batch {t.batch_size} x {t.grad_accum} accumulated, "
                 f"max_length {t.max_length}, {t.schedule} schedule after {warmup} of warm-up, weight decay "
                 f"{t.weight_decay:g}, gradient clipping {t.max_grad_norm:g}, targets {t.targets}, dtype {t.dtype}, "
                 f"validation every {t.eval_interval} steps")
    lines.append(tasks.get(t.task).describe(t))
    lines.append(tasks.get(t.task).compute(t, count))
    return "\n".join(lines)


def refine_text(sc: SweepConfig, plan: list[dict]) -> list[str]:
    lines = search.lines_of(plan)
    fine = search.fine(sc.lrs, sc.resolution)
    out = [f"  refine starts with the coarse ladder, lr={', '.join(f'{lr:g}' for lr in search.coarse(sc.lrs))}, "
           f"seed {sc.trial.seed}, for each of:"]
    for (m, hp), share in zip(lines, search.shares(sc.budget, lines)):
        out.append(f"    {m}{''.join(f' {k}={v}' for k, v in hp.items())}: at most {share} trials")
    step = 1 / search.per_decade(sc.resolution)
    out.append(f"  then rounds of rungs down to {step:g} decades, ladder extensions and up to {sc.seeds} seeds "
               f"(docs/sweeps.md); at most {sc.budget} trials in all (--budget; the full grid of {len(fine)} "
               f"rungs x {sc.seeds} seeds would be {len(lines) * len(fine) * sc.seeds})")
    return out


def _resources(sc: SweepConfig) -> tuple[float, float]:
    return tasks.get(sc.trial.task).resources(sc.cpus_per_trial, sc.gpus_per_trial, bool(sc.address))


def placement() -> dict:
    """Where this trial runs: its Ray node, host, and the GPU ids Ray gave it (tags of its run)."""
    import ray
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, ray.get_gpu_ids()))
    return {"ray.node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "cuda_visible_devices": devices or "none"}


def train_trial(config: dict, base: dict):
    """The Tune trial: train, report every interval, score, and report the final result with the
    trial's files (adapter, metrics, samples) as its checkpoint. The files are written to a local
    folder: Ray persists the checkpoint to the sweep's storage, from any node, and the driver
    records them in MLflow from there."""
    import ray.tune
    import torch

    done = record.find(base["sweep"], record.key(trial_spec(config)))
    if done and done["status"] in record.DONE:  # Tune's state missed its end (a crash): never run it twice
        ray.tune.report({**done["metrics"], "status": done["status"], "recorded": 1})
        return
    torch.set_num_threads(max(1, int(base["cpus"])))  # Ray may cap threads at 1 otherwise
    where = placement()
    cache = storage.join(base["sweep"], "inits")  # beside the sweep's files, folder or bucket alike
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as out:
        cfg = resolve(TrialConfig(**{**base["trial"], **trial_spec(config), "out": out,   # finds --tasks-dir tasks too
                                     "init_cache": cache}))
        task = tasks.get(cfg.task)
        last = {"val_loss": None}

        def report(point):
            last["val_loss"] = point.get("val_loss", last["val_loss"])
            diverged = "val_loss" not in point
            ray.tune.report({**point, **where, "val_loss": last["val_loss"],
                             "status": "diverged" if diverged else "running",
                             "objective": DIVERGED if diverged else point["val_loss"]})

        try:
            result = task.run(cfg, report=report)
        except torch.OutOfMemoryError as err:  # the allocation that failed is no help: name the fix
            raise torch.OutOfMemoryError(f"out of memory: {err}: lower --batch-size or --max-length, or "
                                         f"give the trial more memory (--gpus-per-trial)") from err
        scores = task.score(cfg) if result["status"] == "finished" else {}
        objective = result["val_loss"] if result["status"] == "finished" else DIVERGED
        storage.check_space(base["sweep"], sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()))
        ray.tune.report({**{k: v for k, v in result.items() if v is not None}, **scores, **where,
                         "final": 1, "objective": objective},
                        checkpoint=ray.tune.Checkpoint.from_directory(out))  # uploaded before it returns


def build_tuner(sc: SweepConfig, plan: list[dict], parent_id: str):
    """The Tuner of the sweep: Tune's own restored state on a resume, else a fresh one, which on a
    resume (Tune's state damaged) leaves out the trials the record holds as done."""
    from ray import tune
    cpus, gpus = _resources(sc)
    template = {k: v for k, v in asdict(sc.trial).items() if k not in ("method", "lr", "seed", "hparams", "out")}
    base = {"trial": template, "cpus": cpus, "sweep": sc.path}
    trainable = tune.with_resources(tune.with_parameters(train_trial, base=base), {"cpu": cpus, "gpu": gpus})
    fs, path = storage.resolve(sc.storage)
    fs = fs if storage.is_uri(sc.storage) else None  # Ray's own handling of local folders
    if sc.resume:
        # not pickled with the callbacks (a password; the sweep's location may move)
        tracking.Tracker.uri, tracking.Tracker.where, record.Recorder.where = sc.tracking_uri, sc.path, sc.path
        restored = restore(sc, trainable, f"{path}/{sc.name}", fs)
        if restored:
            return restored
        if sc.search == "grid":  # a searcher suggests the recorded trials again: the trainable skips them
            done = record.done_keys(sc.path)
            plan = [entry for entry in plan if record.key(entry) not in done]
            if not plan:
                return None
    total = trial_count(sc, plan)
    callbacks = [record.Recorder(sc.path),  # first: a trial is recorded before it goes to MLflow
                 tracking.Tracker(sc.tracking_uri, sc.trial.task, sc.name, parent_id, sc.path),
                 Progress(total, sc.trial.steps), interrupt.Guard()]
    tune_config = dict(max_concurrent_trials=sc.max_concurrent or None,
                       reuse_actors=tasks.get(sc.trial.task).reuse_workers)
    objective = dict(metric="objective", mode="min")  # given to the searcher and scheduler themselves
    if sc.search == "grid":
        param_space = {"trial": tune.grid_search(plan)}
    elif sc.search == "refine":
        param_space = {}
        tune_config.update(num_samples=total, search_alg=search.Refine(
            search.lines_of(plan), sc.lrs, resolution=sc.resolution, seeds=sc.seeds, first_seed=sc.trial.seed,
            budget=sc.budget, max_concurrent=sc.max_concurrent, loss_tol=sc.loss_tol, **objective))
    else:
        loaded = method_spaces(sc)
        grids = {m: {**{k: [v] for k, v in preset_hparams(sc.trial, m).items()},
                     **loaded[m].get(sc.trial.preset, loaded[m].get("grid", {}))} for m in sc.methods}
        param_space = {}
        tune_config.update(num_samples=total, search_alg=search.optuna(sc.methods, sc.lrs, grids, sc.trial.seed,
                                                                       **objective))
    if sc.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler
        reports = sc.trial.steps // sc.trial.eval_interval + 2
        tune_config["scheduler"] = ASHAScheduler(max_t=reports, grace_period=max(1, reports // 3),
                                                 reduction_factor=2, **objective)
    run_config = tune.RunConfig(name=sc.name, storage_path=path, storage_filesystem=fs, verbose=0, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=sc.max_failures))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(**tune_config),
                      run_config=run_config)


def restore(sc: SweepConfig, trainable, experiment: str, fs):
    """Tune's restored Tuner, or None, with one line, when Tune's state is damaged (a full disk
    truncates its files): the sweep then goes on from the record."""
    from ray import tune
    try:
        check_tune_state(experiment, fs)
        return tune.Tuner.restore(experiment, trainable, resume_errored=True, storage_filesystem=fs)
    except Exception as err:
        print(f"harness: Tune's state of sweep {sc.name} is damaged ({quote(f'{type(err).__name__}: {err}')}): "
              f"going on from the record of its trials in {storage.join(sc.path, record.FOLDER)}",
              file=sys.stderr, flush=True)
        return None


def check_tune_state(experiment: str, fs):
    """Raises unless the newest experiment state parses and gives every trial its config (a
    truncated file would fail Tune, or our callbacks with KeyError 'method', after the start)."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle
    newest = _find_newest_experiment_checkpoint(experiment, fs=fs)
    if newest is None:
        raise FileNotFoundError(f"no experiment state in {experiment}")
    fs, path = (fs, newest) if fs else storage.resolve(newest)
    with fs.open_input_stream(path) as f:
        state = _loads_with_cloudpickle(f.readall())
    for trial_state, _ in state["trial_data"]:
        trial_spec(Trial.from_json_state(trial_state, stub=True).config)


def start_ray(sc: SweepConfig):
    import ray
    import torch
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: Progress reports instead
    address = sc.address or os.environ.get("RAY_ADDRESS", "")
    env = {k: v for k, v in os.environ.items() if k.startswith(("HARNESS_", "HF_", "MLFLOW_", "TRANSFORMERS_"))}
    # configure_logging=False: Ray keeps the file handlers of log_to_file instead of the terminal.
    options = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False,
                   runtime_env={"env_vars": env})
    if not address:
        # Ray runs workers at nice 15 to keep its own processes responsive; here the trials are the
        # work, and at nice 15 each wakeup of a Ray process preempts a trial thread (docs/benchmarks.md).
        ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 object_store_memory=256 * 2**20, _system_config={"worker_niceness": 0}, **options)
        return
    try:
        ray.init(address=address, **options)
    except Exception as err:
        raise UsageError(f"cannot reach the Ray cluster at {address} ({type(err).__name__}): "
                         f"check --address / RAY_ADDRESS and that `ray start --head` runs there") from None
    _check_nodes(sc, [node["Resources"] for node in ray.nodes() if node["Alive"]], address)


def stop_ray():
    """ray.shutdown, then wait until the processes the driver's Ray started are gone (workers
    outlive their raylet for minutes otherwise); any left after 10 s are killed."""
    import psutil
    import ray
    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, left = psutil.wait_procs(started, timeout=10)
    for proc in left:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


def _route_logs(handler: logging.Handler):
    """Every library logger propagates to the root, whose only handler is `handler`: a handler on
    the library logger itself would not do, as ray.init clears the "ray" logger's handlers."""
    logging.getLogger().handlers = [handler]
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "lm-eval", "lm_eval", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


def hold_logs() -> logging.handlers.MemoryHandler:
    """Library logging is held in memory, away from the terminal, until `log_to_file`: ray.init
    logs (its token-auth notice) before the sweep folder may be created."""
    import mlflow  # noqa: F401  (installs its own handlers on import: replace them afterwards)
    held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    _route_logs(held)
    return held


def log_file(sc: SweepConfig) -> Path:
    """<sweep>/harness.log in a folder; with a bucket, a local file that is copied to
    <sweep>/harness.log when the sweep ends (a bucket cannot be appended to)."""
    if not storage.is_uri(sc.storage):
        return Path(sc.path, "harness.log")
    return Path(tempfile.gettempdir(), "harness", sc.name, "harness.log")


def log_to_file(sc: SweepConfig, held: logging.handlers.MemoryHandler):
    """Library logging, and what `held` kept, goes to the sweep's log (continued on resume)."""
    path = log_file(sc)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = storage.join(sc.path, "harness.log")
    if storage.is_uri(sc.storage):  # the bucket's copy, or a new log
        path.write_bytes(storage.read_bytes(saved) if storage.exists(saved) else b"")
    logging.raiseExceptions = False  # a full disk: no traceback on the terminal for each log line
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    held.setTarget(handler)
    held.close()  # flushes into the file
    _route_logs(handler)


def run(sc: SweepConfig, plan: list[dict], tags: dict | None = None) -> list[dict]:
    """Run (or resume) the sweep, owned by this driver (a second one gets exit 2); returns one row
    per settled trial, from the record, also in <sweep>/results.json. SIGINT, SIGTERM and SIGHUP end
    it with Interrupted, everything it started stopped (harness/interrupt.py); a full disk with a
    Halt that says how to go on."""
    held = hold_logs()
    try:
        with interrupt.caught():
            try:
                start_ray(sc)  # before any file: an unreachable cluster must leave no run or folder behind
                interrupt.install()  # ray.init sets its own SIGTERM handler
                with owned(sc):
                    log_to_file(sc, held)
                    if not sc.resume:
                        resume.save(sc)
                    rows = fit(sc, plan, tags)
            finally:
                stop_ray()
    except Interrupted as err:
        err.resume = resume_command(sc)
        raise
    return rows


@contextmanager
def owned(sc: SweepConfig):
    """This driver owns the sweep while the block runs: a live owner is refused, a stale one's
    lock taken over with a line saying so."""
    lock = storage.Lock(storage.join(sc.path, LOCK))
    try:
        lock.acquire()
    except storage.Held as err:
        raise running(sc, err.holder) from None
    if lock.replaced:
        old = lock.replaced
        print(f"harness: sweep {sc.name}: taking over the lock of pid {old.get('pid')} on host {old.get('host')}, "
              f"which has ended (heartbeat {time.time() - old.get('heartbeat', 0):.0f} s ago)",
              file=sys.stderr, flush=True)
    try:
        yield
    finally:
        lock.release()
        if lock.lost is not None:
            print(f"harness: warning: sweep {sc.name}: its lock was taken over by pid {lock.lost.get('pid')} on "
                  f"host {lock.lost.get('host')} while this driver ran (no heartbeat for "
                  f"{storage.STALE_SECONDS} s): check that sweep's results", file=sys.stderr, flush=True)


def fit(sc: SweepConfig, plan: list[dict], tags: dict | None) -> list[dict]:
    """The Tuner's run, under the sweep's parent run in MLflow: FINISHED, KILLED (a signal) or FAILED."""
    parent_id = tracking.start_sweep(sc.tracking_uri, sc.trial.task, sc.name, run_params(sc), tags or {})
    if sc.resume:
        send_queued(sc, parent_id, ended=False)  # the store answered resolve_uri: replay what waited
    status = "FAILED"
    try:
        interrupt.check()
        tuner = build_tuner(sc, plan, parent_id)
        if tuner:  # None: a resume that found every trial done in the record
            tuner.fit()
        interrupt.check()  # Tune stopped its loop early on a signal
        if interrupt.late():
            raise UsageError(f"no node took a trial within --scale-wait {sc.scale_wait:g} s: lower --cpus-per-trial "
                             f"/ --gpus-per-trial, or add such a node and use --resume {sc.name}")
        status = "FINISHED"
    except Interrupted:
        status = "KILLED"
        raise
    except Exception as err:
        if isinstance(err, Halt) or storage.no_space(err):
            told = str(err) if isinstance(err, Halt) else str(storage.disk_full(sc.path, None))
            raise Halt(f"{told}: free space there, then `{resume_command(sc)}`") from None
        raise
    finally:
        end_parent(sc, parent_id, status)
        if storage.is_uri(sc.storage):
            storage.write_bytes(storage.join(sc.path, "harness.log"), log_file(sc).read_bytes())
    rows = write_results(sc, record.rows(sc.path))
    if tracking.pending(sc.path):  # the store may be back by now
        send_queued(sc, parent_id, ended=True)
    return rows


def resume_command(sc: SweepConfig) -> str:
    default = not storage.is_uri(sc.storage) and Path(sc.storage) == Path("runs").resolve()
    return f"harness run --resume {sc.name}" + ("" if default else f" --storage {shlex.quote(sc.storage)}")


def write_results(sc: SweepConfig, rows: list[dict]) -> list[dict]:
    rows.sort(key=lambda r: (r["method"], r["lr"], r["seed"]))
    storage.write_text(storage.join(sc.path, "results.json"), json.dumps(rows, indent=2))
    if sc.search == "refine":
        storage.write_text(storage.join(sc.path, "refine.json"),
                           json.dumps(search.results(refine_state(sc.path)), indent=2))
    return rows


def end_parent(sc: SweepConfig, parent_id: str, status: str):
    """The parent run's end status, queued when the store does not take it."""
    try:
        tracking.finish_sweep(sc.tracking_uri, parent_id, status)
    except Exception:
        logging.getLogger(__name__).warning("the parent run's end was not recorded", exc_info=True)
        try:
            tracking.queue(sc.path, tracking.PARENT, status=status)
        except storage.DiskFull:  # a halt is on its way out: the parent stays RUNNING until the resume
            pass


def send_queued(sc: SweepConfig, parent_id: str, ended: bool):
    """MLflow writes queued while the store was down, sent now if it answers (else they wait)."""
    try:
        sent = tracking.sync(sc.tracking_uri, sc.trial.task, sc.name, sc.path, parent_id, ended)
    except Exception:
        logging.getLogger(__name__).warning("queued MLflow writes not sent", exc_info=True)
        return
    if sent:
        print(f"sent {sent} queued records to the tracking store", flush=True)


def refine_state(path: str) -> dict:
    """The refine searcher's last checkpoint (Tune writes one per driver session; the newest wins)."""
    pattern = search.Refine.CKPT_FILE_TMPL.format("*")
    files = [name for name in storage.listdir(path) if fnmatch.fnmatch(name, pattern)]
    return json.loads(storage.read_text(storage.join(path, files[-1])))


def run_params(sc: SweepConfig) -> dict:
    """The parent run's params: the resolved sweep and trial config, without secrets."""
    params = {"methods": ",".join(sc.methods), **{k: v for k, v in asdict(sc).items()
                                                  if k not in ("methods", "trial")},
              **{f"trial.{k}": v for k, v in asdict(sc.trial).items() if k not in ("method", "lr", "seed")}}
    params["tracking_uri"] = tracking.redact(sc.tracking_uri)
    return params

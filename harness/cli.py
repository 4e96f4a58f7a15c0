"""Command line: `harness methods`, `trial`, `run`, `report`, `sync`, `nightly`, `ui`."""

import argparse
import collections
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path

from harness import storage, tasks
from harness.config import (PRESETS, Halt, Interrupted, TrialConfig, UsageError, check_name, fraction, load_yaml,
                            positive, quote, writable)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def quiet_libraries():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow prints "View run ... at <tracking URI>" for every run it ends on a server: noise
    # between the progress lines, and the URI's password with it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # MLflow's client retries a request for minutes; the tracker's own bounded retries, then its
    # queue, replace that (harness/tracking.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import transformers
    transformers.utils.logging.disable_progress_bar()


def parse_number(text: str):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a number") from None


def parse_setting(text: str) -> tuple:
    import yaml
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not KEY=VALUE (for example rank=16)")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"--set {quote(text)}: the value is not a plain YAML value") from None


def task_help() -> str:
    return f"{', '.join(tasks.names())}, or one of --tasks-dir (see docs/tasks.md)"


def preset_help() -> str:
    own = [f"{p} (task {t.name})" for t in map(tasks.get, tasks.names()) for p in t.presets]
    made_for = [f"{p} (task {v['task']})" if "task" in v else p for p, v in PRESETS.items()]
    return ", ".join(made_for + own)


def add_tasks_dir(p):
    p.add_argument("--tasks-dir", default="", help="a folder of task YAML files to add to the built-in "
                   "tasks (see docs/tasks.md)")


def add_trial_options(p):
    """Options shared by every command that trains."""
    p.add_argument("--task", default=None, help=f"what to train and score: {task_help()} "
                   f"(default: the preset's task, else gsm8k)")
    add_tasks_dir(p)
    p.add_argument("--preset", default="",
                   help=f"size of model and budget: {preset_help()} (default: gpu where a GPU "
                   f"is visible, else cpu)")
    p.add_argument("--data-dir", default="", help="local data folder with <source>/<file> as the task "
                   "names them, such as gsm8k/train.jsonl and test.jsonl (default: $HARNESS_DATA_DIR, else the hub)")
    p.add_argument("--model", default=None, help="hub id, local folder, tiny or smollm2-135m "
                   "(default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default: the preset's)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default: the preset's)")
    p.add_argument("--eval-interval", type=int, default=None, help="steps between validations")
    p.add_argument("--train-size", type=int, default=None, help="training rows to use (0 = all)")
    p.add_argument("--val-size", type=int, default=None, help="held-out validation rows")
    p.add_argument("--eval-limit", type=int, default=None, help="GSM8K test questions scored with "
                   "lm-eval after training; 0 = skip (default: the preset's: smoke 5, cpu 10, gpu all)")
    p.add_argument("--schedule", default=None, help="learning-rate schedule after warm-up from 0: "
                   "linear, cosine or constant (default: the preset's)")
    p.add_argument("--warmup-steps", type=int, default=None, help="warm-up steps (default: the preset's)")
    p.add_argument("--warmup-ratio", type=parse_number, default=None,
                   help="warm-up as a fraction of the steps, instead of --warmup-steps")
    p.add_argument("--max-grad-norm", type=parse_number, default=None,
                   help="clip the gradient norm to this before each step; 0 = off (default: 1.0)")
    p.add_argument("--batching", default=None, help="bucket (rows of similar length batched together, "
                   "the default) or shuffle (random batches, padded to their longest row; the cpu preset's)")
    p.add_argument("--kernels", default=None, help="fused (LoRA layers and RMSNorms as autograd functions "
                   "with the same sums, and on CPU the frozen layers' matmuls by oneDNN; the default) or "
                   "library (PEFT's and transformers' own forward)")
    p.add_argument("--weight-decay", type=parse_number, default=None, help="AdamW weight decay (default: the preset's)")
    p.add_argument("--targets", default=None, help="layers that get adapters: all-linear, or module names "
                   "such as q_proj,v_proj (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", default=None, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 "
                   "(default: the preset's, else auto)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off: only use with models you trust)")


def default_preset() -> str:
    import torch
    return "gpu" if torch.cuda.is_available() else "cpu"


def config_from(args, **extra) -> TrialConfig:
    return TrialConfig(task=args.task, preset=args.preset or default_preset(), tasks_dir=args.tasks_dir,
                       data_dir=args.data_dir, model=args.model,
                       steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                       eval_interval=args.eval_interval, train_size=args.train_size,
                       val_size=args.val_size, eval_limit=args.eval_limit, schedule=args.schedule,
                       warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio,
                       max_grad_norm=args.max_grad_norm, batching=args.batching,
                       kernels=args.kernels, weight_decay=args.weight_decay, targets=args.targets,
                       device=args.device, dtype=args.dtype,
                       trust_remote_code=args.trust_remote_code, **extra)


def cmd_methods(args):
    import methods
    print("group: " + "; ".join(f"{g} = {text} (--methods {g})" for g, text in methods.GROUPS.items()))
    for name in methods.names():
        method = methods.get(name)
        print(f"{name:<13}{methods.group_of(name):<7}{method.description}")
        print(f"{'':<20}defaults: " + ", ".join(f"{k}={v}" for k, v in method.resolve({}).items()))


def cmd_trial(args):
    cfg = config_from(args, method=args.method, lr=args.lr, seed=args.seed,
                      hparams=dict(args.set), out=args.out)
    cfg = tasks.resolve(cfg)
    if not cfg.out:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.out = str(Path("runs", "trials", f"{cfg.method}-lr{cfg.lr:g}-seed{cfg.seed}-{stamp}").resolve())
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise UsageError(f"--out {quote(cfg.out)} already holds a trial: pass another --out, or --overwrite "
                         f"to replace it")
    writable("--out", out)
    task = tasks.get(cfg.task)
    result = task.run(cfg)
    scores = task.score(cfg) if result["status"] == "finished" else {}
    result.update(scores)
    print(json.dumps(result, indent=2))
    print(f"metrics: {Path(cfg.out, 'metrics.json')}")
    if scores:
        print(score_text(scores))
    return 0 if result["status"] == "finished" else 1


def score_text(scores: dict) -> str:
    """'GSM8K (flexible): 2/10 = 20% (95% CI 5.7–51%); GSM8K (strict): 1/10 = 10% (95% CI 1.8–40.4%)':
    the correct count of the questions scored, with its Wilson interval."""
    from reports.statistics import percent, wilson
    bench = next(k.removesuffix("_n") for k in scores if k.endswith("_n"))
    n = int(scores[f"{bench}_n"])
    parts = []
    for kind in ("flexible", "strict"):
        p = scores[f"{bench}_{kind}"]
        low, high = wilson(p * n, n)
        parts.append(f"{bench.upper()} ({kind}): {round(p * n)}/{n} = {percent(p)} "
                     f"(95% CI {percent(low).removesuffix('%')}–{percent(high)})")
    return "; ".join(parts)


def parse_lrs(text: str) -> list:
    return [parse_number(x) for x in text.split(",") if x.strip()]


def sweep_config(args):
    from harness import sweep
    from reports.robustness import LOSS_TOL
    names = methods_list(args.methods)
    return sweep.SweepConfig(
        methods=names, trial=config_from(args, method=names[0], lr=1.0, seed=args.seed),
        name=args.resume or args.name, search=args.search, trials=args.trials, scheduler=args.scheduler,
        seeds=args.seeds if args.seeds is not None else (3 if args.search == "refine" else 1), lrs=args.lrs,
        resolution=args.resolution, budget=args.budget, loss_tol=LOSS_TOL if args.loss_tol is None else args.loss_tol,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, address=args.address, scale_wait=args.scale_wait, storage=args.storage,
        tracking_uri=args.tracking_uri, resume=bool(args.resume), spaces=args.spaces)


def resumed_config(args):
    from harness import resume
    blank = sweep_config(build_parser().parse_args(["run"]))
    return resume.merge(resume.load(args.storage, args.resume), sweep_config(args), blank)


def cmd_run(args):
    from harness import sweep, tracking
    from harness.progress import table
    from harness.report import report
    sc = resumed_config(args) if args.resume else sweep_config(args)
    positive("--max-trials", args.max_trials)
    plan = sweep.prepare(sc)
    if sweep.trial_count(sc, plan) > args.max_trials:
        raise UsageError(f"the sweep has {sweep.trial_count(sc, plan)} trials, more than --max-trials "
                         f"{args.max_trials}: check --seeds, --lrs and the search spaces (--dry-run lists "
                         f"them), or raise --max-trials")
    if args.dry_run:
        print(sweep.describe(sc, plan))
        return 0
    count = f"at most {sc.budget}" if sc.search == "refine" else sweep.trial_count(sc, plan)
    print(f"sweep {sc.name}: {count} trials of {', '.join(sc.methods)} on preset {sc.trial.preset}; "
          f"tracking {tracking.redact(sc.tracking_uri)}; log {sweep.log_file(sc)}", flush=True)
    warnings_to_log()
    rows = sweep.run(sc, plan)
    print("\n" + table(rows))
    print(f"results: {storage.join(sc.path, 'results.json')}")
    if tracking.pending(sc.path):  # the report reads MLflow: it waits for them
        print(f"harness: {len(tracking.pending(sc.path))} records wait for the tracking store in "
              f"{storage.join(sc.path, tracking.PENDING)}: send them with `harness sync {sc.name}`, then "
              f"`harness report {sc.name}`", file=sys.stderr)
        return failures(rows)
    if sc.search == "refine":
        for line in json.loads(storage.read_text(storage.join(sc.path, "refine.json")))["lines"]:
            hp = "".join(f" {k}={v}" for k, v in line["hparams"].items())
            print(f"refine {line['method']}{hp}: {line['end']} after {line['trials']} trials: {line['summary']}")
        print(f"refine decisions: {storage.join(sc.path, 'refine.json')}")
    page = report(sc.tracking_uri, sc.trial.task, sc.name, sc.path, loss_tol=sc.loss_tol)
    verdict = json.loads(storage.read_text(storage.join(sc.path, "report", "report.json")))["verdict"]
    print("\nfound: " + ". ".join(verdict.split(". ")[:2]).rstrip(".") + ".")
    print(f"report: {page}")
    print(f"MLflow: {mlflow_link(sc)}")
    return failures(rows)


def failures(rows: list[dict]) -> int:
    """Exit code 1, with the errors counted on stderr, when every trial failed."""
    if not rows or any(r["status"] != "failed" for r in rows):
        return 0
    errors = collections.Counter(r.get("error") or "no error recorded" for r in rows)
    summary = "; ".join(f"{n} x {quote(error, 200)}" for error, n in errors.most_common())
    print(f"harness: all {len(rows)} trials failed: {summary}", file=sys.stderr)
    return 1


def mlflow_link(sc) -> str:
    """Where to see the sweep's trials: the tracking server's page, or `harness ui` and its page."""
    from harness import tracking
    if sc.tracking_uri.startswith(("http://", "https://")):
        server = urllib.parse.urlsplit(sc.tracking_uri)
        base = server._replace(netloc=server.netloc.rpartition("@")[2]).geturl().rstrip("/")  # no password
        return tracking.runs_link(sc.tracking_uri, sc.trial.task, sc.name, base)
    ui = "harness ui" + ("" if Path(sc.storage) == Path("runs").resolve() else f" --storage {sc.storage}")
    return f"`{ui}`, then {tracking.runs_link(sc.tracking_uri, sc.trial.task, sc.name)}"


def warnings_to_log():
    """Library warnings (FutureWarning, DeprecationWarning) tell a user nothing: they go to the
    sweep's harness.log with the libraries' logging (sweep.run routes the root logger there)."""
    import logging
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(logging.NullHandler())  # never the stderr fallback


def cmd_nightly(args):
    from harness import nightly, sweep, tracking
    from harness.report import publish
    suite = nightly.load_suite(args.config)
    if args.pin:
        uri = tracking.resolve_uri(suite.get("tracking_uri", ""), storage.location(suite.get("storage", "")))
        nightly.pin(uri, suite, args.pin)
        print(f"nightly {suite['suite']}: {args.pin} is the baseline now")
        return 0
    methods = suite["methods"]
    names = methods_list(methods if isinstance(methods, str) else ",".join(map(str, methods)))
    trial = TrialConfig(method=names[0], lr=1.0, task=suite["task"], preset=suite["preset"],
                        data_dir=suite.get("data_dir", ""), **suite.get("overrides") or {})
    sc = sweep.SweepConfig(
        methods=names, trial=trial, name=f"{suite['suite']}-{nightly.stamp()}", lrs=suite.get("lrs", []),
        seeds=suite.get("seeds", 1), search=suite.get("search", "grid"), loss_tol=suite["loss_tol"],
        storage=suite.get("storage", ""),
        tracking_uri=suite.get("tracking_uri", ""), address=suite.get("address", ""),
        cpus_per_trial=suite.get("cpus_per_trial", 0), gpus_per_trial=suite.get("gpus_per_trial", 0))
    try:
        plan = sweep.prepare(sc)
    except UsageError as err:
        raise UsageError(f"nightly config {args.config}: {err}") from None
    if suite.get("baseline"):  # before the sweep: a typo must not cost a night
        try:
            nightly.night_run(sc.tracking_uri, suite, suite["baseline"])
        except UsageError as err:
            raise UsageError(f"nightly config {args.config}: field baseline: {err}") from None
    print(f"nightly {suite['suite']}: sweep {sc.name}, {len(plan)} trials", flush=True)
    sweep.run(sc, plan, tags={"harness.suite": suite["suite"]})
    parent, rows, now, section, found = nightly.judge(sc.tracking_uri, suite, sc.name)
    with storage.local_folder(storage.join(sc.path, "report")) as folder:
        publish(sc.tracking_uri, parent, now, rows, folder, f"Nightly {suite['suite']}: {sc.name}", [section])
    print(section[2])
    print(f"report: {storage.join(sc.path, 'report', 'report.html')}")
    return 1 if found else 0


def cmd_report(args):
    from harness import tracking
    from harness.report import report
    if args.tasks_dir:
        tasks.add_folder(args.tasks_dir)
    check_name("the sweep name", args.name)
    tasks.get(args.task)
    for flag in ("loss_tol", "acc_tol"):
        if getattr(args, flag) is not None:
            fraction(f"--{flag.replace('_', '-')}", getattr(args, flag))
    for flag in ("reference_lr", "target_loss"):
        if getattr(args, flag) is not None:
            positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    where = storage.location(args.storage)
    storage.check(where)
    if tracking.pending(storage.join(where, args.name)):  # MLflow, which the report reads, lacks them
        raise UsageError(f"sweep {args.name}: records wait for the tracking store in "
                         f"{storage.join(where, args.name, tracking.PENDING)}: run `harness sync {args.name}` first")
    uri = tracking.resolve_uri(args.tracking_uri, where)
    check_recorded(uri, args.task, args.name)
    options = dict(metric=args.metric, loss_tol=args.loss_tol, acc_tol=args.acc_tol,
                   reference_lr=args.reference_lr, target_loss=args.target_loss)
    print(report(uri, args.task, args.name, storage.join(where, args.name), **options))
    return 0


def cmd_sync(args):
    """Send a sweep's MLflow writes that were queued while its tracking store was down."""
    from harness import resume, tracking
    sc = resume.load(args.storage, args.name)
    sc.storage = storage.location(args.storage)
    saved = "" if "***" in sc.tracking_uri else sc.tracking_uri  # saved without its password
    uri = tracking.resolve_uri(args.tracking_uri or saved, sc.storage)
    waiting = tracking.pending(sc.path)
    if not waiting:
        print(f"sweep {sc.name}: nothing waits for the tracking store")
        return 0
    parent = tracking.find_parent(tracking.client(uri), sc.trial.task, sc.name)
    if parent is None:
        raise UsageError(f"no sweep named {quote(sc.name)} in {tracking.redact(uri)}: pass the --tracking-uri "
                         f"it ran with")
    try:
        sent = tracking.sync(uri, sc.trial.task, sc.name, sc.path, parent)
    except Exception as err:
        left = len(tracking.pending(sc.path))
        raise Halt(f"tracking store {tracking.redact(uri)} refused a write ({type(err).__name__}): {left} records "
                   f"still wait; run `harness sync {sc.name}` again when it answers") from None
    print(f"sweep {sc.name}: sent {sent} queued records to {tracking.redact(uri)}")
    return 0


def check_recorded(uri: str, task: str, name: str):
    """A sweep to report on must be in the store and done: no store is created, no running sweep read."""
    from harness import tracking
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no sweep named {quote(name)}: there is no tracking store at {quote(uri)}: "
                         f"check --storage and --tracking-uri")
    mlf = tracking.client(uri)
    parent = tracking.find_parent(mlf, task, name)
    if parent and mlf.get_run(parent).info.status == "RUNNING":
        raise UsageError(f"sweep {quote(name)} is still running (or its driver was killed: finish it with "
                         f"`harness run --resume {name}`): report on it when it has ended")


def methods_list(text: str) -> list[str]:
    import methods
    names = methods.group(text) if text in methods.GROUPS else [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        methods.get(name)
    if not names:
        raise UsageError("--methods is empty: use all, every or a comma list such as lora,pissa")
    return names


def ui_command(uri: str, host: str, port: int) -> tuple[list[str], dict]:
    """(argv, environment) of the MLflow server, as harness/ui.py changes it. The store URI goes in
    the environment, which only its user can read: in argv, its password would show in every user's
    process list."""
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
            "--app-name", "harness"]
    return argv, {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}


def cmd_ui(args):
    from harness.tracking import experiment_links, redact, resolve_uri
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
    if not args.host or any(c.isspace() or c in "/@" for c in args.host):
        raise UsageError(f"--host {quote(args.host)} is not a host name or address: use 127.0.0.1 or 0.0.0.0")
    uri = resolve_uri(args.tracking_uri, storage.location(args.storage))
    print(f"MLflow UI for {redact(uri)} at http://{args.host}:{args.port}", flush=True)
    for name, link in experiment_links(uri, f"http://{args.host}:{args.port}"):
        print(f"  {name}: {link}", flush=True)
    os.execve(sys.executable, *ui_command(uri, args.host, args.port))


def add_run_options(p):
    p.add_argument("--methods", default="all", help="all (the five of the original comparison), every (all "
                   "registered methods), or a comma list (see `harness methods`)")
    p.add_argument("--search", default="grid", help="grid (ladder x method grid x seeds), optuna, or refine "
                   "(adaptive ladder: coarse decades, then rungs and seeds where they decide; docs/sweeps.md)")
    p.add_argument("--trials", type=int, default=8, help="Optuna trials per method (default: 8)")
    p.add_argument("--scheduler", default="none", help="none, or asha (early stopping on val loss)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per grid point; refine: most seeds per rung "
                   "(default: 1; refine 3)")
    p.add_argument("--loss-tol", type=parse_number, default=None, help="robust window: val loss within this "
                   "fraction of the best, for refine and the report (default: the report's, 0.05; a smaller one "
                   "where the losses of every rung lie within 5%%, as on the smoke preset)")
    p.add_argument("--resolution", type=parse_number, default=0.25, help="refine: finest ladder step in "
                   "decades, rounded down to 1/2^k (default: 0.25)")
    p.add_argument("--budget", type=int, default=0, help="refine: most trials in all, shared evenly by the "
                   "methods (default: the full grid at --resolution x --seeds)")
    p.add_argument("--seed", type=int, default=0, help="first seed, and Optuna's seed (default: 0)")
    p.add_argument("--lrs", type=parse_lrs, default=[], help="learning-rate ladder, for example "
                   "1e-5,1e-4,1e-3 (default: search_spaces/_ladders.yaml for the preset)")
    p.add_argument("--cpus-per-trial", type=float, default=0, help="CPUs per trial (default: all "
                   "CPUs on a CPU machine, 4 with GPUs)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial, fractions "
                   "allowed (default: 1 where a GPU is visible)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: as "
                   "resources allow)")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial")
    p.add_argument("--address", default="", help="Ray cluster to join (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.add_argument("--scale-wait", type=parse_number, default=0, metavar="SECONDS", help="for a cluster that adds "
                   "nodes on demand (an autoscaler): a trial no node fits yet is a warning, and the sweep ends "
                   "(exit 2) if no trial started within SECONDS (default 0: refused at once)")
    p.add_argument("--storage", default="", help="folder or bucket URI (s3://bucket/prefix) for sweep "
                   "files and Ray's trial checkpoints; credentials from AWS_* variables (default: ./runs)")
    p.add_argument("--name", default="", help="sweep name (default: <task>-<preset>-<time>)")
    p.add_argument("--resume", default="", metavar="NAME", help="continue the interrupted sweep NAME")
    p.add_argument("--spaces", default="", help="folder of search-space YAML files (default: the "
                   "repository's search_spaces/)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and compute estimate only")
    p.add_argument("--max-trials", type=int, default=1000, help="refuse a sweep of more trials than "
                   "this, a guard against typos such as --seeds 400 (default: 1000)")
    p.add_argument("--tracking-uri", default="", help="MLflow URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite under --storage)")


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Learning-rate robustness benchmarks of LoRA methods.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("methods", help="list the methods, their descriptions and default hyperparameters")
    trial = sub.add_parser("trial", help="fine-tune one method at one learning rate")
    trial.add_argument("--method", required=True, help="method name (see `harness methods`)")
    trial.add_argument("--lr", type=parse_number, default=None, help="learning rate, for example 2e-4 "
                       "(required, except on toy tasks, their step size, and presets that set one, like peft)")
    trial.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    trial.add_argument("--set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                       help="method hyperparameter, repeatable: --set rank=16 --set reg=1e-4")
    trial.add_argument("--out", default="", help="trial folder (default: runs/trials/<method>-lr<lr>-...)")
    trial.add_argument("--overwrite", action="store_true", help="replace the trial in an --out folder that "
                       "holds one")
    add_trial_options(trial)
    run = sub.add_parser("run", help="sweep methods over learning rates on Ray Tune, tracked in MLflow")
    add_run_options(run)
    add_trial_options(run)
    report = sub.add_parser("report", help="learning-rate robustness report of a recorded sweep")
    report.add_argument("name", help="sweep name (see the sweep folders under --storage)")
    report.add_argument("--task", default="gsm8k", help="task of the sweep (default: gsm8k)")
    add_tasks_dir(report)
    report.add_argument("--storage", default="", help="sweeps folder or bucket URI (default: ./runs)")
    report.add_argument("--tracking-uri", default="", help="MLflow URI (default: as for harness run)")
    report.add_argument("--metric", default="auto", choices=("auto", "val_loss", "accuracy"),
                        help="score: auto = accuracy when >= 200 GSM8K questions were scored, else val_loss")
    report.add_argument("--loss-tol", type=parse_number, default=None,
                        help="robust window: val loss within this fraction of the best (default: the sweep's "
                        "--loss-tol, else the report's)")
    report.add_argument("--acc-tol", type=parse_number, default=0.02,
                        help="robust window: accuracy within this much of the best (default: 0.02 = 2 points)")
    report.add_argument("--reference-lr", type=parse_number, default=None,
                        help="shared reference learning rate (default: LoRA's best)")
    report.add_argument("--target-loss", type=parse_number, default=None,
                        help="convergence target val loss (default: the highest final loss of any method at "
                        "its best lr, which every method reaches)")
    sync = sub.add_parser("sync", help="send a sweep's MLflow records that waited while its tracking store was down")
    sync.add_argument("name", help="sweep name (see the sweep folders under --storage)")
    sync.add_argument("--storage", default="", help="sweeps folder or bucket URI (default: ./runs)")
    sync.add_argument("--tracking-uri", default="", help="MLflow URI (default: the sweep's)")
    nightly = sub.add_parser("nightly", help="run a nightly suite and compare it with the last night and the "
                             "pinned baseline; exit code 1 on a regression")
    nightly.add_argument("--config", required=True, help="suite YAML (see examples/nightly/)")
    nightly.add_argument("--pin", default="", metavar="NAME", help="only pin the night NAME as the suite's "
                         "baseline (the newest pin wins) and exit")
    ui = sub.add_parser("ui", help="start the MLflow UI on the sweeps' tracking store")
    ui.add_argument("--tracking-uri", default="", help="MLflow URI (default: as for harness run)")
    ui.add_argument("--storage", default="", help="sweeps folder whose store to show (default: ./runs)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    return parser


COMMANDS = {"methods": cmd_methods, "trial": cmd_trial, "run": cmd_run, "report": cmd_report,
            "sync": cmd_sync, "nightly": cmd_nightly,
            "ui": cmd_ui}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("trial", "run", "nightly"):  # before any import writes its cache there
            writable("HOME (the model, data and library caches)", Path.home())
        quiet_libraries()
        return COMMANDS[args.command](args) or 0
    except UsageError as err:
        print(f"harness: error: {' '.join(str(err).split())[:2000]}", file=sys.stderr)
        return 2
    except Interrupted as err:  # the sweep stopped what it started (harness/interrupt.py)
        print(f"harness: interrupted: resume with {err.resume}", file=sys.stderr)
        return 128 + err.signum
    except Halt as err:
        print(f"harness: {' '.join(str(err).split())[:2000]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

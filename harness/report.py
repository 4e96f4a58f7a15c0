"""Reports of recorded sweeps: read the trials from MLflow, analyze, write, attach to the sweep."""

from pathlib import Path

import reports
from harness import storage, tasks, tracking
from harness.tracking import _value
from reports.render import _html_table, _md_table
from reports.robustness import LOSS_TOL

QUESTIONS_TO_RANK = 200  # fewer scored questions cannot separate methods: val loss ranks instead


def analysis_of(uri: str, task: str, name: str, metric: str = "auto", **options) -> tuple:
    """(parent run id, trial rows, analysis) of a sweep."""
    parent, params, rows = tracking.sweep_rows(uri, task, name)
    if options.get("loss_tol") is None:  # the window the sweep was run with (refine searched with it)
        options["loss_tol"] = float(params.get("loss_tol", LOSS_TOL))
    trial = {k.removeprefix("trial."): _value(v) for k, v in params.items() if k.startswith("trial.")}
    questions = int(trial.get("eval_limit") or 0)
    if metric == "auto":
        metric = "accuracy" if questions >= QUESTIONS_TO_RANK else "val_loss"
        reason = (f"{questions} {_benchmark(task)} questions were scored per trial (accuracy ranks from "
                  f"{QUESTIONS_TO_RANK})" if metric == "accuracy" else
                  f"only {questions} {_benchmark(task)} questions were scored per trial, too few to rank "
                  f"methods (accuracy ranks from {QUESTIONS_TO_RANK}; --metric accuracy forces it)"
                  if questions else "no questions were scored")
    else:
        reason = f"--metric {metric} was asked for"
    llm = isinstance(tasks.get(task), tasks.LLMTask)
    setting = {**(_llm_setting(trial) if llm else _toy_setting(trial)), "task": task,
               "model": trial.get("model"), "score_reason": reason,
               "search": f"{params.get('search', 'grid')} search" + (
                   f", {params['scheduler']} scheduler" if params.get("scheduler", "none") != "none" else "")}
    loss_name = "validation loss" if llm else "risk"
    return parent, rows, reports.analyze(rows, metric=metric, loss_name=loss_name, setting=setting, **options)


def _benchmark(task) -> str:
    scoring = getattr(tasks.get(task), "scoring", None)
    return scoring.benchmark.upper() if scoring else "test"


def _llm_setting(t) -> dict:
    """The training budget, validation and scoring of an LLM sweep (each part where recorded)."""
    out = {}
    if all(t.get(k) for k in ("steps", "batch_size", "max_length")):
        examples = t["batch_size"] * (t.get("grad_accum") or 1)
        out["budget"] = (f"{t['steps']} steps of {examples} examples of ≤ {t['max_length']} tokens "
                         f"(≤ {t['steps'] * examples * t['max_length']:,} training tokens per trial)")
    if t.get("val_size"):
        out["validation"] = f"validation loss on {t['val_size']} held-out rows"
    out["questions"] = f"{t['eval_limit']} test questions scored" if t.get("eval_limit") else "no questions scored"
    return out


def _toy_setting(t) -> dict:
    return {"budget": f"{t['steps']} full-batch gradient steps per trial" if t.get("steps") else "",
            "validation": "risk computed exactly from the weights", "questions": "no questions scored"}


def trials_section(rows: list) -> tuple:
    """(heading, html, markdown) of a table of every trial: its status and where it ran."""
    head = ["method", "lr", "seed", "status", "host", "Ray node"]
    body = [[r["method"], f"{r['lr']:g}", str(r["seed"]), r["status"], r.get("host") or "-",
             (r.get("node") or "-")[:12]] for r in sorted(rows, key=lambda r: (r["method"], r["lr"], r["seed"]))]
    return "Trials", _html_table(head, body), _md_table(head, body)


def publish(uri: str, parent: str, analysis: dict, rows: list, folder: Path, title: str,
            extra_sections=()) -> Path:
    """Write report.{html,md,json} under folder and attach them to the parent run."""
    paths = reports.write_report(analysis, rows, folder, title=title, extra_sections=extra_sections)
    mlf = tracking.client(uri)
    for path in sorted(Path(folder).iterdir()):  # the report files, and a toy section's PNGs
        mlf.log_artifact(parent, str(path), "report")
    return paths["html"]


def report(uri: str, task: str, name: str, where: str, **options) -> str:
    """The report of sweep `name`, written to <where>/report (a folder or bucket location); the
    location of its report.html."""
    parent, rows, analysis = analysis_of(uri, task, name, **options)
    location = storage.join(where, "report")
    with storage.local_folder(location) as folder:
        extra = [*tasks.get(task).report_sections(analysis, rows, folder), trials_section(rows)]
        publish(uri, parent, analysis, rows, folder, f"Learning-rate robustness: {name}", extra)
    tracking.name_sweep(uri, parent, name, headline(analysis))
    return storage.join(location, "report.html")


def headline(analysis) -> str:
    """The verdict's first sentence: who is best, at which lr."""
    return analysis["verdict"].split(". ")[0].rstrip(".")

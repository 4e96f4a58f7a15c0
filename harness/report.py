"""Reports of recorded sweeps: read the trials from MLflow, analyze, write, attach to the sweep."""

from pathlib import Path

import reports
from harness import storage, tasks, tracking
from reports.render import _html_table, _md_table


def analysis_of(uri: str, task: str, name: str, metric: str = "auto", **options) -> tuple:
    """(parent run id, trial rows, analysis) of a sweep."""
    parent, params, rows = tracking.sweep_rows(uri, task, name)
    if metric == "auto":  # accuracy only when enough questions were scored to rank methods
        metric = "accuracy" if int(params.get("trial.eval_limit", 0)) >= 200 else "val_loss"
    return parent, rows, reports.analyze(rows, metric=metric, **options)


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
    return storage.join(location, "report.html")

"""Reports of recorded sweeps: read the trials from MLflow, analyze, write, attach to the sweep."""

from pathlib import Path

import reports
from harness import tasks, tracking


def analysis_of(uri: str, task: str, name: str, metric: str = "auto", **options) -> tuple:
    """(parent run id, trial rows, analysis) of a sweep."""
    parent, params, rows = tracking.sweep_rows(uri, task, name)
    if metric == "auto":  # accuracy only when enough questions were scored to rank methods
        metric = "accuracy" if int(params.get("trial.eval_limit", 0)) >= 200 else "val_loss"
    return parent, rows, reports.analyze(rows, metric=metric, **options)


def publish(uri: str, parent: str, analysis: dict, rows: list, folder: Path, title: str,
            extra_sections=()) -> Path:
    """Write report.{html,md,json} under folder and attach them to the parent run."""
    paths = reports.write_report(analysis, rows, folder, title=title, extra_sections=extra_sections)
    mlf = tracking.client(uri)
    for path in sorted(Path(folder).iterdir()):  # the report files, and a toy section's PNGs
        mlf.log_artifact(parent, str(path), "report")
    return paths["html"]


def report(uri: str, task: str, name: str, folder: Path, **options) -> Path:
    parent, rows, analysis = analysis_of(uri, task, name, **options)
    extra = tasks.get(task).report_sections(analysis, rows, folder / "report")
    return publish(uri, parent, analysis, rows, folder / "report", f"Learning-rate robustness: {name}", extra)

"""Nightly benchmark suites: run a sweep from a suite file, compare with the last good night.

A suite YAML names the methods, task, preset, ladder, seeds and tolerances. Each night is a sweep
named <suite>-<time> whose parent run carries the tag harness.suite. Regressions against the
previous finished night of the same suite: a method's best score worse beyond tolerance, its
robust window narrower, or more diverged or failed trials."""

import base64
import html
import io
import time
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from harness.config import UsageError

REQUIRED = ("suite", "task", "preset", "methods")
OPTIONAL = ("lrs", "seeds", "metric", "loss_tol", "acc_tol", "data_dir", "storage", "tracking_uri",
            "overrides", "search", "cpus_per_trial", "gpus_per_trial", "address")
NIGHTS_IN_TREND = 14


def load_suite(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"nightly config {path} does not exist: pass --config with a suite YAML")
    try:
        suite = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        raise UsageError(f"nightly config {path} is not valid YAML: fix the file") from None
    if not isinstance(suite, dict):
        raise UsageError(f"nightly config {path} must be a mapping with {', '.join(REQUIRED)}")
    for key in REQUIRED:
        if key not in suite:
            raise UsageError(f"nightly config {path}: field {key} is missing: add `{key}: ...`")
    unknown = sorted(set(suite) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UsageError(f"nightly config {path}: unknown field {unknown[0]!r}: use "
                         f"{', '.join(REQUIRED + OPTIONAL)}")
    for key in ("data_dir", "storage"):  # relative to the suite file, so cron can run from anywhere
        if suite.get(key):
            suite[key] = str((file.parent / suite[key]).resolve())
    suite.setdefault("metric", "val_loss")
    suite.setdefault("loss_tol", 0.05)
    suite.setdefault("acc_tol", 0.02)
    return suite


def recent_nights(mlf, exp_id: str, suite: str) -> list[str]:
    """Sweep names of the suite's last finished nights, newest first."""
    runs = mlf.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=NIGHTS_IN_TREND,
                           filter_string=f"tags.`harness.suite` = '{suite}' and attributes.status = 'FINISHED'")
    return [r.data.tags["harness.sweep"] for r in runs]


def regressions(now: dict, before: dict) -> list[str]:
    """What got worse from one night's analysis to the next, one sentence each."""
    found = []
    lower = now["lower_is_better"]
    for name, m in now["methods"].items():
        old = before["methods"].get(name)
        if old is None:
            continue
        if old["best_score"] is not None:
            if m["best_score"] is None:
                found.append(f"{name}: no usable learning rate tonight (best was {old['best_score']:.4g})")
            elif lower and m["best_score"] > old["best_score"] * (1 + now["loss_tol"]):
                found.append(f"{name}: best val loss {m['best_score']:.4g} vs {old['best_score']:.4g} "
                             f"(> {now['loss_tol']:.0%} worse)")
            elif not lower and m["best_score"] < old["best_score"] - now["acc_tol"]:
                found.append(f"{name}: best accuracy {m['best_score']:.3f} vs {old['best_score']:.3f} "
                             f"(> {now['acc_tol'] * 100:.0f} points lower)")
        if old["window"] and m["window"] and m["window"]["decades"] < old["window"]["decades"] - 1e-9:
            found.append(f"{name}: robust window {m['window']['decades']:.2f} decades vs "
                         f"{old['window']['decades']:.2f}")
        for kind in ("diverged", "failed"):
            if m[kind] > old[kind]:
                found.append(f"{name}: {m[kind]} {kind} trials vs {old[kind]}")
    return found


def trend_plot(nights: list[tuple[str, dict]]) -> bytes:
    """Best score per method over the last nights (oldest first)."""
    fig = Figure(figsize=(9.5, 4), layout="constrained")
    ax = fig.subplots()
    methods = sorted({m for _, a in nights for m in a["methods"]})
    for name in methods:
        ys = [a["methods"].get(name, {}).get("best_score") for _, a in nights]
        ax.plot(range(len(nights)), [float("nan") if y is None else y for y in ys], marker="o", label=name)
    ax.set_xticks(range(len(nights)), [n for n, _ in nights], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("night")
    ax.set_ylabel(nights[-1][1]["score_name"])
    ax.set_title("Best score per method over the last nights")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def since_last_night(previous: str | None, found: list[str], nights: list[tuple[str, dict]]):
    """The (heading, html, markdown) section the report appends."""
    if previous is None:
        lines = ["First night of this suite: nothing to compare with."]
    else:
        lines = [f"Compared with {previous}: " + ("no regression." if not found else
                                                  f"{len(found)} regression(s):")] + found
    md = "\n".join(f"- {line}" if i else line for i, line in enumerate(lines))
    body = f"<p>{html.escape(lines[0])}</p>" + "".join(
        f"<li>{html.escape(line)}</li>" for line in lines[1:])
    if len(nights) > 1:
        png = base64.b64encode(trend_plot(nights)).decode()
        body += f'<img src="data:image/png;base64,{png}" alt="best score per method over the last nights">'
    return ("Since last night", body, md)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")

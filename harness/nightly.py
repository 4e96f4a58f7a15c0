"""Nightly benchmark suites: run a sweep from a suite file, compare it with the last finished night
and with a pinned baseline night.

A suite YAML names the methods, task, preset, ladder, seeds and tolerances; it is validated whole
before anything runs. Each night is a sweep named <suite>-<time> whose parent run carries the tag
harness.suite. The baseline is the suite's `baseline:` night, else the night pinned last with
`harness nightly --pin NAME` (tag harness.pinned on its parent run). Comparing two nights, a
method regressed when:
- its best score is worse beyond the noise of both nights (the 95% interval of the difference,
  reports.statistics.compare_sweeps, excludes 0 on the worse side); where neither night has two
  seeds at a rung (loss metric), the noise is unknown and the fixed tolerance decides instead;
- it has no usable learning rate any more;
- its robust window is narrower, and a rung that left it diverged, failed, or lies outside the
  tolerance beyond noise (a rung just past the tolerance within noise is not counted);
- it has more diverged or failed trials."""

import base64
import datetime
import html
import io
import math
import re
import time
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from harness.config import PRESETS, TrialConfig, UsageError, load_yaml, quote
from reports import statistics as stats
from reports.plots import lr_label
from reports.robustness import LOSS_TOL, METRICS

REQUIRED = ("suite", "task", "preset", "methods")
OPTIONAL = ("lrs", "seeds", "metric", "loss_tol", "acc_tol", "data_dir", "storage", "tracking_uri",
            "overrides", "search", "cpus_per_trial", "gpus_per_trial", "address", "baseline")
TEXT = ("data_dir", "storage", "tracking_uri", "address")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # suite and night names go into MLflow filters
NIGHTS_IN_TREND = 14


def load_suite(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"nightly config {path} does not exist: pass --config with a suite YAML")
    try:
        suite = load_yaml(file.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"nightly config {path} is not valid YAML ({getattr(err, 'problem', None) or 'a syntax error'}): "
                         f"fix the file") from None
    if not isinstance(suite, dict):
        raise UsageError(f"nightly config {path} must be a mapping with {', '.join(REQUIRED)}")
    try:
        check_suite(suite)
    except UsageError as err:
        raise UsageError(f"nightly config {path}: {err}") from None
    for key in ("data_dir", "storage"):  # relative to the suite file, so cron can run from anywhere
        if suite.get(key) and "://" not in suite[key]:  # a bucket URI stays as it is
            suite[key] = str((file.parent / suite[key]).resolve())
    suite.setdefault("metric", "val_loss")
    suite.setdefault("loss_tol", LOSS_TOL)
    suite.setdefault("acc_tol", 0.02)
    return suite


def check_suite(suite: dict):
    """Every field's presence, type and value; one line naming the first bad field."""
    import methods
    from harness import tasks
    for key in REQUIRED:
        if key not in suite:
            raise UsageError(f"field {key} is missing: add `{key}: ...`")
    unknown = sorted(set(suite) - set(REQUIRED) - set(OPTIONAL), key=str)
    if unknown:
        raise UsageError(f"unknown field {quote(unknown[0])}: use {', '.join(REQUIRED + OPTIONAL)}")
    for key in ("suite", "baseline"):
        if key in suite:
            check_name(f"field {key}", suite[key])
    for key in ("task", "preset", *TEXT):
        if key in suite and not isinstance(suite[key], str):
            raise UsageError(f"field {key} must be text, got {_quote(suite[key])}")
    _field("task", tasks.get, suite["task"])
    if suite["preset"] not in PRESETS:
        raise UsageError(f"field preset: unknown preset {_quote(suite['preset'])}: use {', '.join(PRESETS)}")
    names = suite["methods"]
    if isinstance(names, str):
        names = methods.group(names) if names in methods.GROUPS else [m.strip() for m in names.split(",") if m.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(m, str) for m in names):
        raise UsageError(f"field methods must be all, every, a comma list or a YAML list of names, got {_quote(suite['methods'])}")
    for name in names:
        _field("methods", methods.get, name)
    lrs = suite.get("lrs", [])
    if not isinstance(lrs, list) or not all(_number(x) and x > 0 for x in lrs):
        raise UsageError(f"field lrs must be a list of positive numbers such as [1e-4, 3e-4], got {_quote(lrs)}")
    if "seeds" in suite and not (isinstance(suite["seeds"], int) and not isinstance(suite["seeds"], bool)
                                 and suite["seeds"] > 0):
        raise UsageError(f"field seeds must be a whole number > 0, got {_quote(suite['seeds'])}")
    if suite.get("metric", "val_loss") not in (*METRICS, "auto"):
        raise UsageError(f"field metric: use val_loss, accuracy or auto, got {_quote(suite['metric'])}")
    for key in ("loss_tol", "acc_tol"):
        if key in suite and not (_number(suite[key]) and 0 <= suite[key] < 1):
            raise UsageError(f"field {key} must be a fraction in [0, 1) such as 0.05, got {_quote(suite[key])}")
    if suite.get("search", "grid") not in ("grid", "optuna"):
        raise UsageError(f"field search: use grid or optuna, got {_quote(suite['search'])}")
    for key in ("cpus_per_trial", "gpus_per_trial"):
        if key in suite and not (_number(suite[key]) and suite[key] >= 0):
            raise UsageError(f"field {key} must be a number >= 0, got {_quote(suite[key])}")
    check_overrides(suite.get("overrides", {}))


def check_overrides(overrides):
    from dataclasses import fields
    if not isinstance(overrides, dict):
        raise UsageError(f"field overrides must be a mapping such as {{steps: 8}}, got {_quote(overrides)}")
    allowed = {f.name for f in fields(TrialConfig)} - {"method", "lr", "task", "preset", "data_dir", "hparams"}
    for key, value in overrides.items():
        if key not in allowed:
            raise UsageError(f"unknown override {quote(key)}: use {', '.join(sorted(allowed))}")
        if not isinstance(value, (str, int, float, bool)):
            raise UsageError(f"field overrides.{key} must be a number or text, got {_quote(value)}")


def check_name(what: str, name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"{what} must be a name of letters, digits, '.', '_' or '-', got {_quote(name)}")
    return name


def _field(key, check, value):
    try:
        check(value)
    except UsageError as err:
        raise UsageError(f"field {key}: {err}") from None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _quote(value) -> str:
    return quote(value)


# --- nights in MLflow ---------------------------------------------------------------------------

def _nights(mlf, exp_id: str, suite: str, extra: str = "", **options) -> list:
    query = f"tags.`harness.suite` = '{suite}' and tags.`harness.kind` = 'sweep'" + extra
    return mlf.search_runs([exp_id], filter_string=query, **options)


def recent_nights(mlf, exp_id: str, suite: str) -> list[str]:
    """Sweep names of the suite's last finished nights, newest first."""
    runs = _nights(mlf, exp_id, suite, " and attributes.status = 'FINISHED'",
                   order_by=["attributes.start_time DESC"], max_results=NIGHTS_IN_TREND)
    return [r.data.tags["harness.sweep"] for r in runs]


def night_run(uri: str, suite: dict, night: str) -> str:
    """The parent run id of a finished night of the suite; a UsageError naming the fix if none."""
    from harness import tracking
    check_name("the night", night)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no night named {quote(night)} of suite {suite['suite']}: no store at {uri}: run a night "
                         f"first, or check storage and tracking_uri")
    mlf = tracking.client(uri)
    exp = mlf.get_experiment_by_name(suite["task"])
    runs = _nights(mlf, exp.experiment_id, suite["suite"], f" and tags.`harness.sweep` = '{night}'") if exp else []
    if not runs:
        recent = recent_nights(mlf, exp.experiment_id, suite["suite"])[:3] if exp else []
        raise UsageError(f"no night named {quote(night)} of suite {suite['suite']} in {tracking.redact(uri)}: "
                         + (f"pick one such as {', '.join(recent)}" if recent else "run a night first"))
    if runs[0].info.status != "FINISHED":
        raise UsageError(f"night {night} did not finish (status {runs[0].info.status}): pick a finished night")
    return runs[0].info.run_id


def pin(uri: str, suite: dict, night: str):
    """Make the night the suite's baseline: the newest pin wins."""
    from harness import tracking
    run_id = night_run(uri, suite, night)
    tracking.client(uri).set_tag(run_id, "harness.pinned", datetime.datetime.now(datetime.timezone.utc).isoformat())


def baseline_night(mlf, exp_id: str, suite: dict) -> str | None:
    """The suite file's `baseline:` night, else the night pinned last, else None."""
    if suite.get("baseline"):
        return suite["baseline"]
    runs = _nights(mlf, exp_id, suite["suite"], " and attributes.status = 'FINISHED'", max_results=50000)
    pinned = [r for r in runs if r.data.tags.get("harness.pinned")]
    return max(pinned, key=lambda r: r.data.tags["harness.pinned"]).data.tags["harness.sweep"] if pinned else None


# --- the regression rules -----------------------------------------------------------------------

def _best_rung(m):
    return next(r for r in m["rungs"] if r["lr"] == m["best_lr"])


def best_change(name: str, now: dict, before: dict) -> dict | None:
    """A method's best score tonight against the other night's: the difference with its 95%
    interval (stats.compare_sweeps) and a word: worse, better, within noise, or unknown noise."""
    m, old = now["methods"][name], before["methods"].get(name)
    if old is None or m["best_score"] is None or old["best_score"] is None:
        return None
    key = METRICS[now["metric"]]
    c = stats.compare_sweeps(_best_rung(m), now["noise"][key], _best_rung(old), before["noise"][key], key)
    worse_sign = 1 if now["lower_is_better"] else -1
    if c["decided"] is None:
        # no noise known: the fixed tolerance decides
        tol = now["loss_tol"] * old["best_score"] if now["lower_is_better"] else now["acc_tol"]
        worse = c["diff"] * worse_sign > tol + 1e-12
        c["word"] = "worse beyond tolerance (noise unknown)" if worse else "within tolerance (noise unknown)"
    else:
        worse = c["decided"] and c["diff"] * worse_sign > 0
        c["word"] = ("worse" if worse else "better") + " beyond noise" if c["decided"] else "within noise"
    c.update(method=name, now=m["best_score"], before=old["best_score"], worse=worse)
    return c


def _signed(x) -> str:
    return ("+" if x > 0 else "") + stats.number(x, 3)


def _change_text(now, c) -> str:
    """'lora: best val loss 1.016 vs 1 (difference +0.016, 95% CI 0.012 to 0.02; noise: seeds): worse
    beyond noise'."""
    what = "val loss" if now["lower_is_better"] else "accuracy"
    interval = "" if c["low"] is None else \
        f", 95% CI {stats.number(c['low'], 3)} to {stats.number(c['high'], 3)}; noise: {c['noise']}"
    return (f"{c['method']}: best {what} {stats.score_text(now, c['now'])} vs {stats.score_text(now, c['before'])} "
            f"(difference {_signed(c['diff'])}{interval}): {c['word']}")


def regressions(now: dict, before: dict) -> list[str]:
    """What got worse from the other night's analysis to tonight's, one sentence each."""
    found = []
    for name, m in now["methods"].items():
        old = before["methods"].get(name)
        if old is None:
            continue
        change = best_change(name, now, before)
        if old["best_score"] is not None and m["best_score"] is None:
            found.append(f"{name}: no usable learning rate tonight (best was "
                         f"{stats.score_text(now, old['best_score'])})")
        elif change and change["worse"]:
            found.append(_change_text(now, change))
        if old["window"] and m["window"] and m["window"]["decades"] < old["window"]["decades"] - 1e-9:
            lost = window_losses(now, name, old["window"])
            if lost:
                found.append(f"{name}: robust window {m['window']['decades']:.2f} decades vs "
                             f"{old['window']['decades']:.2f}; out: {', '.join(lost)}")
        for kind in ("diverged", "failed"):
            if m[kind] > old[kind]:
                found.append(f"{name}: {m[kind]} {kind} trials vs {old[kind]}")
    return found


def window_losses(now: dict, name: str, old_window: dict) -> list[str]:
    """The rungs of the other night's window that tonight's window lost for a reason beyond noise:
    not ok (diverged, failed, missing), or outside the tolerance by more than the 95% noise of the
    gap to the tolerance line (unknown noise counts as beyond)."""
    m, lower = now["methods"][name], now["lower_is_better"]
    key = METRICS[now["metric"]]
    noise, best = now["noise"][key], _best_rung(m)
    out = []
    for r in m["rungs"]:
        inside_old = old_window["low"] - 1e-12 <= r["lr"] <= old_window["high"] * (1 + 1e-9)
        inside_new = m["window"]["low"] - 1e-12 <= r["lr"] <= m["window"]["high"] * (1 + 1e-9)
        if not inside_old or inside_new:
            continue
        if r["status"] != "ok":
            out.append(f"{lr_label(r['lr'])} {r['status']}")
            continue
        scale = 1 + now["loss_tol"] if lower else 1
        line = best["score"] * scale if lower else best["score"] - now["acc_tol"]
        gap = r["score"] - line if lower else line - r["score"]
        if gap <= 0:
            continue  # within tolerance, cut off by another rung
        se = [_se(r, key, noise), _se(best, key, noise)]
        if None in se or gap > stats.t975(noise and noise["df"]) * math.hypot(se[0], scale * se[1]):
            out.append(f"{lr_label(r['lr'])} {stats.score_text(now, r['score'])}")
    return out


def _se(rung, key, noise):
    """Standard error of a rung's score: pooled seed noise and, for accuracy, the question sample."""
    seed = stats.seed_se(rung["score"], rung["n"], noise)
    question = None if key == "val_loss" else rung["question_se"][key]
    if seed is None and question is None:
        return None
    return math.hypot(seed or 0.0, question or 0.0)


def comparison(label: str, night: str | None, now: dict, before: dict | None) -> dict:
    """Tonight against one other night: {label, night, found, lines}; lines[0] is the verdict."""
    if night is None:
        first = ("No earlier night of this suite: nothing to compare with." if label == "last night" else
                 "No baseline: pin a night with `harness nightly --config FILE --pin NAME` or name one "
                 "in the suite file (`baseline: NAME`).")
        return {"label": label, "night": None, "found": [], "lines": [first]}
    found = regressions(now, before)
    changes = [c for name in now["methods"] if (c := best_change(name, now, before))]
    verdict = (f"Against {label} ({night}): " + ("no regression." if not found else f"{len(found)} regression(s).")
               + "".join(f" {c['method']} {_signed(c['diff'])} ({c['word']})." for c in changes))
    return {"label": label, "night": night, "found": found, "lines": [verdict] + found}


def trend_plot(nights: list[tuple[str, dict]], baseline: str | None = None) -> bytes:
    """Best score per method over the last nights (oldest first), the baseline night marked."""
    fig = Figure(figsize=(9.5, 4), layout="constrained")
    ax = fig.subplots()
    methods = sorted({m for _, a in nights for m in a["methods"]})
    for name in methods:
        ys = [a["methods"].get(name, {}).get("best_score") for _, a in nights]
        ax.plot(range(len(nights)), [float("nan") if y is None else y for y in ys], marker="o", label=name)
    labels = [n for n, _ in nights]
    if baseline in labels:
        at = labels.index(baseline)
        ax.axvline(at, color="grey", linestyle="--", linewidth=1, label="baseline")
        labels[at] += " (baseline)"
    ax.set_xticks(range(len(nights)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("night")
    ax.set_ylabel(nights[-1][1]["score_name"])
    ax.set_title("Best score per method over the last nights")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def section(comparisons: list[dict], nights: list[tuple[str, dict]], baseline: str | None):
    """The (heading, html, markdown) section the report appends: each comparison's verdict and
    regressions, then the trend plot."""
    md, body = [], ""
    for c in comparisons:
        md += [c["lines"][0]] + [f"- {line}" for line in c["lines"][1:]] + [""]
        body += f"<h3>Vs {html.escape(c['label'])}</h3><p>{html.escape(c['lines'][0])}</p>"
        if c["found"]:
            body += "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in c["found"]) + "</ul>"
    if len(nights) > 1:
        png = base64.b64encode(trend_plot(nights, baseline)).decode()
        body += f'<img src="data:image/png;base64,{png}" alt="best score per method over the last nights">'
    return ("Nightly comparison: vs last night and vs baseline", body, "\n".join(md).strip())


def judge(uri: str, suite: dict, name: str) -> tuple:
    """Tonight's sweep against the last night and the baseline: (parent run id, trial rows,
    analysis, report section, regressions found against either). Tags the parent run."""
    from harness import tracking
    from harness.report import analysis_of
    options = dict(metric=suite["metric"], loss_tol=suite["loss_tol"], acc_tol=suite["acc_tol"])
    parent, rows, now = analysis_of(uri, suite["task"], name, **options)
    mlf = tracking.client(uri)
    exp = tracking.experiment_id(mlf, suite["task"])
    before = [n for n in recent_nights(mlf, exp, suite["suite"]) if n != name]
    baseline = baseline_night(mlf, exp, suite)
    baseline = None if baseline == name else baseline
    shown = list(reversed(before))
    if baseline and baseline not in shown:
        shown.insert(0, baseline)
    analyses = {n: analysis_of(uri, suite["task"], n, **options)[2] for n in shown}
    previous = before[0] if before else None
    comparisons = [comparison("last night", previous, now, analyses.get(previous)),
                   comparison("baseline", baseline, now, analyses.get(baseline))]
    found = [line for c in comparisons for line in c["found"]]
    mlf.set_tag(parent, "harness.regressions", str(len(comparisons[0]["found"])))
    mlf.set_tag(parent, "harness.regressions_baseline", str(len(comparisons[1]["found"])))
    if baseline:
        mlf.set_tag(parent, "harness.baseline", baseline)
    trend = [(n, analyses[n]) for n in shown] + [(name, now)]
    return parent, rows, now, section(comparisons, trend, baseline), found


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")

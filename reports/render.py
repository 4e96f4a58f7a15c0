"""The written report: report.html (one self-contained page, plots inline as base64 PNG),
report.md (the same tables, for terminals and pull requests) and report.json (the analysis).

Every table is built once as plain-text cells, then rendered twice (HTML-escaped, or
Markdown-escaped), so the two reports cannot disagree."""

import base64
import html
import json
from pathlib import Path

from reports import plots
from reports.plots import lr_label
from reports.statistics import number, percent, window_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:14px}
.verdict{background:#f6f8ff;border-left:4px solid #4a6fd8;padding:.6em 1em}
.setting{margin:.4em 0;color:#333}"""


def write_report(analysis, rows, folder, *, title, extra_sections=()) -> dict:
    """Write report.html, report.md and report.json under folder; returns their paths.
    extra_sections: (heading, html, markdown) tuples appended as they are (trusted markup).
    The page answers first (verdict, setting, score), then shows the evidence, then the rules."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    top = [setting_line(analysis), score_line(analysis)]
    tables = [("Summary", _summary(analysis)), ("Ranking", _ranking(analysis)),
              ("Differences at each method's best learning rate", _differences(analysis)),
              ("Per learning rate", _per_lr(analysis))]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        tables.append(("Failed trials", _failures(failed)))
    loss = analysis["loss_name"]
    figures = [(f"{analysis['score_name']} against learning rate per method; below, each method's robust window",
                plots.score_vs_lr(analysis)),
               (f"{loss} over training steps at each method's best learning rate", plots.loss_curves(analysis)),
               (f"heat map of {analysis['score_name']} per method and learning rate", plots.heatmap(analysis))]
    if any(m.get("grad_norm_curve") for m in analysis["methods"].values()):  # toy tasks do not clip
        figures.insert(2, ("gradient norm before clipping over training steps at each method's best learning rate",
                           plots.grad_norms(analysis)))
    paths = {"html": folder / "report.html", "markdown": folder / "report.md", "json": folder / "report.json"}
    verdict, rules = analysis["verdict"], _rules(analysis)
    paths["html"].write_text(_html(title, verdict, top, tables, figures, rules, extra_sections), encoding="utf-8")
    paths["markdown"].write_text(_markdown(title, verdict, top, tables, rules, extra_sections), encoding="utf-8")
    paths["json"].write_text(json.dumps(analysis, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths


def setting_line(a) -> str:
    """What the sweep ran, in one line: every part the analysis knows (reports.analyze's setting)."""
    s = a["setting"]
    seeds = f"{s['seeds']} seed{'s' * (s['seeds'] != 1)}"
    parts = [f"task {s['task']}" if s.get("task") else "", f"model {s['model']}" if s.get("model") else "",
             s.get("budget", ""), s.get("validation", ""), s.get("questions", ""), seeds,
             f"ladder {', '.join(lr_label(lr) for lr in a['ladder'])} ({len(a['ladder'])} rungs)",
             f"{s['search']}, {s['trials']} trials" if s.get("search") else f"{s['trials']} trials"]
    return "Setting: " + "; ".join(p for p in parts if p) + "."


def score_line(a) -> str:
    """Which score ranks the methods, and why that one."""
    why = a["setting"].get("score_reason")
    better = "lower" if a["lower_is_better"] else "higher"
    return f"Score: {a['score_name']} ({better} is better)" + (f", because {why}." if why else ".")


def _rules(a):
    """How every number is computed: after the evidence, for whoever checks it."""
    rules = [f"Robust window: the contiguous learning rates around the best one whose score stays "
             f"{plots.tolerance(a)}; a rung where any seed diverged, or with no score, ends it. "
             "Width = log10(high / low) in decades.",
             "90% window: the contiguous learning rates around the best one reaching 90% of the best "
             + (f"improvement over the initial {a['loss_name']} (loss ≤ init − 0.9·(init − best))."
                if a["lower_is_better"] else "accuracy (score ≥ 0.9·best).")
             + " A window reaching the lowest or highest lr tried is open on that side: it may extend beyond; "
             "a best lr at either end is marked edge.",
             f"Reference lr: {_lr(a['reference_lr'])} ({a['reference_source']})."
             + (f" Steps to target: the first step whose {a['loss_name']} (mean over seeds) is at most "
                f"{_num(a['target_loss'], 4)} ({a['target_source']})." if _steps_meaningful(a) else ""),
             "± is the standard error of the mean over seeds; a score without one comes from one seed. "
             + ("Accuracy intervals (95%) are Wilson intervals on the questions scored, widened by the seed "
                "noise pooled over the sweep. " if _scored(a) else "")
             + f"Best-lr range: the rungs best in ≥5% of {a['bootstrap']['resamples']} bootstrap resamples "
             f"(seed {a['bootstrap']['seed']}). Two methods differ beyond noise when the 95% interval of their "
             f"difference excludes 0. {_noise(a)}"]
    return rules


def _noise(a):
    key = "val_loss" if a["lower_is_better"] else "gsm8k_flexible"
    noise = a["noise"][key]
    if noise is None:
        return "Seed noise: unknown (no rung has two scored seeds)."
    sd = f"{100 * noise['sd']:.2g}% of the loss" if noise["scale"] == "log" else f"{percent(noise['sd'])} accuracy"
    return f"Seed noise: sd {sd}, pooled over {noise['rungs']} multi-seed rungs ({noise['df']} df)."


def _scored(a) -> bool:
    """Whether any rung has a GSM8K score: without one, the GSM8K columns are left out."""
    return any(r["gsm8k_flexible"] is not None or r["gsm8k_strict"] is not None
               for m in a["methods"].values() for r in m["rungs"])


def _steps_meaningful(a) -> bool:
    """Steps to target say something when a target exists and some method logged its history."""
    return a["target_loss"] is not None and any(m["steps_to_target"] is not None for m in a["methods"].values())


def _searched(a) -> bool:
    """Whether any method's best rung kept other hyperparameters than its defaults."""
    return any(m["best_hparams"] for m in a["methods"].values())


def _bootstrapped(a) -> bool:
    return any(m["best_lr_ci"] and m["best_lr_ci"]["low"] is not None for m in a["methods"].values())


def _summary(a):
    columns = [("method", True), ("best lr", True), ("best score", True), ("hparams at best", _searched(a)),
               ("robust window", True), ("width (decades)", True),
               (f"score at ref lr {_lr(a['reference_lr'])}", a["reference_lr"] is not None),
               ("steps to target", _steps_meaningful(a)), ("diverged", True), ("failed", True),
               ("stopped", any(m["stopped"] for m in a["methods"].values())),
               ("best lr range (bootstrap)", _bootstrapped(a)), ("90% window", True), ("90% width (decades)", True)]
    body = []
    for name, m in a["methods"].items():
        w = m["window"]
        reached, seeds = m["target_reached"]
        steps = f"{m['steps_to_target']:g} ({reached}/{seeds} seeds)" if reached else f"not reached (0/{seeds} seeds)"
        edge = {"low": " (edge: bottom)", "high": " (edge: top)", "both": " (only rung)"}.get(m["edge"], "")
        body.append([name, _lr(m["best_lr"]) + edge, _score(a, m["best_score"], m["best_se"], m["best_ci"], m["best_n"]),
                     _hparams(m["best_hparams"]), window_text(w), _width(w),
                     _at(a, m, a["reference_lr"]), steps, str(m["diverged"]), str(m["failed"]), str(m["stopped"]),
                     _best_range(m["best_lr_ci"]), window_text(m["window90"]) if m["window90"] else
                     m["window90_note"] or "—", _width(m["window90"])])
    return _keep(columns, body)


def _keep(columns, body):
    """(head, body) with only the columns marked as meaningful for this sweep."""
    kept = [i for i, (_, shown) in enumerate(columns) if shown]
    return [columns[i][0] for i in kept], [[row[i] for i in kept] for row in body]


def _width(w):
    return "none" if w is None else ("≥" if w["open_low"] or w["open_high"] else "") + f"{w['decades']:.2f}"


def _best_range(ci):
    if ci is None:
        return "none"
    if ci["low"] is None:
        return "unknown"  # why: the seed-noise line under the verdict
    span = _lr(ci["low"]) if ci["low"] == ci["high"] else f"[{_lr(ci['low'])}, {_lr(ci['high'])}]"
    return f"{span}; {percent(ci['modal_share'])} at {_lr(ci['modal_lr'])}"


def _differences(a):
    known = any(c["decided"] is not None for c in a["comparisons"])  # else no interval to show
    columns = [("better", True), ("worse", True), ("difference", True), ("95% interval", known),
               ("beyond noise", True), ("noise counted", known), ("note", True)]
    fmt = (lambda x: number(x, 3)) if a["lower_is_better"] else (lambda x: f"{100 * x:+.1f} points")
    body = [[c["a"], c["b"], fmt(c["diff"]), "unknown" if c["low"] is None else f"{fmt(c['low'])} to {fmt(c['high'])}",
             {True: "yes", False: "no: within noise", None: "unknown"}[c["decided"]], c["noise"], c["note"]]
            for c in a["comparisons"]]
    return _keep(columns, body)


def _ranking(a):
    columns = [("rank", True), ("method", True), ("best score", True), ("best lr", True),
               ("within noise of next", any(c["decided"] is not None for c in a["comparisons"])), ("note", True)]
    body = []
    for r in a["ranking"]:
        n = a["methods"][r["method"]]["best_n"]
        ci = a["methods"][r["method"]]["best_ci"]
        body.append([str(r["rank"] or "—"), r["method"], _score(a, r["best_score"], r["best_se"], ci, n),
                     _lr(r["best_lr"]), "yes" if r["tied_with_next"] else "", r["note"]])
    return _keep(columns, body)


def _per_lr(a):
    scored = _scored(a)
    columns = [("method", True), ("lr", True), ("status", True), ("hparams", _searched(a)), ("n", True),
               (f"{a['loss_name']} ± std over seeds", True), ("GSM8K strict (95% interval)", scored),
               ("GSM8K flexible (95% interval)", scored), ("questions", scored),
               ("diverged / failed / stopped (all hparams)", True)]
    body = []
    for name, m in a["methods"].items():
        for r in m["rungs"]:
            loss = "—" if r["val_loss"] is None else _num(r["val_loss"], 4) + (
                " (1 seed)" if r["val_loss_std"] is None else f" ± {_num(r['val_loss_std'], 4)}")
            body.append([name, _lr(r["lr"]), r["status"], _hparams(r["hparams"]), str(r["n"]), loss,
                         _percent(r["gsm8k_strict"], r["gsm8k_strict_se"], r["gsm8k_strict_ci"]),
                         _percent(r["gsm8k_flexible"], r["gsm8k_flexible_se"], r["gsm8k_flexible_ci"]),
                         str(r["questions"] or "—"), f"{r['diverged']} / {r['failed']} / {r['stopped']}"])
    return _keep(columns, body)


def _failures(failed):
    head = ["method", "lr", "seed", "hparams", "error"]
    body = [[r["method"], _lr(r["lr"]), str(r.get("seed", "")), _hparams(r.get("hparams")),
             (r.get("error") or "no error recorded").strip().splitlines()[0]] for r in failed]
    return head, body


def _at(a, m, lr):
    """The score at lr, or why there is none."""
    rung = next((r for r in m["rungs"] if r["lr"] == lr), None)
    if rung is None:
        return "not run"
    return _score(a, rung["score"], rung["se"], rung["ci"], rung["n"]) if rung["score"] is not None else rung["status"]


def _score(a, score, se, ci=None, n=None):
    """A score with its uncertainty: '0.98 ± 0.01', '20% (6–51%)', or '0.87 (1 seed: no se)'."""
    if score is None:
        return "none"
    if not a["lower_is_better"]:
        return _percent(score, se, ci)
    if se is None:
        return _num(score, 4) + (" (1 seed: no se)" if n == 1 else " (no se)")
    return f"{_num(score, 4)} ± {_num(se, 4)}"


def _percent(value, se, ci=None):
    """'0% (0–27.8%)' with a 95% interval, else '45.0% ± 1.0' with a standard error."""
    if value is None:
        return "—"
    if ci is not None:
        return f"{percent(value)} ({percent(ci[0]).removesuffix('%')}–{percent(ci[1])})"
    return f"{100 * value:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}")


def _num(x, digits):
    """Fixed digits between 1e-3 and 1e5, else scientific (a toy task's risk can be 1e-28)."""
    if x is None:
        return "—"
    return f"{x:.{digits}f}" if x == 0 or 1e-3 <= abs(x) < 1e5 else number(x, digits)


def _lr(lr):
    return "none" if lr is None else lr_label(lr)


def _hparams(h):
    if h is None:
        return "—"
    return ", ".join(f"{k}={v}" for k, v in sorted(h.items())) or "defaults"


def _html(title, verdict, top, tables, figures, rules, extra):
    e = html.escape
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
             f"<style>{STYLE}</style></head><body>\n<h1>{e(title)}</h1>",
             f'<p class="verdict"><b>Verdict.</b> {e(verdict)}</p>']
    parts += [f'<p class="setting">{e(line)}</p>' for line in top]
    for heading, (head, body) in tables[:3]:
        parts.append(f"<h2>{e(heading)}</h2>\n{_html_table(head, body)}")
    parts.append("<h2>Plots</h2>")
    parts += [figure_html(alt, png) for alt, png in figures]
    for heading, (head, body) in tables[3:]:
        parts.append(f"<h2>{e(heading)}</h2>\n{_html_table(head, body)}")
    parts += [f"<h2>{e(heading)}</h2>\n{markup}" for heading, markup, _ in extra]
    parts.append("<h2>How the numbers are computed</h2>")
    parts += [f"<p>{e(line)}</p>" for line in rules]
    return "\n".join(parts) + "\n</body></html>\n"


def figure_html(alt, png) -> str:
    """A figure with its PNG inline, so the page stays one self-contained file."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _html_table(head, body):
    e = html.escape
    rows = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _markdown(title, verdict, top, tables, rules, extra):
    parts = [f"# {title}", f"**Verdict.** {verdict}", "\n\n".join(top)]
    parts += [f"## {heading}\n\n{_md_table(head, body)}" for heading, (head, body) in tables]
    parts += [f"## {heading}\n\n{markdown}" for heading, _, markdown in extra]
    parts += ["## How the numbers are computed", "\n\n".join(rules)]
    return "\n\n".join(parts) + "\n"


def _md_table(head, body):
    def cells(row):
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"
    return "\n".join([cells(head), "|" + "---|" * len(head)] + [cells(row) for row in body])

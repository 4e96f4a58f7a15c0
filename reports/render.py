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
.verdict{background:#f6f8ff;border-left:4px solid #4a6fd8;padding:.6em 1em}"""


def write_report(analysis, rows, folder, *, title, extra_sections=()) -> dict:
    """Write report.html, report.md and report.json under folder; returns their paths.
    extra_sections: (heading, html, markdown) tuples appended as they are (trusted markup)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = _settings(analysis)
    tables = [("Summary", _summary(analysis)), ("Ranking", _ranking(analysis)),
              ("Differences at each method's best learning rate", _differences(analysis)),
              ("Per learning rate", _per_lr(analysis))]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        tables.append(("Failed trials", _failures(failed)))
    figures = [(f"{analysis['score_name']} against learning rate per method, robust windows shaded",
                plots.score_vs_lr(analysis)),
               ("validation loss over training steps at each method's best learning rate", plots.loss_curves(analysis)),

               (f"heat map of {analysis['score_name']} per method and learning rate", plots.heatmap(analysis))]
    if any(m.get("grad_norm_curve") for m in analysis["methods"].values()):  # toy tasks do not clip
        figures.insert(2, ("gradient norm before clipping over training steps at each method's best learning rate",
                           plots.grad_norms(analysis)))
    paths = {"html": folder / "report.html", "markdown": folder / "report.md", "json": folder / "report.json"}
    verdict = analysis["verdict"]
    paths["html"].write_text(_html(title, verdict, settings, tables, figures, extra_sections), encoding="utf-8")
    paths["markdown"].write_text(_markdown(title, verdict, settings, tables, extra_sections), encoding="utf-8")
    paths["json"].write_text(json.dumps(analysis, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths


def _settings(a):
    return [f"Score: {a['score_name']} ({'lower' if a['lower_is_better'] else 'higher'} is better); "
            f"ladder: {', '.join(lr_label(lr) for lr in a['ladder'])}.",
            f"Robust window: the contiguous learning rates around the best one whose score stays "
            f"{plots.tolerance(a)}; a rung where any seed diverged, or with no score, ends it. "
            "Width = log10(high / low) in decades.",
            "90% window: the contiguous learning rates around the best one reaching 90% of the best "
            + ("improvement over the initial val loss (loss ≤ init − 0.9·(init − best))."
               if a["lower_is_better"] else "accuracy (score ≥ 0.9·best).")
            + " A window reaching the lowest or highest lr tried is open on that side: it may extend beyond; "
            "a best lr at either end is marked edge.",
            f"Reference lr: {_lr(a['reference_lr'])} ({a['reference_source']}). "
            f"Target val loss: {_num(a['target_loss'], 4)} ({a['target_source']}).",
            "± is the standard error of the mean over seeds. Accuracy intervals (95%) are Wilson intervals "
            "on the questions scored, widened by the seed noise pooled over the sweep. "
            f"Best-lr range: the rungs best in ≥5% of {a['bootstrap']['resamples']} bootstrap resamples "
            f"(seed {a['bootstrap']['seed']}). Two methods differ beyond noise when the 95% interval of their "
            f"difference excludes 0. {_noise(a)}"]


def _noise(a):
    key = "val_loss" if a["lower_is_better"] else "gsm8k_flexible"
    noise = a["noise"][key]
    if noise is None:
        return "Seed noise: unknown (no rung has two scored seeds)."
    sd = f"{100 * noise['sd']:.2g}% of the loss" if noise["scale"] == "log" else f"{percent(noise['sd'])} accuracy"
    return f"Seed noise: sd {sd}, pooled over {noise['rungs']} multi-seed rungs ({noise['df']} df)."


def _summary(a):
    head = ["method", "best lr", "best score ± se", "hparams at best", "robust window", "width (decades)",
            f"score at ref lr {_lr(a['reference_lr'])}", "steps to target", "diverged", "failed", "stopped",
            "best lr range (bootstrap)", "90% window", "90% width (decades)"]
    body = []
    for name, m in a["methods"].items():
        w = m["window"]
        reached, seeds = m["target_reached"]
        steps = "—" if a["target_loss"] is None or not seeds else (
            f"{m['steps_to_target']:g} ({reached}/{seeds} seeds)" if reached else f"never (0/{seeds} seeds)")
        edge = {"low": " (edge: bottom)", "high": " (edge: top)", "both": " (only rung)"}.get(m["edge"], "")
        body.append([name, _lr(m["best_lr"]) + edge, _score(a, m["best_score"], m["best_se"], m["best_ci"]),
                     _hparams(m["best_hparams"]), window_text(w), _width(w),
                     _at(a, m, a["reference_lr"]), steps, str(m["diverged"]), str(m["failed"]), str(m["stopped"]),
                     _best_range(m["best_lr_ci"]), window_text(m["window90"]) if m["window90"] else
                     m["window90_note"] or "—", _width(m["window90"])])
    return head, body


def _width(w):
    return "—" if w is None else ("≥" if w["open_low"] or w["open_high"] else "") + f"{w['decades']:.2f}"


def _best_range(ci):
    if ci is None:
        return "—"
    if ci["low"] is None:
        return "unknown"  # why: the seed-noise line under the verdict
    span = _lr(ci["low"]) if ci["low"] == ci["high"] else f"[{_lr(ci['low'])}, {_lr(ci['high'])}]"
    return f"{span}; {percent(ci['modal_share'])} at {_lr(ci['modal_lr'])}"


def _differences(a):
    head = ["better", "worse", "difference", "95% interval", "beyond noise", "noise counted", "note"]
    fmt = (lambda x: number(x, 3)) if a["lower_is_better"] else (lambda x: f"{100 * x:+.1f} points")
    body = [[c["a"], c["b"], fmt(c["diff"]), "—" if c["low"] is None else f"{fmt(c['low'])} to {fmt(c['high'])}",
             {True: "yes", False: "no: within noise", None: "unknown"}[c["decided"]], c["noise"], c["note"]]
            for c in a["comparisons"]]
    return head, body


def _ranking(a):
    head = ["rank", "method", "best score ± se", "best lr", "within noise of next", "note"]
    body = [[str(r["rank"] or "—"), r["method"], _score(a, r["best_score"], r["best_se"]), _lr(r["best_lr"]),
             "yes" if r["tied_with_next"] else "", r["note"]] for r in a["ranking"]]
    return head, body


def _per_lr(a):
    head = ["method", "lr", "status", "hparams", "n", "val loss ± std", "GSM8K strict (95% interval)",
            "GSM8K flexible (95% interval)", "questions", "diverged / failed / stopped (all hparams)"]
    body = []
    for name, m in a["methods"].items():
        for r in m["rungs"]:
            loss = "—" if r["val_loss"] is None else _num(r["val_loss"], 4) + (
                "" if r["val_loss_std"] is None else f" ± {_num(r['val_loss_std'], 4)}")
            body.append([name, _lr(r["lr"]), r["status"], _hparams(r["hparams"]), str(r["n"]), loss,
                         _percent(r["gsm8k_strict"], r["gsm8k_strict_se"], r["gsm8k_strict_ci"]),
                         _percent(r["gsm8k_flexible"], r["gsm8k_flexible_se"], r["gsm8k_flexible_ci"]),
                         str(r["questions"] or "—"), f"{r['diverged']} / {r['failed']} / {r['stopped']}"])
    return head, body


def _failures(failed):
    head = ["method", "lr", "seed", "hparams", "error"]
    body = [[r["method"], _lr(r["lr"]), str(r.get("seed", "")), _hparams(r.get("hparams")),
             (r.get("error") or "no error recorded").strip().splitlines()[0]] for r in failed]
    return head, body


def _at(a, m, lr):
    """The score at lr, or why there is none."""
    rung = next((r for r in m["rungs"] if r["lr"] == lr), None)
    if rung is None:
        return "—"
    return _score(a, rung["score"], rung["se"], rung["ci"]) if rung["score"] is not None else rung["status"]


def _score(a, score, se, ci=None):
    if score is None:
        return "—"
    if a["lower_is_better"]:
        return _num(score, 4) + ("" if se is None else f" ± {_num(se, 4)}")
    return _percent(score, se, ci)


def _percent(value, se, ci=None):
    """'0% (0–27.8%)' with a 95% interval, else '45.0% ± 1.0' with a standard error."""
    if value is None:
        return "—"
    if ci is not None:
        return f"{percent(value)} ({percent(ci[0]).removesuffix('%')}–{percent(ci[1])})"
    return f"{100 * value:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}")


def _num(x, digits):
    """Fixed digits, or scientific below 1e-3 (a toy task's risk can be 1e-28)."""
    if x is None:
        return "—"
    return f"{x:.{digits}f}" if x == 0 or abs(x) >= 1e-3 else number(x)


def _lr(lr):
    return "—" if lr is None else lr_label(lr)


def _hparams(h):
    if h is None:
        return "—"
    return ", ".join(f"{k}={v}" for k, v in sorted(h.items())) or "defaults"


def _html(title, verdict, settings, tables, figures, extra):
    e = html.escape
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
             f"<style>{STYLE}</style></head><body>\n<h1>{e(title)}</h1>",
             f'<p class="verdict"><b>Verdict.</b> {e(verdict)}</p>']
    parts += [f"<p>{e(line)}</p>" for line in settings]
    for heading, (head, body) in tables[:3]:
        parts.append(f"<h2>{e(heading)}</h2>\n{_html_table(head, body)}")
    parts.append("<h2>Plots</h2>")
    parts += [figure_html(alt, png) for alt, png in figures]
    for heading, (head, body) in tables[3:]:
        parts.append(f"<h2>{e(heading)}</h2>\n{_html_table(head, body)}")
    parts += [f"<h2>{e(heading)}</h2>\n{markup}" for heading, markup, _ in extra]
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


def _markdown(title, verdict, settings, tables, extra):
    parts = [f"# {title}", f"**Verdict.** {verdict}", "\n\n".join(settings)]
    parts += [f"## {heading}\n\n{_md_table(head, body)}" for heading, (head, body) in tables]
    parts += [f"## {heading}\n\n{markdown}" for heading, _, markdown in extra]
    return "\n\n".join(parts) + "\n"


def _md_table(head, body):
    def cells(row):
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"
    return "\n".join([cells(head), "|" + "---|" * len(head)] + [cells(row) for row in body])

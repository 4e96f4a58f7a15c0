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

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:14px}"""


def write_report(analysis, rows, folder, *, title, extra_sections=()) -> dict:
    """Write report.html, report.md and report.json under folder; returns their paths.
    extra_sections: (heading, html, markdown) tuples appended as they are (trusted markup)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = _settings(analysis)
    tables = [("Summary", _summary(analysis)), ("Ranking", _ranking(analysis)),
              ("Per learning rate", _per_lr(analysis))]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        tables.append(("Failed trials", _failures(failed)))
    figures = [(f"{analysis['score_name']} against learning rate per method, robust windows shaded",
                plots.score_vs_lr(analysis)),
               ("validation loss over training steps at each method's best learning rate", plots.loss_curves(analysis)),
               (f"heat map of {analysis['score_name']} per method and learning rate", plots.heatmap(analysis))]
    paths = {"html": folder / "report.html", "markdown": folder / "report.md", "json": folder / "report.json"}
    paths["html"].write_text(_html(title, settings, tables, figures, extra_sections), encoding="utf-8")
    paths["markdown"].write_text(_markdown(title, settings, tables, extra_sections), encoding="utf-8")
    paths["json"].write_text(json.dumps(analysis, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths


def _settings(a):
    return [f"Score: {a['score_name']} ({'lower' if a['lower_is_better'] else 'higher'} is better); "
            f"ladder: {', '.join(lr_label(lr) for lr in a['ladder'])}.",
            f"Robust window: the contiguous learning rates around the best one whose score stays "
            f"{plots.tolerance(a)}; a rung where any seed diverged, or with no score, ends it. "
            "Width = log10(high / low) in decades.",
            f"Reference lr: {_lr(a['reference_lr'])} ({a['reference_source']}). "
            f"Target val loss: {_num(a['target_loss'], 4)} ({a['target_source']}).",
            "± is the standard error of the mean over seeds (accuracy: combined with lm-eval's stderr); "
            "two methods are within noise when their gap is under 2·sqrt(se1² + se2²)."]


def _summary(a):
    head = ["method", "best lr", "best score ± se", "hparams at best", "robust window", "width (decades)",
            f"score at ref lr {_lr(a['reference_lr'])}", "steps to target", "diverged", "failed", "stopped"]
    body = []
    for name, m in a["methods"].items():
        w = m["window"]
        reached, seeds = m["target_reached"]
        steps = "—" if a["target_loss"] is None or not seeds else (
            f"{m['steps_to_target']:g} ({reached}/{seeds} seeds)" if reached else f"never (0/{seeds} seeds)")
        body.append([name, _lr(m["best_lr"]), _score(a, m["best_score"], m["best_se"]), _hparams(m["best_hparams"]),
                     f"[{_lr(w['low'])}, {_lr(w['high'])}]" if w else "—", f"{w['decades']:.2f}" if w else "—",
                     _at(a, m, a["reference_lr"]), steps, str(m["diverged"]), str(m["failed"]), str(m["stopped"])])
    return head, body


def _ranking(a):
    head = ["rank", "method", "best score ± se", "best lr", "within noise of next", "note"]
    body = [[str(r["rank"] or "—"), r["method"], _score(a, r["best_score"], r["best_se"]), _lr(r["best_lr"]),
             "yes" if r["tied_with_next"] else "", r["note"]] for r in a["ranking"]]
    return head, body


def _per_lr(a):
    head = ["method", "lr", "status", "hparams", "n", "val loss ± std", "GSM8K strict ± se",
            "GSM8K flexible ± se", "diverged / failed / stopped (all hparams)"]
    body = []
    for name, m in a["methods"].items():
        for r in m["rungs"]:
            loss = "—" if r["val_loss"] is None else _num(r["val_loss"], 4) + (
                "" if r["val_loss_std"] is None else f" ± {r['val_loss_std']:.4f}")
            body.append([name, _lr(r["lr"]), r["status"], _hparams(r["hparams"]), str(r["n"]), loss,
                         _percent(r["gsm8k_strict"], r["gsm8k_strict_se"]),
                         _percent(r["gsm8k_flexible"], r["gsm8k_flexible_se"]),
                         f"{r['diverged']} / {r['failed']} / {r['stopped']}"])
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
    return _score(a, rung["score"], rung["se"]) if rung["score"] is not None else rung["status"]


def _score(a, score, se):
    if score is None:
        return "—"
    if a["lower_is_better"]:
        return _num(score, 4) + ("" if se is None else f" ± {se:.4f}")
    return _percent(score, se)


def _percent(value, se):
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}")


def _num(x, digits):
    return "—" if x is None else f"{x:.{digits}f}"


def _lr(lr):
    return "—" if lr is None else lr_label(lr)


def _hparams(h):
    if h is None:
        return "—"
    return ", ".join(f"{k}={v}" for k, v in sorted(h.items())) or "defaults"


def _html(title, settings, tables, figures, extra):
    e = html.escape
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
             f"<style>{STYLE}</style></head><body>\n<h1>{e(title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in settings]
    for heading, (head, body) in tables[:2]:
        parts.append(f"<h2>{e(heading)}</h2>\n{_html_table(head, body)}")
    parts.append("<h2>Plots</h2>")
    parts += [figure_html(alt, png) for alt, png in figures]
    for heading, (head, body) in tables[2:]:
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


def _markdown(title, settings, tables, extra):
    parts = [f"# {title}", "\n\n".join(settings)]
    parts += [f"## {heading}\n\n{_md_table(head, body)}" for heading, (head, body) in tables]
    parts += [f"## {heading}\n\n{markdown}" for heading, _, markdown in extra]
    return "\n\n".join(parts) + "\n"


def _md_table(head, body):
    def cells(row):
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"
    return "\n".join([cells(head), "|" + "---|" * len(head)] + [cells(row) for row in body])

"""Figures of an analysis (reports.robustness.analyze) as PNG bytes, also written to path if given.

Figures are built on matplotlib.figure.Figure and rendered by Agg, never through pyplot: no GUI
backend, no global figure state, safe in a headless nightly job."""

import io
import math
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PAD = 1.06  # widen shaded windows by this factor each side so a one-rung window still shows
MARK = {"diverged": "x", "unstable": "x", "failed": "+"}
CELL = {"diverged": "div", "failed": "fail", "stopped": "stop", "missing": "–"}


def lr_label(lr) -> str:
    """2.5e-4 -> '2.5e-4': shorter than %g's '0.00025' and readable on a log axis."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def score_vs_lr(analysis, path=None) -> bytes:
    return _png(score_vs_lr_figure(analysis), path)


def score_vs_lr_figure(analysis) -> Figure:
    """Above: score at every rung, one line per method with se bars, each method's best rung
    starred (an arrow beside it where the best is at the ladder's edge), and marks at the top where
    seeds diverged or failed. Below: each method's robust window as a bar in its colour, one row
    per method, so that windows at the same lr stay apart. Legends list only what occurs."""
    methods = analysis["methods"]
    fig = Figure(figsize=(9.5, 4.6 + 0.32 * len(methods)), layout="constrained")
    ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=[3.2, 0.45 + 0.22 * len(methods)])
    top = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    seen = set()
    for i, (name, m) in enumerate(methods.items()):
        color = _color(i)
        rungs = m["rungs"]
        scores = [math.nan if r["score"] is None else r["score"] for r in rungs]  # NaN breaks the line
        errors = [r["se"] or 0 for r in rungs]
        ax.errorbar([r["lr"] for r in rungs], scores, yerr=errors, color=color, marker="o",
                    ms=4, capsize=3, label=name)
        if m["best_lr"] is not None:
            ax.plot(m["best_lr"], m["best_score"], "*", color=color, ms=15, mec="black", mew=0.8, zorder=5)
            seen.add("best")
            if m["edge"]:
                up = m["edge"] == "high"
                ax.plot(m["best_lr"] * (1.3 if up else 1 / 1.3), m["best_score"], ">" if up else "<",
                        color=color, ms=8, mec="black", mew=0.6, zorder=5)
                seen.add("edge")
        y = 0.97 - 0.03 * i  # stagger methods so marks at the same lr stay visible
        for r in rungs:
            if r["status"] in MARK:
                ax.plot(r["lr"], y, MARK[r["status"]], color=color, ms=9, mew=2, transform=top, clip_on=False)
                seen.add(r["status"])
        _window_bar(strip, i, m["window"], color)
    if spans_decades(s for m in methods.values() for r in m["rungs"] if (s := r["score"]) is not None):
        ax.set_yscale("log")
    low, high = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(low, high * (high / low) ** 0.2)  # headroom: the marks sit above the data
    else:
        ax.set_ylim(low, low + (high - low) / 0.84)
    ax.set_ylabel(analysis["score_name"] + (" (lower is better)" if analysis["lower_is_better"] else "")
                  + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"{analysis['score_name']} vs learning rate", fontsize="medium")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + _marks(seen), fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1))
    strip.set_xscale("log")
    strip.set_xlim(analysis["ladder"][0] / 1.6, analysis["ladder"][-1] * 1.6)  # room for open-side arrows
    strip.set_xticks(analysis["ladder"], [lr_label(lr) for lr in analysis["ladder"]])
    strip.minorticks_off()
    strip.set_xlabel("learning rate (log scale)")
    strip.set_yticks(range(len(methods)), list(methods))
    strip.set_ylim(len(methods) - 0.4, -0.6)
    strip.set_title(f"robust window: rungs {tolerance(analysis)}; arrow: open side, may extend beyond",
                    fontsize="small", loc="left")
    strip.grid(axis="x", color="#ddd", lw=0.8)
    return fig


def _window_bar(ax, row, window, color):
    """One method's robust window as a bar on its own row; an open side gets an arrow."""
    if window is None:
        return
    low, high = window["low"] / PAD, window["high"] * PAD
    ax.barh(row, high - low, left=low, height=0.55, color=color, alpha=0.85)
    for side, open_, x in (("<", window["open_low"], low / 1.15), (">", window["open_high"], high * 1.15)):
        if open_:  # the window may go on beyond the ladder
            ax.plot(x, row, side, color=color, ms=7)


def _marks(seen) -> list:
    """Legend entries of the marks that occur in the plot."""
    entries = [("best", dict(marker="*", ms=12, mec="black", mew=0.8), "best lr of the method"),
               ("edge", dict(marker=">", ms=7, mec="black", mew=0.6), "best lr at the ladder's edge: optimum may lie beyond"),
               ("diverged", dict(marker="x", mew=2), "diverged (every seed)"),
               ("unstable", dict(marker="x", mew=2), "some seeds diverged"),
               ("failed", dict(marker="+", mew=2), "failed (crashed)")]
    shown = []
    for key, style, label in entries:
        if key in seen and not (key == "unstable" and "diverged" in seen):
            if key == "diverged" and "unstable" in seen:
                label = "diverged (some or all seeds)"
            shown.append(Line2D([], [], color="gray", ls="", label=label, **style))
    return shown


def spans_decades(values, decades=2) -> bool:
    """Whether positive values span at least `decades` orders of magnitude (a log axis reads them)."""
    values = [v for v in values if v > 0]
    return bool(values) and max(values) >= min(values) * 10 ** decades


def loss_curves(analysis, path=None) -> bytes:
    return _png(loss_curves_figure(analysis), path)


def loss_curves_figure(analysis) -> Figure:
    """Validation loss over steps at each method's best lr (mean over seeds), with the target;
    log scale where the losses span orders of magnitude (a toy task's risk)."""
    curves = {f"{name} (lr {lr_label(m['best_lr'])})" if m["best_curve"] else name: m["best_curve"]
              for name, m in analysis["methods"].items()}  # every method: colors match the other figures
    name = analysis["loss_name"]
    log = spans_decades(v for points in curves.values() for _, v in points)
    return step_figure(curves, xlabel="training step",
                       ylabel=f"{name} (mean over seeds{', log scale' if log else ''})",
                       title=f"{name[0].upper() + name[1:]} at each method's best learning rate", marker="o",
                       target=analysis["target_loss"], log=log)


def grad_norms(analysis, path=None) -> bytes:
    """The raw gradient norm (before clipping) over steps at each method's best lr: a norm that
    climbs orders of magnitude is the early sign of a learning rate that is too high."""
    curves = {f"{name} (lr {lr_label(m['best_lr'])})" if m.get("grad_norm_curve") else name: m.get("grad_norm_curve")
              for name, m in analysis["methods"].items()}
    return step_curves(curves, xlabel="training step", ylabel="gradient norm before clipping (log scale)",
                       title="Gradient norm at each method's best learning rate", marker="o", log=True, path=path)


def step_curves(curves: dict, *, path=None, **options) -> bytes:
    return _png(step_figure(curves, **options), path)


def step_figure(curves: dict, *, ylabel: str, title: str, xlabel="iteration", log=False, marker="",
                target=None) -> Figure:
    """One line per label ({label: [(step, value)]}; an empty list keeps its color unused) over
    training steps, log y if asked, and a dashed target line if given."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=_color(i), marker=marker, ms=3, label=label)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {number(target, 3)}")
    if not ax.has_data():
        ax.text(0.5, 0.5, "no history recorded", ha="center", transform=ax.transAxes)
    elif log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


def heatmap(analysis, path=None) -> bytes:
    return _png(heatmap_figure(analysis), path)


def heatmap_figure(analysis) -> Figure:
    """Method x learning-rate grid of the score; cells without a score say why. A loss spanning
    orders of magnitude is coloured on a log scale."""
    names, ladder = list(analysis["methods"]), analysis["ladder"]
    grid = [[math.nan if r["score"] is None else r["score"] for r in m["rungs"]]
            for m in analysis["methods"].values()]
    fig = Figure(figsize=(1.1 * len(ladder) + 2.5, 0.55 * len(names) + 1.8), layout="constrained")
    ax = fig.subplots()
    # better scores are always the bright end of the scale
    cmap = matplotlib.colormaps["viridis_r" if analysis["lower_is_better"] else "viridis"].with_extremes(bad="#e0e0e0")
    log = analysis["lower_is_better"] and spans_decades(v for row in grid for v in row if not math.isnan(v))
    image = ax.imshow(grid, cmap=cmap, aspect="auto", norm="log" if log else None)
    for y, m in enumerate(analysis["methods"].values()):
        for x, r in enumerate(m["rungs"]):
            text, color = CELL.get(r["status"]), "black"
            if text is None:
                text = _short(analysis, r["score"])
                if r["status"] == "unstable":
                    text += f"\n{r['diverged']} div"
                red, green, blue, _ = cmap(image.norm(r["score"]))
                color = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(x, y, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(ladder)), [lr_label(lr) for lr in ladder])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("learning rate")
    ax.set_title(f"{analysis['score_name']} per method and learning rate")
    fig.colorbar(image, ax=ax, label=analysis["score_name"] + (" (log scale)" if log else ""))
    return fig


def tolerance(analysis) -> str:
    """The robust-window rule in words, for titles and reports."""
    if analysis["lower_is_better"]:
        return f"within {100 * analysis['loss_tol']:g}% of the method's best"
    return f"within {100 * analysis['acc_tol']:g} points of the method's best"


def _color(i):
    return matplotlib.colormaps["tab10"](i % 10)


def _short(analysis, score):
    return number(score, 3) if analysis["lower_is_better"] else f"{100 * score:.1f}%"


def number(x, digits=4) -> str:
    """x to `digits` significant digits; scientific below 1e-3 or from 1e5 (toy risks reach 1e-28)."""
    if x is None:
        return "—"
    if x != 0 and not 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _png(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data

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
    """Score at every rung, one line per method with se bars, its robust window shaded, and an
    'x' at the top of the axis where a method diverged ('+' where it failed)."""
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    top = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for i, (name, m) in enumerate(analysis["methods"].items()):
        color = _color(i)
        rungs = m["rungs"]
        scores = [math.nan if r["score"] is None else r["score"] for r in rungs]  # NaN breaks the line
        errors = [r["se"] or 0 for r in rungs]
        ax.errorbar([r["lr"] for r in rungs], scores, yerr=errors, color=color, marker="o",
                    ms=4, capsize=3, label=name)
        if m["window"]:
            ax.axvspan(m["window"]["low"] / PAD, m["window"]["high"] * PAD, color=color, alpha=0.12, lw=0)
        y = 0.97 - 0.025 * i  # stagger methods so marks at the same lr stay visible
        for r in rungs:
            if r["status"] in MARK:
                ax.plot(r["lr"], y, MARK[r["status"]], color=color, ms=9, mew=2, transform=top, clip_on=False)
    low, high = ax.get_ylim()
    ax.set_ylim(low, low + (high - low) / 0.84)  # headroom: the marks sit above the data
    ax.set_xscale("log")
    ax.set_xticks(analysis["ladder"], [lr_label(lr) for lr in analysis["ladder"]])
    ax.minorticks_off()
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(analysis["score_name"] + (" (lower is better)" if analysis["lower_is_better"] else ""))
    ax.set_title(f"{analysis['score_name']} vs learning rate\nshaded: robust window ({tolerance(analysis)})",
                 fontsize="medium")
    marks = [Line2D([], [], color="gray", ls="", marker="x", mew=2, label="diverged (some or all seeds)"),
             Line2D([], [], color="gray", ls="", marker="+", mew=2, label="failed")]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + marks, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1))
    return _png(fig, path)


def loss_curves(analysis, path=None) -> bytes:
    """Validation loss over steps at each method's best lr (mean over seeds), with the target."""
    curves = {f"{name} (lr {lr_label(m['best_lr'])})" if m["best_curve"] else name: m["best_curve"]
              for name, m in analysis["methods"].items()}  # every method: colors match the other figures
    return step_curves(curves, xlabel="training step", ylabel="validation loss (mean over seeds)",
                       title="Validation loss at each method's best learning rate", marker="o",
                       target=analysis["target_loss"], path=path)


def grad_norms(analysis, path=None) -> bytes:
    """The raw gradient norm (before clipping) over steps at each method's best lr: a norm that
    climbs orders of magnitude is the early sign of a learning rate that is too high."""
    curves = {f"{name} (lr {lr_label(m['best_lr'])})" if m.get("grad_norm_curve") else name: m.get("grad_norm_curve")
              for name, m in analysis["methods"].items()}
    return step_curves(curves, xlabel="training step", ylabel="gradient norm before clipping (log scale)",
                       title="Gradient norm at each method's best learning rate", marker="o", log=True, path=path)


def step_curves(curves: dict, *, ylabel: str, title: str, xlabel="iteration", log=False, marker="",
                target=None, path=None) -> bytes:
    """One line per label ({label: [(step, value)]}; an empty list keeps its color unused) over
    training steps, log y if asked, and a dashed target line if given."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=_color(i), marker=marker, ms=3, label=label)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.4f}")
    if not ax.has_data():
        ax.text(0.5, 0.5, "no history recorded", ha="center", transform=ax.transAxes)
    elif log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _png(fig, path)


def heatmap(analysis, path=None) -> bytes:
    """Method x learning-rate grid of the score; cells without a score say why."""
    names, ladder = list(analysis["methods"]), analysis["ladder"]
    grid = [[math.nan if r["score"] is None else r["score"] for r in m["rungs"]]
            for m in analysis["methods"].values()]
    fig = Figure(figsize=(1.1 * len(ladder) + 2.5, 0.55 * len(names) + 1.8), layout="constrained")
    ax = fig.subplots()
    # better scores are always the bright end of the scale
    cmap = matplotlib.colormaps["viridis_r" if analysis["lower_is_better"] else "viridis"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(grid, cmap=cmap, aspect="auto")
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
    fig.colorbar(image, ax=ax, label=analysis["score_name"])
    return _png(fig, path)


def tolerance(analysis) -> str:
    """The robust-window rule in words, for titles and reports."""
    if analysis["lower_is_better"]:
        return f"within {100 * analysis['loss_tol']:g}% of the method's best"
    return f"within {100 * analysis['acc_tol']:g} points of the method's best"


def _color(i):
    return matplotlib.colormaps["tab10"](i % 10)


def _short(analysis, score):
    return f"{score:.3f}" if analysis["lower_is_better"] else f"{100 * score:.1f}%"


def _png(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data

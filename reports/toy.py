"""The toy tasks' report section: risk (log scale) and subspace alignment against iteration for
each method at its best learning rate, as the LoRA-One paper plots its linear-model experiments.
The PNGs are also written beside the report (report.md links them)."""

import math
from pathlib import Path

from reports import plots
from reports.plots import lr_label
from reports.render import figure_html
from reports.robustness import mean_curve


def _alignment(analysis, rows, name) -> list:
    """Alignment over steps, mean over the seeds of the method's best lr and hyperparameters."""
    m = analysis["methods"][name]
    kept = [r["alignment"] for r in rows if r["method"] == name and r["status"] == "finished"
            and math.isclose(r["lr"], m["best_lr"], rel_tol=1e-6) and r["hparams"] == (m["best_hparams"] or {})]
    return mean_curve(kept)


def section(analysis, rows, folder) -> tuple:
    """(heading, html, markdown) with the two figures; writes risk.png and alignment.png to folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    best = {n: m for n, m in analysis["methods"].items() if m["best_lr"] is not None}
    # every method, in the analysis's order, so that each keeps its color of the other figures
    label = {n: f"{n} (lr {lr_label(best[n]['best_lr'])})" if n in best else n for n in analysis["methods"]}
    risk = plots.step_curves({label[n]: best[n]["best_curve"] if n in best else [] for n in label}, log=True,
                             ylabel="risk ‖W − W*‖²/2 (log scale)", title="Risk at each method's best learning rate",
                             path=folder / "risk.png")
    align = plots.step_curves({label[n]: _alignment(analysis, rows, n) if n in best else [] for n in label},
                              ylabel="alignment with G's top-K subspace",
                              title="Subspace alignment at each method's best learning rate",
                              path=folder / "alignment.png")
    none = sorted(set(analysis["methods"]) - set(best))
    note = ("On toy tasks the validation loss is the risk ‖W₀ + s·BA − (W₀ + Θ)‖²_F / 2; alignment is "
            "‖V_K(G)ᵀ V_K(A)‖²_F / K (see docs/toy.md)."
            + (f" No usable learning rate (every rung diverged): {', '.join(none)}." if none else ""))
    figures = [("risk against iteration (log scale)", risk), ("subspace alignment against iteration", align)]
    markup = f"<p>{note}</p>\n" + "\n".join(figure_html(alt, png) for alt, png in figures)
    markdown = note + "\n\n![risk against iteration](risk.png)\n\n![alignment against iteration](alignment.png)"
    return "Toy task: risk and alignment against iteration", markup, markdown

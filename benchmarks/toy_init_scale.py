"""The LoRA-One paper's Fig. 2 (ICML 2025 version) on the toy-linear task, along its α² axis: LoRA
from A₀ ~ N(0, α²), B₀ = 0, full-batch GD at the task's step 1/64 for 1500 iterations, through
harness.tasks.toy.run_trial. For each α², over seeds: the paper's alignment measure, the best over the
run of min_t ‖U_{K,⊥}(G)ᵀ U_K(A_t)‖_op (sine of the largest principal angle; 0 = aligned), the
iteration it is reached at, and the final risk. Writes a three-panel PNG and the numbers as JSON.
(The paper's Fig. 2 also varies d; this task fixes d = 100.)

    python benchmarks/toy_init_scale.py [--seeds 3] [--png FILE] [--json FILE]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matplotlib.figure import Figure  # noqa: E402

from harness.config import TrialConfig  # noqa: E402
from harness.tasks import resolve, toy  # noqa: E402

VARIANCES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # at 1, GD at step 1/64 diverges


def run(variance: float, seed: int, folder: Path) -> dict:
    """One LoRA trial; (best angle, its iteration, final risk)."""
    cfg = resolve(TrialConfig(method="lora", task="toy-linear", seed=seed, hparams={"init_scale": variance ** 0.5},
                              out=str(folder / f"{variance:g}-{seed}")))
    cfg.eval_interval = 10  # a finer trace of the angle than the task's 50
    result = toy.run_trial(cfg)
    history = json.loads(Path(cfg.out, "metrics.json").read_text())["history"]
    best = min((p for p in history if "angle" in p), key=lambda p: p["angle"])
    return dict(angle=best["angle"], at=best["step"], risk=result["val_loss"], status=result["status"])


def plot(rows: list, seeds: int, path: Path):
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    panels = [("angle", "min_t ‖U⊥(G)ᵀ U(A_t)‖_op  (0 = aligned)", False),
              ("at", "iteration of the best alignment", False), ("risk", "final risk (log scale)", True)]
    for ax, (key, label, log) in zip(fig.subplots(1, 3), panels):
        xs = [r["variance"] for r in rows]
        ax.plot(xs, [statistics.mean(r[key]) for r in rows], marker="o", color="tab:blue")
        ax.fill_between(xs, [min(r[key]) for r in rows], [max(r[key]) for r in rows], color="tab:blue",
                        alpha=0.2, lw=0, label="min–max over seeds")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("α² (variance of LoRA's A₀)")
        ax.set_ylabel(label)
    fig.axes[0].legend(fontsize="small")
    fig.suptitle(f"toy-linear: LoRA under GD (step 1/64, 1500 iterations), {seeds} seeds per α²",
                 fontsize="medium")
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--png", default="toy-init-scale.png")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variance in VARIANCES:
            runs = [run(variance, seed, Path(tmp)) for seed in range(args.seeds)]
            row = {"variance": variance, **{k: [r[k] for r in runs] for k in ("angle", "at", "risk", "status")}}
            rows.append(row)
            print(f"α²={variance:<6g} angle {statistics.mean(row['angle']):.3f} at iteration "
                  f"{statistics.mean(row['at']):>6.0f}, final risk {statistics.mean(row['risk']):.2e} "
                  f"({', '.join(row['status'])})", flush=True)
    plot(rows, args.seeds, Path(args.png))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"figure: {args.png}")


if __name__ == "__main__":
    main()

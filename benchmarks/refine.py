"""`--search refine` against the full fine grid it replaces, side by side, through `harness run`.

For each part (a task and preset), the grid runs every quarter-decade rung of the coarse span x 3
seeds, and refine starts from the coarse ladder of the same span. Both are read with the report's
rules (reports.robustness.analyze): per method, the best lr and the robust window, then the trial
counts and wall times. Target: refine's best lr is the grid's, or the grid's lies within refine's
stated interval (the rungs within noise of its best); window edges within one quarter-decade rung;
at most 40% of the grid's trials. Beside each method: how far the grid's own window moves when one
of its three seeds is left out, the resolution to which the reference itself settles it.

    python benchmarks/refine.py [--parts toy,smoke] [--methods all] [--smoke-methods lora]
        [--data-dir DATA] [--storage DIR]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import search  # noqa: E402
from reports.robustness import analyze  # noqa: E402
from reports.statistics import window_text  # noqa: E402

PARTS = {  # part: (flags of harness run, the span's lrs, the robust window's --loss-tol)
    "toy": (["--task", "toy-linear-illcond", "--preset", "cpu"], [1e-3, 1.0], 0.05),
    # three decades, as the toy part and the 12-rung grids of the study, reaching a decade below
    # the smoke ladder, where lora-ga's and lora-one's best rungs lie near its bottom. The tiny random
    # model's losses lie within 1% of 10.5 at every rung: a 5% window would hold the whole ladder.
    "smoke": (["--task", "gsm8k", "--preset", "smoke", "--eval-limit", "0"], [1e-4, 1e-1], 0.002),
}
RESOLUTION, SEEDS = 0.25, 3


def sweep(storage: Path, name: str, flags: list) -> tuple[list[dict], float]:
    """(results.json rows, wall seconds) of one `harness run`."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--storage", str(storage), "--name", name,
                           *map(str, flags)], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads((storage / name / "results.json").read_text()), time.monotonic() - start


def edges_apart(grid: dict, refine: dict) -> float:
    """Quarter-decade rungs between the windows' edges, the farther side. A grid window open on a
    side (it reaches the grid's end) may extend beyond: refine's edge past it agrees with it."""
    def apart(side, beyond):
        gap = math.log10(refine[side] / grid[side]) / RESOLUTION
        return 0.0 if grid[f"open_{side}"] and beyond(gap) else abs(gap)
    return max(apart("low", lambda gap: gap <= 0), apart("high", lambda gap: gap >= 0))


def grid_spread(rows: list[dict], grid: dict, loss_tol: float) -> dict:
    """Per method, how far the grid's own window moves when one of its seeds is left out (rungs, the
    farthest): the resolution to which the reference itself settles the window."""
    left_out = [analyze([r for r in rows if r["seed"] != seed], loss_tol=loss_tol)["methods"]
                for seed in sorted({r["seed"] for r in rows})]
    return {name: max(edges_apart(g["window"], part[name]["window"]) for part in left_out)
            for name, g in grid.items()}


def compare(part: str, methods: str, storage: Path, data_dir: str) -> list[str]:
    flags, span, loss_tol = PARTS[part]
    flags = [*flags, "--methods", methods, "--seeds", SEEDS, "--loss-tol", loss_tol] + (
        ["--data-dir", data_dir] if data_dir else [])
    fine = search.fine(span, RESOLUTION)
    grid_rows, grid_s = sweep(storage, f"{part}-grid", [*flags, "--lrs", ",".join(map(str, fine))])
    refine_rows, refine_s = sweep(storage, f"{part}-refine", [*flags, "--search", "refine",
                                                              "--lrs", ",".join(map(str, span)),
                                                              "--resolution", RESOLUTION])
    lines = {line["method"]: line for line in
             json.loads((storage / f"{part}-refine" / "refine.json").read_text())["lines"]}
    grid, refine = (analyze(rows, loss_tol=loss_tol)["methods"] for rows in (grid_rows, refine_rows))
    spread = grid_spread(grid_rows, grid, loss_tol)
    out = [f"### {part}: grid {len(fine)} rungs ({fine[0]:g} to {fine[-1]:g}) x {SEEDS} seeds against refine, "
           f"window: val loss within {loss_tol:.1%} of the best",
           "", "| method | best lr grid | best lr refine (stated interval) | same | window grid | window refine "
           "| edges apart (rungs) | grid's own spread (rungs) | trials grid | trials refine |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    ok = True
    for name, g in grid.items():
        r, line = refine[name], lines[name]
        same = g["best_lr"] == r["best_lr"] or line["best_low"] <= g["best_lr"] <= line["best_high"]
        gw, rw = g["window"], r["window"]
        apart = edges_apart(gw, rw)
        ok &= same and apart <= 1 + 1e-3  # lrs are kept to 6 digits
        out.append(f"| {name} | {g['best_lr']:g} | {r['best_lr']:g} ({line['best_low']:g} to {line['best_high']:g}) "
                   f"| {'yes' if same else 'NO'} | {window_text(gw)} "
                   f"| {window_text(rw)} | {apart:.0f} | {spread[name]:.0f} "
                   f"| {g['trials']} | {r['trials']} |")
    share = len(refine_rows) / len(grid_rows)
    out += ["", f"trials: grid {len(grid_rows)}, refine {len(refine_rows)} ({share:.0%} of the grid); wall time: "
            f"grid {grid_s:.0f} s, refine {refine_s:.0f} s (ratio {refine_s / grid_s:.2f}); "
            f"target (same best, edges within one rung, <= 40% of the trials): "
            f"{'met' if ok and share <= 0.4 else 'NOT met'}", ""]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="toy,smoke", help="toy, smoke or both (default: both)")
    parser.add_argument("--methods", default="all", help="methods of the toy part (default: all)")
    parser.add_argument("--smoke-methods", default="all", help="methods of the smoke part (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR", ""), help="GSM8K data folder")
    parser.add_argument("--storage", default="", help="sweeps folder (default: a temporary one)")
    args = parser.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="refine-bench-")).resolve()
    for part in args.parts.split(","):
        methods = args.methods if part == "toy" else args.smoke_methods
        print("\n".join(compare(part, methods, storage, args.data_dir)), flush=True)
    print(f"sweeps: {storage}")


if __name__ == "__main__":
    main()

"""Training throughput of one trial run directly and the same trial run inside Ray Tune.

    python benchmarks/ray_overhead.py --data-dir /work/shared/data [--method lora] [--preset cpu]
        [--lr 2e-4] [--steps 12] [--repeats 2] [--json FILE]

(a) plain: `harness trial` in a fresh process (every Ray trial is a fresh worker process too). (b) ray: the sweep's own path: start_ray,
sweep.prepare on a one-trial SweepConfig, sweep.build_tuner (train_trial under with_parameters /
with_resources), Tuner.fit. Rounds alternate (a) and (b), order flipped each round, so machine noise
hits both. Metrics are those run_trial returns: tokens_per_s (one window: eval_interval = steps)
and step_seconds (median step after the first quarter). eval_limit = 0: no lm-eval.
The only change to the Ray path: train_trial is wrapped to add torch's thread counts to its reports.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness import sweep, tracking  # noqa: E402
from harness.config import TrialConfig  # noqa: E402

TARGET = 0.95  # ray tokens/s >= 95% of plain
KEYS = ("tokens_per_s", "step_seconds", "wall_s", "threads", "threads_default", "nice", "val_loss")


def counted_trial(config: dict, base: dict):
    """harness.sweep.train_trial, with torch's thread counts (Ray's default, and the count the
    trial trains with) and the process's niceness added to every report."""
    import ray.tune
    from harness.sweep import train_trial  # the original: the patch below lives only in the driver
    report, default = ray.tune.report, torch.get_num_threads()
    ray.tune.report = lambda m, *a, **kw: report(
        {**m, "threads": torch.get_num_threads(), "threads_default": default, "nice": os.nice(0)}, *a, **kw)
    try:
        return train_trial(config, base)
    finally:
        ray.tune.report = report


def plain(template: TrialConfig, root: Path, i: int) -> dict:
    """The same trial as `harness trial` runs it: a fresh process, as every Ray trial is one (a
    warm process that has trained before runs ~25% faster, which would not be a fair baseline)."""
    out = root / f"plain-r{i}"
    t = template
    args = ["trial", "--method", t.method, "--lr", str(t.lr), "--preset", t.preset, "--steps", str(t.steps),
            "--eval-interval", str(t.eval_interval), "--eval-limit", "0", "--data-dir", t.data_dir,
            "--out", str(out)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)
    result = json.loads((out / "metrics.json").read_text())
    return {**result, "wall_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
            "nice": os.nice(0)}


def in_ray(template: TrialConfig, root: Path, i: int) -> dict:
    sc = sweep.SweepConfig(methods=[template.method], trial=replace(template), lrs=[template.lr],
                           name=f"ray-r{i}", storage=str(root / "sweeps"),
                           tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    plan = sweep.prepare(sc)
    parent = tracking.start_sweep(sc.tracking_uri, sc.trial.task, sc.name, {})
    sweep.train_trial, original = counted_trial, sweep.train_trial
    try:
        tuner = sweep.build_tuner(sc, plan, parent)
    finally:
        sweep.train_trial = original
    start = time.perf_counter()
    (result,) = tuner.fit()
    tracking.finish_sweep(sc.tracking_uri, parent, "FINISHED" if not result.error else "FAILED")
    if result.error:
        raise RuntimeError(f"ray trial failed: {result.error}")
    return {**result.metrics, "wall_s": time.perf_counter() - start}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    for flag, default in (("--method", "lora"), ("--preset", "cpu"), ("--json", None)):
        p.add_argument(flag, default=default)
    for flag, kind, default in (("--lr", float, 2e-4), ("--steps", int, 12), ("--repeats", int, 2)):
        p.add_argument(flag, type=kind, default=default)
    args = p.parse_args()
    template = TrialConfig(method=args.method, lr=args.lr, preset=args.preset, steps=args.steps,
                           eval_interval=args.steps, eval_limit=0,
                           data_dir=str(Path(args.data_dir).resolve()))
    with tempfile.TemporaryDirectory(prefix="ray_overhead-") as tmp:
        root = Path(tmp)
        held = sweep.hold_logs()
        sweep.start_ray(sweep.SweepConfig(methods=[args.method], trial=template))
        sweep.log_to_file(root / "harness.log", held)
        rows = {"plain": [], "ray": []}
        try:
            for i in range(args.repeats):
                for kind in (("plain", "ray") if i % 2 == 0 else ("ray", "plain")):
                    r = (plain if kind == "plain" else in_ray)(template, root, i)
                    rows[kind].append({k: r.get(k) for k in KEYS})
                    print(f"round {i + 1} {kind:<5}: {r['tokens_per_s']:8.1f} tok/s  step "
                          f"{r['step_seconds']:.3f} s  wall {r['wall_s']:6.1f} s  "
                          f"torch threads {r['threads']}  nice {r['nice']}", flush=True)
        finally:
            sys.modules["ray"].shutdown()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tokens_per_s", "step_seconds")}
           for k, v in rows.items()}
    ratio = med["ray"]["tokens_per_s"] / med["plain"]["tokens_per_s"]
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"\n{args.method}, preset {args.preset}, {args.steps} steps, {args.repeats} rounds, {os.cpu_count()} CPUs")
    for k in rows:
        print(f"median {k:<5}: {med[k]['tokens_per_s']:8.1f} tok/s  step {med[k]['step_seconds']:.3f} s")
    print(f"torch threads: plain {rows['plain'][0]['threads']}, ray trial {rows['ray'][0]['threads']} "
          f"(Ray worker default before train_trial: {rows['ray'][0]['threads_default']})")
    print(f"target: ray tokens/s >= {TARGET} x plain: ratio {ratio:.3f} -> {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), rounds=rows, medians=med,
                                                   ratio=ratio, target=TARGET, verdict=verdict), indent=2))


if __name__ == "__main__":
    main()

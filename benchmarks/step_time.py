"""Step time of the five methods, and the cost of the gradient-based inits, in one run.

    python benchmarks/step_time.py --data-dir /work/shared/data [--model smollm2-135m]
        [--steps 8] [--batch-size 4] [--max-length 128] [--json FILE]

1. Median training-step time (forward + backward + optimizer.step + zero_grad) per method after
   warm-up steps, every method on the same batches, in interleaved rounds (one step of each method
   per round, order rotated) so machine noise hits all methods alike; ratios are to lora's.
2. The gradient-estimation phase (as add_adapters runs it) against a lora training step: wall time
   and peak memory, each peak in a fresh process (on CPU the peak is process RSS, which never
   shrinks much, so an earlier phase would leak into a later one's peak).
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
from harness.config import TrialConfig  # noqa: E402
from harness.tasks import resolve  # noqa: E402
from harness.loss import loss_of  # noqa: E402
from harness.memory import PeakMemory  # noqa: E402
from harness.model import pick_device  # noqa: E402
from harness.train import add_adapters, prepare, seed_everything  # noqa: E402
from harness import data  # noqa: E402
from methods._base import lora_layers  # noqa: E402

METHODS = ("lora", "pissa", "lora-ga", "riemannian", "lora-one")
WARMUP, PEAK_STEPS, LR = 2, 3, 2e-4   # step time does not depend on the learning rate
STEP_TARGET, MEMORY_TARGET = 0.05, 0.10


def build(args, method: str):
    """A freshly loaded model with the method's adapters (add_adapters), its optimizer, endless
    batches (seeded: the same sequence for every method) and add_adapters' init info."""
    cfg = resolve(TrialConfig(method=method, lr=LR, preset="cpu", model=args.model,
                              data_dir=args.data_dir, batch_size=args.batch_size,
                              max_length=args.max_length, steps=args.steps))
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model, tok, train_ex, _ = prepare(cfg, device)
    model, info = add_adapters(cfg, model, train_ex, tok.pad_token_id, device)
    model.train()
    optimizer = methods.get(method).optimizer(model, cfg.lr, cfg.hparams, cfg.weight_decay)
    return model, optimizer, data.shuffled(train_ex, cfg.batch_size, tok.pad_token_id, cfg.seed), info


def train_step(model, optimizer, batch) -> tuple[float, float]:
    """(seconds, loss) of one step, timed as run_trial times its steps."""
    start = time.perf_counter()
    loss = loss_of(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def train_peak_phase(args) -> dict:
    """Peak memory over a few lora training steps of a freshly loaded model."""
    model, optimizer, batches, _ = build(args, "lora")
    with PeakMemory(next(model.parameters()).device) as peak:
        for _ in range(PEAK_STEPS):
            train_step(model, optimizer, next(batches))
    return dict(train_peak_mb=peak.mb)


def grad_phase(args) -> dict:
    """add_adapters' own gradient-phase measurements (lora-ga: its SVD init is the cheap one)."""
    model, *_, info = build(args, "lora-ga")
    sums = sum(layer.get_base_layer().weight.numel() for _, layer in lora_layers(model))
    return dict(grad_seconds=info["grad_seconds"], grad_peak_mb=info["grad_peak_mb"],
                grad_sums_mb=4 * sums / 2**20)


def in_fresh_process(phase, args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(phase, args).result()


def time_steps(args) -> dict:
    """{method: dict(times, init info, last loss)}, one step of every method per round."""
    runs = {m: build(args, m) for m in METHODS}
    batches = [next(runs["lora"][2]) for _ in range(WARMUP + args.steps)]
    times, losses = {m: [] for m in METHODS}, {}
    for rnd, batch in enumerate(batches):
        shift = rnd % len(METHODS)
        for m in METHODS[shift:] + METHODS[:shift]:
            seconds, losses[m] = train_step(*runs[m][:2], batch)
            if rnd >= WARMUP:
                times[m].append(seconds)
        print(f"  round {rnd + 1}/{len(batches)}" + (" (warm-up)" if rnd < WARMUP else ""), flush=True)
    return {m: dict(times=times[m], info=runs[m][3], last_loss=losses[m]) for m in METHODS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method (after warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    print("memory phases, each in a fresh process ...", flush=True)
    memory = {**in_fresh_process(grad_phase, args), **in_fresh_process(train_peak_phase, args)}
    print(f"step times: {WARMUP} warm-up + {args.steps} timed rounds ...", flush=True)
    runs = time_steps(args)

    base = statistics.median(runs["lora"]["times"])
    print(f"\n{'method':<11} {'median s':>9} {'min s':>7} {'max s':>7} {'vs lora':>8} "
          f"{'paired':>7} {'init s':>7} {'last loss':>10}")
    for m, run in runs.items():
        t, lora_t = run["times"], runs["lora"]["times"]
        run.update(median_s=statistics.median(t), ratio=statistics.median(t) / base,
                   paired_ratio=statistics.median(a / b for a, b in zip(t, lora_t)))
        print(f"{m:<11} {run['median_s']:9.3f} {min(t):7.3f} {max(t):7.3f} {run['ratio']:8.3f} "
              f"{run['paired_ratio']:7.3f} {run['info']['init_seconds']:7.2f} {run['last_loss']:10.4f}")
    for m in ("lora-ga", "lora-one"):
        info = runs[m]["info"]
        print(f"{m}: gradient phase {info['grad_seconds']:.1f} s, SVD init {info['init_seconds']:.1f} s "
              f"(in the timing process)")
    grad_ratio = memory["grad_peak_mb"] / memory["train_peak_mb"]
    print(f"gradient phase (fresh process, {methods.get('lora-ga').resolve({})['grad_samples']} "
          f"examples, batch 1): {memory['grad_seconds']:.1f} s, peak {memory['grad_peak_mb']:.0f} MiB "
          f"(fp32 gradient sums: {memory['grad_sums_mb']:.0f} MiB)")
    print(f"lora training steps (fresh process, {PEAK_STEPS} steps): peak {memory['train_peak_mb']:.0f} MiB")

    targets = {
        "riemannian step <= lora step +5%": (runs["riemannian"]["ratio"], 1 + STEP_TARGET),
        "gradient-phase peak <= training peak +10%": (grad_ratio, 1 + MEMORY_TARGET),
    }
    print("\ntargets:")
    for name, (value, limit) in targets.items():
        print(f"  {name}: ratio {value:.3f} (limit {limit:.2f}) -> {'PASS' if value <= limit else 'MISS'}")

    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            args=vars(args), warmup_steps=WARMUP, device=str(pick_device()), threads=os.cpu_count(),
            methods=runs, memory=memory, grad_peak_ratio=grad_ratio,
            targets={k: dict(ratio=v, limit=lim, passed=v <= lim) for k, (v, lim) in targets.items()},
        ), indent=2))


if __name__ == "__main__":
    main()

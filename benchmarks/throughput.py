"""Real tokens per second of the training loop before and after this harness's throughput changes,
side by side in one run, with the validation loss each reaches and its memory.

    python benchmarks/throughput.py --data-dir ../shared/data [--steps 24] [--seeds 2] [--candidates]
        [--json FILE]

Loops (lora, the `cpu` preset's model, batch, length, schedule and clipping):
- padded: random batches padded to their longest row, logits at every position, PEFT's LoRA
  layer and transformers' RMSNorm, malloc's default setting (the loop before);
- bucketed: rows of similar length batched together, logits only where labels are set;
- fused: the preset's loop now: bucketed, with the fused LoRA layers and RMSNorms and the frozen
  layers' matmuls by oneDNN (harness.kernels), and malloc keeping freed memory
  (harness.memory.keep_freed);
- shuffled: the fused loop on the padded loop's random batches (`--batching shuffle`), which
  learns from the same batches as the padded loop.
With --candidates, two levers the preset does not use are measured beside them (the fused loop
with its frozen base in bf16, adapters in fp32; and with its whole loss, decoder, head and
cross-entropy, under torch.compile), each against the same target and with its validation loss
against the fused loop's.

1. Speed: each loop's models, one per seed, live in a process of their own (malloc's setting is
   per process) and are stepped in interleaved rounds (one step of each per round, order rotated,
   one process stepping at a time) so machine noise hits all alike. Real tokens are the
   non-padding tokens; the first rounds are warm-up and not timed.
2. Quality: each model's validation loss after the same number of steps (the same number of
   examples); the loops' difference is compared with the spread between seeds of one loop.
3. Memory: peak resident memory over a few steps of each loop, each in a fresh process.
4. Start-up: each loop's first step in that fresh process (a cold compile cache: this run's own, in a
   temporary folder) and its warm-up steps in the interleaved rounds (the cache then warm), which is
   what compilation costs a trial against what it saves per step.
"""

import argparse
import json
import multiprocessing
from multiprocessing.connection import Connection
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="throughput-inductor-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import torch  # noqa: E402

import methods  # noqa: E402
from harness import data, kernels  # noqa: E402
from harness.config import TrialConfig  # noqa: E402
from harness.flops import Counter, peak  # noqa: E402
from harness.loss import loss_of, selective_loss  # noqa: E402
from harness.memory import PeakMemory, keep_freed  # noqa: E402
from harness.model import pick_device  # noqa: E402
from harness.tasks import resolve  # noqa: E402
from harness.train import add_adapters, clip, prepare, schedule, seed_everything, validation_loss  # noqa: E402

BEFORE = dict(batching="shuffle", selective=False, kernels="library", keep_freed=False)
LOOPS = {"padded": BEFORE, "bucketed": dict(BEFORE, batching="bucket", selective=True),
         "fused": dict(BEFORE, batching="bucket", selective=True, kernels="fused", keep_freed=True),
         "shuffled": dict(BEFORE, selective=True, kernels="fused", keep_freed=True)}
CANDIDATES = {"bf16": dict(LOOPS["fused"], dtype="bfloat16"), "compiled": dict(LOOPS["fused"], compile=True)}
ALL = {**LOOPS, **CANDIDATES}
LR, WARMUP, MEMORY_STEPS, TARGET = 2e-4, 2, 3, 1.3


class Run:
    """A lora model trained by one loop from one seed, as run_trial trains it."""

    def __init__(self, args, loop: str, seed: int):
        self.loop, self.seed, self.selective = loop, seed, ALL[loop]["selective"]
        cfg = resolve(TrialConfig(method="lora", lr=LR, preset="cpu", model=args.model, data_dir=args.data_dir,
                                  seed=seed, steps=args.steps, batching=ALL[loop]["batching"],
                                  kernels=ALL[loop]["kernels"], dtype=ALL[loop].get("dtype", "auto")))
        seed_everything(seed)
        self.device = pick_device(cfg.device)
        self.model, tok, train_ex, val_ex = prepare(cfg, self.device)
        self.model, _ = add_adapters(cfg, self.model, train_ex, tok.pad_token_id, self.device)
        kernels.install(self.model, cfg.kernels)
        self.model.train()
        # compiling the loss, not the model, keeps parameter names (and the saved adapter) unchanged
        self.compiled = torch.compile(selective_loss, dynamic=True) if ALL[loop].get("compile") else None
        self.optimizer = methods.get("lora").optimizer(self.model, cfg.lr, cfg.hparams, cfg.weight_decay)
        self.schedule, self.cfg = schedule(self.optimizer, cfg), cfg
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.batches = data.batches(train_ex, cfg.batch_size, tok.pad_token_id, seed, cfg.batching)
        self.val = lambda: validation_loss(self.model, val_ex, cfg.batch_size, tok.pad_token_id)
        self.flops = Counter(self.model)
        self.times, self.tokens, self.padded, self.work, self.warmup = [], [], [], [], []

    def loss(self, batch: dict):
        if self.compiled:
            return self.compiled(self.model, {k: v.to(self.device) for k, v in batch.items()})
        return loss_of(self.model, batch, self.selective)

    def step(self, timed: bool):
        batch = next(self.batches)
        start = time.perf_counter()
        self.loss(batch).backward()
        clip(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.tokens.append(int(batch["attention_mask"].sum()))
            self.padded.append(batch["attention_mask"].numel())
            self.work.append(self.flops.batch(batch))
        else:
            self.warmup.append(time.perf_counter() - start)

    def outcome(self) -> dict:
        return dict(times=self.times, tokens=self.tokens, padded=self.padded, work=self.work, warmup=self.warmup,
                    val_loss=self.val(), dtype=next(self.model.parameters()).dtype)


def start(loop: str):
    """What a trial process of this loop does before loading its model."""
    if ALL[loop]["keep_freed"]:
        keep_freed(pick_device("auto"))


def memory_phase(args, loop: str) -> dict:
    """Peak resident memory over a few steps of one loop, in MiB, with what was held before them,
    and the first step's seconds (compilation with a cold cache)."""
    start(loop)
    run = Run(args, loop, 0)
    with PeakMemory(run.device) as memory:
        before = memory.now()
        for _ in range(MEMORY_STEPS):
            run.step(timed=False)
    return dict(peak_mb=memory.mb, before_mb=before, steps_mb=memory.mb - before, first_step_s=run.warmup[0])


def in_fresh_process(phase, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(phase, *args).result()


def serve(conn: Connection, args, loop: str):
    """A loop's models, one per seed, in a process of its own: steps one on each request, and
    answers None with each model's outcome."""
    start(loop)
    runs = {seed: Run(args, loop, seed) for seed in range(args.seeds)}
    conn.send("ready")
    while (request := conn.recv()) is not None:
        seed, timed = request
        runs[seed].step(timed)
        conn.send("done")
    conn.send({seed: run.outcome() for seed, run in runs.items()})


def interleaved(args, loops: list[str]) -> dict:
    """{loop: {seed: outcome}} after args.steps rounds, one step of every (loop, seed) per round."""
    spawn = multiprocessing.get_context("spawn")
    pipes, workers = {}, {}
    for loop in loops:
        pipes[loop], child = spawn.Pipe()
        workers[loop] = spawn.Process(target=serve, args=(child, args, loop), daemon=True)
        workers[loop].start()
    for conn in pipes.values():
        conn.recv()
    models = [(loop, seed) for seed in range(args.seeds) for loop in loops]
    for rnd in range(args.steps):
        shift = rnd % len(models)
        for loop, seed in models[shift:] + models[:shift]:
            pipes[loop].send((seed, rnd >= WARMUP))
            pipes[loop].recv()
        print(f"  round {rnd + 1}/{args.steps}" + (" (warm-up)" if rnd < WARMUP else ""), flush=True)
    outcomes = {}
    for loop, conn in pipes.items():
        conn.send(None)
        outcomes[loop] = conn.recv()
        workers[loop].join()
    return outcomes


def summary(outcomes: dict) -> dict:
    out, device = {}, pick_device("auto")
    peaks = {dtype: peak(device, dtype)[0] for dtype in {r["dtype"] for mine in outcomes.values() for r in mine.values()}}
    for loop, by_seed in outcomes.items():
        mine = list(by_seed.values())
        seconds, tokens = sum(sum(r["times"]) for r in mine), sum(sum(r["tokens"]) for r in mine)
        flops = peaks[mine[0]["dtype"]]   # the loop's own dtype, measured once the workers are gone
        out[loop] = dict(real_tokens_per_s=tokens / seconds, real_share=tokens / sum(sum(r["padded"]) for r in mine),
                         mfu=sum(sum(r["work"]) for r in mine) / seconds / flops, peak_flops=flops,
                         step_s=statistics.median(t for r in mine for t in r["times"]),
                         warmup_s=statistics.mean(sum(r["warmup"]) for r in mine),
                         val_loss={seed: r["val_loss"] for seed, r in by_seed.items()})
    return out


def against(result: dict, loop: str, base: str, spread: float) -> str:
    """'bucketed / padded: 1.18x (target >= 1.3) -> MISS; val loss 1.3401 against 1.3412: within noise'."""
    speedup = result[loop]["real_tokens_per_s"] / result["padded"]["real_tokens_per_s"]
    mean, other = (statistics.mean(result[k]["val_loss"].values()) for k in (loop, base))
    return (f"{loop} / padded: {speedup:.2f}x (target >= {TARGET}) -> {'PASS' if speedup >= TARGET else 'MISS'}; "
            f"val loss {mean:.4f} against {base}'s {other:.4f}: difference {abs(mean - other):.4f}, "
            f"{'within' if abs(mean - other) <= spread else 'BEYOND'} the seed-to-seed spread of {spread:.4f}")


def start_up(result: dict, memory: dict, steps: int) -> str:
    """What compiling costs a trial's first steps against what it saves per step."""
    cold, warm = (memory["compiled"]["first_step_s"] - memory["fused"]["first_step_s"],
                  result["compiled"]["warmup_s"] - result["fused"]["warmup_s"])
    saved = result["fused"]["step_s"] - result["compiled"]["step_s"]
    pays = f"pays after {warm / saved:.0f} steps with a warm cache" if saved > 0 else "never pays"
    return (f"compiled: {cold:.0f} s more than fused to start with a cold cache, {warm:.0f} s with a warm "
            f"one; saves {saved:.3f} s a step, so it {pays} (this run: {steps} steps)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=24, help="steps per model (the first 2 untimed)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--candidates", action="store_true", help="also measure the bf16 and compiled loops")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    loops = list(ALL if args.candidates else LOOPS)

    print("memory, each loop in a fresh process ...", flush=True)
    memory = {loop: in_fresh_process(memory_phase, args, loop) for loop in loops}
    print(f"{len(loops) * args.seeds} models ({', '.join(loops)} x {args.seeds} seeds), {args.steps} rounds ...",
          flush=True)
    result = summary(interleaved(args, loops))

    print(f"\n{'loop':<9} {'real tok/s':>10} {'real share':>10} {'median step s':>13} {'MFU':>6} "
          f"{'peak MiB':>9} {'steps MiB':>9} {'1st step s':>10} {'warm-up s':>9}  val_loss by seed")
    for loop, r in result.items():
        losses = " ".join(f"{v:.4f}" for v in r["val_loss"].values())
        print(f"{loop:<9} {r['real_tokens_per_s']:10.1f} {r['real_share']:10.1%} {r['step_s']:13.3f} "
              f"{r['mfu']:6.1%} {memory[loop]['peak_mb']:9.0f} {memory[loop]['steps_mb']:9.0f} "
              f"{memory[loop]['first_step_s']:10.1f} {r['warmup_s']:9.1f}  {losses}")
    spread = max(max(r["val_loss"].values()) - min(r["val_loss"].values()) for r in result.values())
    print(f"\nMFU against each loop's measured matmul peak in its dtype: "
          + ", ".join(f"{loop} {r['peak_flops'] / 1e9:.0f} GFLOP/s" for loop, r in result.items()))
    print(f"validation loss after {args.steps} steps (the same examples), each loop's mean over seeds:")
    for loop in loops[1:]:
        print("  " + against(result, loop, "padded" if loop in LOOPS else "fused", spread))
    print(f"1st step: in a fresh process (cold compile cache); warm-up: the {WARMUP} untimed steps of the rounds")
    if "compiled" in result:
        print("  " + start_up(result, memory, args.steps))
    if args.json:
        speedup = result["fused"]["real_tokens_per_s"] / result["padded"]["real_tokens_per_s"]
        Path(args.json).write_text(json.dumps(dict(args=vars(args), loops=result, memory=memory, speedup=speedup),
                                              indent=2))


if __name__ == "__main__":
    main()

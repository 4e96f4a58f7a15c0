"""Real trials of the five methods on one device, their adapters reloaded on a fresh base, and
one trial at an absurd learning rate: the GPU path (bf16, CUDA) end to end without Ray or lm-eval.

    python benchmarks/trials.py --data-dir DATA [--model smollm2-135m] [--preset gpu]
        [--steps 200] [--json FILE]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

from harness.config import TrialConfig  # noqa: E402
from harness.tasks import resolve  # noqa: E402
from harness.model import pick_device  # noqa: E402
from harness.train import prepare, run_trial, validation_loss  # noqa: E402

# Each method near its best learning rate of the cpu sweep (docs/results-cpu.md), then lora at 1.0.
RUNS = [("lora", 2e-4), ("pissa", 5e-5), ("lora-ga", 5e-5), ("riemannian", 2e-4),
        ("lora-one", 2e-4), ("lora", 1.0)]


def reloaded_loss(cfg) -> float:
    """Validation loss of the saved adapter on a freshly loaded original base."""
    model, tok, _, val_ex = prepare(cfg, pick_device(cfg.device))
    model = PeftModel.from_pretrained(model, Path(cfg.out) / "adapter").to(model.device)
    return validation_loss(model, val_ex, cfg.batch_size, tok.pad_token_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="/tmp/harness-trials")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    rows = []
    print(f"{'method':<11} {'lr':>7} {'status':>9} {'step':>5} {'val0':>7} {'val':>7} {'reload':>7} "
          f"{'s/step':>7} {'tok/s':>7} {'peak MiB':>9} {'wall s':>7}")
    for method, lr in RUNS:
        cfg = resolve(TrialConfig(method=method, lr=lr, preset=args.preset, model=args.model,
                                  data_dir=args.data_dir, out=f"{args.out}/{method}-{lr:g}",
                                  steps=args.steps, eval_interval=max(1, args.steps // 4),
                                  val_size=128, eval_limit=0))
        start = time.perf_counter()
        row = dict(method=method, lr=lr, **run_trial(cfg), wall_s=time.perf_counter() - start)
        if row["status"] == "finished":
            row["reloaded_val_loss"] = reloaded_loss(cfg)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        rows.append(row)
        print(f"{method:<11} {lr:7.0e} {row['status']:>9} {row['step']:5d} {row['val_loss_init']:7.4f} "
              f"{row['val_loss']:7.4f} {row.get('reloaded_val_loss', float('nan')):7.4f} "
              f"{row['step_seconds']:7.3f} {row['tokens_per_s']:7.0f} {row['peak_mem_mb']:9.0f} "
              f"{row['wall_s']:7.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), device=str(pick_device()),
                                                   rows=rows), indent=2))


if __name__ == "__main__":
    main()

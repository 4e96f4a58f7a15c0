"""Init seconds on a cache miss (computed and stored) against a hit (loaded), per method.

    python benchmarks/init_cache.py --data-dir /work/shared/data [--model tiny] [--repeats 3]

Each repeat starts an empty cache folder: a miss (the gradient phase, PEFT and the SVDs, plus the
write), then a hit of the same key (read, PEFT's plain init, the stored factors written in). Both
are timed inside add_adapters, as a trial times them; the model is loaded fresh for each.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.config import TrialConfig, resolve  # noqa: E402
from harness.train import add_adapters, prepare  # noqa: E402

METHODS = ("lora-ga", "lora-one", "pissa")


def init_info(cfg) -> dict:
    model, tok, train_ex, _ = prepare(cfg, torch.device("cpu"))
    return add_adapters(cfg, model, train_ex, tok.pad_token_id, torch.device("cpu"))[1]


def measure(method: str, args) -> tuple[list, list, int]:
    misses, hits, size = [], [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cfg = resolve(TrialConfig(method=method, lr=1e-3, preset="smoke", model=args.model,
                                      data_dir=args.data_dir, init_cache=cache))
            miss, hit = init_info(cfg), init_info(cfg)
            assert (miss["init_cached"], hit["init_cached"]) == (0, 1)
            misses.append(sum(miss.get(k, 0) for k in ("grad_seconds", "init_seconds", "init_save_seconds")))
            hits.append(hit["init_seconds"])
            size = sum(f.stat().st_size for f in Path(cache).glob("*.pt"))
    return misses, hits, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'method':<10} {'miss s':>8} {'hit s':>8} {'saved':>7} {'entry KB':>9}   (medians of {args.repeats})")
    for method in METHODS:
        misses, hits, size = measure(method, args)
        miss, hit = statistics.median(misses), statistics.median(hits)
        print(f"{method:<10} {miss:8.3f} {hit:8.3f} {miss / hit:6.0f}x {size / 1024:9.0f}")


if __name__ == "__main__":
    main()

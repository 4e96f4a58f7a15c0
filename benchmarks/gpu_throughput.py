"""Training throughput of the `gpu` preset's model shapes: the loop before and after length-aware
batching and selective logits, at several batch sizes, in one run of a few minutes.

    python benchmarks/gpu_throughput.py [--batch-sizes 8,16,32] [--steps 12] [--compile] [--json FILE]
    python benchmarks/gpu_throughput.py --tiny      # the same on a tiny model, for a CPU

Needs only torch, transformers and peft (and this repository's harness.data, loss and flops): the
model is Qwen3-0.6B's architecture with random weights (throughput does not depend on the
weights, and a GPU machine may have no hub access), in bf16 with SDPA attention, LoRA rank 8 on
every linear layer; the rows are random tokens with GSM8K-like lengths (prompt 40-120 tokens,
answer 60-220). Per batch size and loop: real (non-padding) tokens/s and MFU over the timed
steps after 2 warm-up steps, and the peak allocated memory (CUDA; resident set on a CPU).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from harness import data  # noqa: E402
from harness.flops import Counter, peak  # noqa: E402
from harness.loss import loss_of, selective_loss  # noqa: E402

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                 max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6)
TINY = dict(QWEN3_06B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=4096)
LOOPS = {"padded": ("shuffle", False), "bucketed": ("bucket", True)}
WARMUP = 2


def rows(count: int, vocab: int, max_length: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt, answer = rng.randint(40, 120), rng.randint(60, 220)
        ids = [rng.randrange(vocab) for _ in range(prompt + answer)][:max_length]
        out.append((ids, ([-100] * prompt + ids[prompt:])[:max_length]))
    return out


def build(shape: dict, device, dtype):
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**shape, attn_implementation="sdpa")).to(dtype)
    # PEFT keeps the adapters in fp32 on a bf16 base (autocast_adapter_dtype), as in the harness
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def memory_now(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil
    return psutil.Process().memory_info().rss / 2**30


def measure(args, shape, device, dtype, batch_size: int, loop: str, compiled: bool) -> dict:
    batching, selective = LOOPS[loop]
    model = build(shape, device, dtype)
    # compiled: the whole loss, decoder, head and cross-entropy (on CPU it beat the decoder alone)
    whole = torch.compile(selective_loss, dynamic=True) if compiled else None

    def loss(batch):
        if whole:
            return whole(model, {k: v.to(device) for k, v in batch.items()})
        return loss_of(model, batch, selective)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = data.batches(rows(2000, shape["vocab_size"], args.max_length), batch_size, 0, 0, batching)
    counter, tokens, work, seconds = Counter(model), 0, 0.0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(WARMUP + args.steps):
        batch = next(batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss(batch).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARMUP:
            seconds += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
            work += counter.batch(batch)
    return dict(tokens_per_s=tokens / seconds, flops_per_s=work / seconds, peak_gib=memory_now(device))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="also measure the bucketed loop under torch.compile")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same kind (a CPU check)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else QWEN3_06B
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_flops, source = peak(device, dtype)
    print(f"{card}, {dtype}, {'tiny model' if args.tiny else 'Qwen3-0.6B shapes'}; MFU against "
          f"{peak_flops / 1e12:.1f} TFLOP/s ({source})", flush=True)
    variants = [(loop, False) for loop in LOOPS] + ([("bucketed", True)] if args.compile else [])
    results = []
    print(f"{'batch':>5} {'loop':<18} {'real tok/s':>10} {'MFU':>6} {'peak GiB':>8}")
    for size in map(int, args.batch_sizes.split(",")):
        for loop, compiled in variants:
            name = loop + (" + compile" if compiled else "")
            try:
                r = measure(args, shape, device, dtype, size, loop, compiled)
            except torch.OutOfMemoryError:
                r = dict(tokens_per_s=None, flops_per_s=None, peak_gib=None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.append(dict(batch_size=size, loop=name, **r))
            text = "out of memory" if r["tokens_per_s"] is None else \
                f"{r['tokens_per_s']:10.0f} {r['flops_per_s'] / peak_flops:6.1%} {r['peak_gib']:8.2f}"
            print(f"{size:>5} {name:<18} {text}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=card, dtype=str(dtype), peak_flops=peak_flops,
                                                   peak_source=source, args=vars(args), results=results), indent=2))


if __name__ == "__main__":
    main()

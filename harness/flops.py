"""Model FLOPs of a LoRA training step, and the peak they are measured against (MFU).

Per step, counting only real tokens and the positions the loss needs (docs/benchmarks.md):
  4 x frozen matmul weights x real tokens        forward, and backward to the inputs only
  6 x trainable weights x real tokens            forward, backward to inputs and to weights
  12 x layers x attention width x sum n(n+1)/2   causal scores and values, forward and backward
  4 x LM-head weights x supervised tokens        the vocabulary projection, where labels are set
Recomputation (activation checkpointing) and padding are not model FLOPs."""

import time

import torch

# Dense tensor-core peaks from the vendors' data sheets (bf16/fp16, no sparsity), in FLOP/s.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


class Counter:
    """Model FLOPs of the batches of one model, from its shapes."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.frozen = sum(m.weight.numel() for m in linears if not m.weight.requires_grad)
        self.head = head.weight.numel()
        config = model.config
        heads = config.num_attention_heads
        self.attention = config.num_hidden_layers * heads * (getattr(config, "head_dim", None)
                                                             or config.hidden_size // heads)

    def batch(self, batch: dict) -> float:
        lengths = batch["attention_mask"].sum(dim=1).double()
        real = float(lengths.sum())
        supervised = float((batch["labels"][:, 1:] != -100).sum())
        causal = float((lengths * (lengths + 1) / 2).sum())
        return (4 * self.frozen + 6 * self.trainable) * real + 12 * self.attention * causal + 4 * self.head * supervised


def peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from): a data-sheet peak for known GPUs in 16-bit, else the
    fastest of a few square matmuls measured here (on a CPU: what its cores reach in `dtype`)."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for card, flops in GPU_PEAKS.items():
            if card in name:
                return flops, f"data sheet ({card})"
    return measured(device, dtype), "measured matmul"


def measured(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, until = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < until:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best

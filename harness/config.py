"""Trial configuration: presets, the TrialConfig dataclass, and input validation."""

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


# Per-preset defaults of the trial fields. `model` names a hub id, a local folder,
# or one of the built-in models of harness.model ("tiny", "smollm2-135m").
PRESETS = {
    "smoke": dict(model="tiny", steps=24, batch_size=4, max_length=128, eval_interval=8,
                  val_size=16, train_size=512, warmup_steps=2, lrs=[1e-3, 3e-3, 1e-2]),
    "cpu": dict(model="smollm2-135m", steps=30, batch_size=4, max_length=192, eval_interval=10,
                val_size=24, train_size=2048, warmup_steps=3, lrs=[5e-5, 2e-4, 8e-4]),
    "gpu": dict(model="Qwen/Qwen3-0.6B", steps=1000, batch_size=16, max_length=512,
                eval_interval=100, val_size=256, train_size=0, warmup_steps=50,
                lrs=[1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3]),
    # LoRA-One's Llama-2-7B recipe: MetaMathQA-100k, batch 32, one epoch, linear schedule,
    # 100 warmup steps, weight decay 0, max length 1024.
    "paper": dict(model="meta-llama/Llama-2-7b-hf", train_data="metamathqa", steps=3125,
                  batch_size=4, grad_accum=8, max_length=1024, eval_interval=250, val_size=256,
                  train_size=100_000, warmup_steps=100,
                  lrs=[2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3]),
}


@dataclass
class TrialConfig:
    method: str
    lr: float
    task: str = "gsm8k"
    preset: str = "smoke"
    model: str = ""
    train_data: str = ""              # training set; defaults to the task's own train split
    data_dir: str = ""                # local data folder (layout: <task>/train.jsonl, test.jsonl)
    out: str = ""                     # trial folder: metrics.json, adapter/
    seed: int = 0
    steps: int = 0
    batch_size: int = 0
    grad_accum: int = 1
    max_length: int = 0
    eval_interval: int = 0
    val_size: int = 0
    train_size: int = 0               # 0 = the whole training split
    warmup_steps: int = 0
    weight_decay: float = 0.0
    targets: str = "all-linear"       # or a comma list of module-name suffixes
    diverge_factor: float = 2.0       # train loss above this multiple of the initial val loss
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    hparams: dict = field(default_factory=dict)   # method hyperparameters (rank, alpha, ...)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(cfg: TrialConfig) -> TrialConfig:
    """Fill the fields left at 0 / "" from the preset, then validate everything."""
    if cfg.preset not in PRESETS:
        raise UsageError(f"unknown preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[cfg.preset]
    for f in fields(cfg):
        if f.name in preset and getattr(cfg, f.name) in (0, "", None):
            setattr(cfg, f.name, preset[f.name])
    cfg.data_dir = cfg.data_dir or os.environ.get("HARNESS_DATA_DIR", "")
    if cfg.data_dir:
        cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    if cfg.out:
        cfg.out = str(Path(cfg.out).expanduser().resolve())
    validate(cfg)
    return cfg


def positive(name: str, value, *, allow_zero=False):
    """Check that a number is finite and > 0 (or >= 0); return it as given."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{name} must be a number {bound}, got {value!r}")
    return value


def validate(cfg: TrialConfig):
    from methods import get as get_method
    from harness.data import TASKS

    if cfg.task not in TASKS:
        raise UsageError(f"unknown task {cfg.task!r}: choose one of {', '.join(TASKS)}")
    positive("--lr", cfg.lr)
    for name in ("steps", "batch_size", "grad_accum", "max_length", "eval_interval", "val_size"):
        positive(name, getattr(cfg, name))
    for name in ("train_size", "warmup_steps", "weight_decay"):
        positive(name, getattr(cfg, name), allow_zero=True)
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise UsageError(f"data folder {cfg.data_dir} does not exist: pass --data-dir with a folder "
                         f"holding <task>/train.jsonl and test.jsonl")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UsageError(f"unknown device {cfg.device!r}: use auto, cpu or cuda")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {cfg.dtype!r}: use auto, float32, bfloat16 or float16")
    cfg.hparams = get_method(cfg.method).resolve(cfg.hparams)

"""Trial configuration: presets, the TrialConfig dataclass, and input validation.

The bottom layer: it imports nothing of harness. Which preset and task defaults a config takes is
decided by the tasks layer (harness.tasks.resolve), which then calls `fill` here."""

import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


class Interrupted(Exception):
    """A signal stopped the sweep (harness/interrupt.py): the CLI prints one line with `resume`, the
    command that continues it, and exits with 128 + the signal's number."""

    def __init__(self, signum: int, resume: str = ""):
        super().__init__(f"signal {signum}")
        self.signum, self.resume = signum, resume


class Halt(Exception):
    """The run cannot go on for a reason outside its input (a full disk): the CLI prints the
    message on one line and exits with code 1."""


def quote(value, limit: int = 100) -> str:
    """A user's value for an error line: its repr, cut to `limit` characters (a value may be huge)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 10 * limit else repr(value[:10 * limit])
    return text if len(text) <= limit else text[:limit] + "...(cut)"


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(what: str, name) -> str:
    """A name used as a folder and in MLflow filters: no path separators, `..`, quotes or spaces."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"{what} must be a name of letters, digits, '.', '_' or '-' (at most 128, not "
                         f"starting with '.' or '-'), got {quote(name)}")
    return name


class PlainLoader(yaml.SafeLoader):
    """Plain YAML values only: no tags (SafeLoader) and no aliases, so a few hundred bytes of nested
    aliases (a "billion laughs" file) cannot expand into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


def writable(what: str, folder: Path):
    """The folder, or the nearest existing folder above it, must let us create files."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:  # a file made and removed at once: os.access says yes to root on read-only file systems
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UsageError(f"{what} {quote(str(folder))} is not writable ({quote(str(existing))} is not a "
                         f"folder we may write in): use a folder you can write to")


def load_yaml(text: str):
    """yaml.safe_load without aliases (PlainLoader); errors are yaml.YAMLError."""
    return yaml.load(text, Loader=PlainLoader)


# Per-preset defaults of the trial fields. `model` names a hub id, a local folder,
# or one of the built-in models of harness.model ("tiny", "smollm2-135m"). A preset may name
# the task it is made for (used when no --task is given); a task file may add its own presets.
PRESETS = {
    "smoke": dict(model="tiny", steps=24, batch_size=4, max_length=128, eval_interval=8,
                  val_size=16, train_size=512, schedule="linear", warmup_steps=2, eval_limit=5),
    # Sized so that the 15-trial sweep of all methods finishes in well under 45 minutes on 2 cores.
    # Random batches: in its 24 steps, length-sorted ones ended 0.020 higher in val loss (5 seeds,
    # 5 standard errors; docs/benchmarks.md), and they save only 6% of its tokens.
    "cpu": dict(model="smollm2-135m", steps=24, batch_size=4, max_length=160, eval_interval=8,
                val_size=16, train_size=2048, schedule="linear", warmup_steps=3, eval_limit=10,
                batching="shuffle"),
    # PEFT method_comparison's schedule: cosine with 10% warm-up.
    "gpu": dict(model="Qwen/Qwen3-0.6B", steps=1000, batch_size=16, max_length=512,
                eval_interval=100, val_size=256, train_size=0, schedule="cosine", warmup_ratio=0.1,
                eval_limit=1319),
    # LoRA-One's Llama-2-7B recipe: MetaMathQA-100k, batch 32, one epoch, linear schedule,
    # 100 warmup steps, weight decay 0, max length 1024; the reference's prompt and answer format.
    "paper": dict(task="metamath-gsm8k-loraone", model="meta-llama/Llama-2-7b-hf", steps=3125,
                  batch_size=4, grad_accum=8, max_length=1024, eval_interval=250, val_size=256,
                  train_size=100_000, schedule="linear", warmup_steps=100, eval_limit=1319),
}


# Clipping at 1.0 is the Hugging Face default, which every reference run used.
COMMON = dict(dtype="auto", grad_accum=1, max_grad_norm=1.0, warmup_steps=0, warmup_ratio=0.0,
              weight_decay=0.0, targets="all-linear", batching="bucket", kernels="fused")
SCHEDULES = ("linear", "cosine", "constant")
BATCHINGS = ("bucket", "shuffle")
KERNELS = ("fused", "library")


@dataclass
class TrialConfig:
    """One trial. Fields left at None are taken from the preset (on a toy task, from the task)."""
    method: str
    lr: float | None = None           # required, except on toy tasks (their step size)
    task: str | None = None           # default: the preset's task, else gsm8k
    preset: str = "smoke"
    tasks_dir: str = ""               # a folder of task YAML files beside the built-in ones
    model: str | None = None
    data_dir: str = ""                # local data folder (layout: <source>/<file>, as the task names)
    out: str = ""                     # trial folder: metrics.json, adapter/
    init_cache: str = ""              # folder of stored adapter inits (harness.inits); "" = none
    seed: int = 0
    steps: int | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    max_length: int | None = None
    eval_interval: int | None = None
    val_size: int | None = None
    train_size: int | None = None     # 0 = the whole training split
    schedule: str | None = None       # linear | cosine | constant (transformers.get_scheduler)
    warmup_steps: int | None = None   # warm-up from lr 0; or warmup_ratio of the steps (one of them)
    warmup_ratio: float | None = None
    max_grad_norm: float | None = None  # clip the raw gradient norm before each step; 0 = off
    batching: str | None = None       # bucket (rows of similar length batched together) | shuffle
    kernels: str | None = None        # fused (harness.kernels: LoRA layers, RMSNorm; same sums) | library
    eval_limit: int | None = None     # GSM8K test questions scored after training; 0 = none
    weight_decay: float | None = None
    targets: str | None = None        # all-linear, or a comma list of module-name suffixes
    diverge_factor: float = 2.0       # train loss above this multiple of the initial val loss
    device: str = "auto"
    dtype: str | None = None          # auto, float32, bfloat16, float16
    trust_remote_code: bool = False
    hparams: dict = field(default_factory=dict)   # method hyperparameters (rank, alpha, ...)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def warmup(self) -> int:
        """Warm-up steps: warmup_steps, or the ratio of the steps rounded up (as transformers does)."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * self.steps)


def fill(cfg: TrialConfig, preset: dict) -> TrialConfig:
    """Fill the fields left at None from `preset` (a preset with the task's defaults over it),
    make paths absolute, and validate what needs no task."""
    preset = {**COMMON, **preset}
    if cfg.warmup_ratio is not None and cfg.warmup_steps is None:  # a given ratio replaces preset steps
        cfg.warmup_steps = 0
    if cfg.warmup_steps is not None and cfg.warmup_ratio is None:
        cfg.warmup_ratio = 0.0
    for f in fields(cfg):
        if getattr(cfg, f.name) is None and f.name in preset:
            setattr(cfg, f.name, preset[f.name])
    cfg.data_dir = cfg.data_dir or os.environ.get("HARNESS_DATA_DIR", "")
    for name in ("data_dir", "tasks_dir", "out"):  # Ray trials run in their own folder
        if getattr(cfg, name):
            setattr(cfg, name, str(Path(getattr(cfg, name)).expanduser().resolve()))
    validate(cfg)
    return cfg


def positive(name: str, value, *, allow_zero=False):
    """Check that a number is finite and > 0 (or >= 0); return it as given."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{name} must be a number {bound}, got {quote(value)}")
    return value


def fraction(name: str, value):
    """Check that a number is a fraction from 0 to below 1; return it as given."""
    if not positive(name, value, allow_zero=True) < 1:
        raise UsageError(f"{name} must be a fraction below 1, got {value:g}")
    return value


def validate(cfg: TrialConfig):
    """Checks of a filled config that need no task (the task checks the rest)."""
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32 - 1000:
        raise UsageError(f"--seed must be a whole number from 0 to 2**32 - 1000, got {quote(cfg.seed)}")
    if cfg.lr is None:
        raise UsageError(f"--lr is required for task {cfg.task}: pass the learning rate")
    positive("--lr", cfg.lr)
    for name in ("steps", "batch_size", "grad_accum", "max_length", "eval_interval", "val_size"):
        positive(name, getattr(cfg, name))
    for name in ("train_size", "warmup_steps", "warmup_ratio", "max_grad_norm", "weight_decay", "eval_limit"):
        positive(name, getattr(cfg, name), allow_zero=True)
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {quote(cfg.schedule)}: use {', '.join(SCHEDULES)}")
    if cfg.batching not in BATCHINGS:
        raise UsageError(f"unknown batching {quote(cfg.batching)}: use {', '.join(BATCHINGS)}")
    if cfg.kernels not in KERNELS:
        raise UsageError(f"unknown --kernels {quote(cfg.kernels)}: use {', '.join(KERNELS)}")
    if cfg.warmup_steps and cfg.warmup_ratio:
        raise UsageError(f"warmup_steps {cfg.warmup_steps} and warmup_ratio {cfg.warmup_ratio:g} both set: "
                         f"give one of --warmup-steps or --warmup-ratio")
    if cfg.warmup_ratio >= 1:
        raise UsageError(f"--warmup-ratio {cfg.warmup_ratio:g} must be below 1 (a fraction of the steps)")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise UsageError(f"data folder {quote(cfg.data_dir)} does not exist: pass --data-dir with a folder "
                         f"holding the task's data (for gsm8k: gsm8k/train.jsonl and test.jsonl)")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UsageError(f"unknown device {quote(cfg.device)}: use auto, cpu or cuda")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {quote(cfg.dtype)}: use auto, float32, bfloat16 or float16")


def trial_spec(config: dict) -> dict:
    """{method, lr, seed, hparams} of a Tune trial config: a grid entry under "trial", or the flat
    keys of an Optuna trial ("method", "<method>/lr", "<method>/<hyperparameter>"), which Ray
    may have unflattened into {"<method>": {"lr": ...}}."""
    if "trial" in config:
        return config["trial"]
    method = config["method"]
    own = dict(config.get(method, {}))
    own.update({k.split("/", 1)[1]: v for k, v in config.items() if k.startswith(method + "/")})
    lr = own.pop("lr")
    return dict(method=method, lr=lr, seed=config.get("seed", 0), hparams=own)

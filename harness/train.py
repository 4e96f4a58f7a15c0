"""One fine-tuning trial: load, (estimate gradients), add adapters, train, validate, save.

`run_trial` reports a metrics dict at step 0 and every eval interval (to a callback such as Ray
Tune's report), stops early when the loss diverges, and saves an adapter that applies to the
original base model for every method."""

import json
import math
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from tqdm import tqdm

import methods
from harness import data, inits, kernels
from harness.config import TrialConfig
from harness.faults import maybe_inject
from harness.flops import Counter, peak
from harness.loss import loss_of
from harness.memory import PeakMemory, keep_freed
from harness.model import load, pick_device, pick_dtype, target_modules


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def validation_loss(model, examples, batch_size: int, pad_id: int) -> float:
    """Token-weighted mean cross-entropy over the validation examples."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in data.in_order(examples, batch_size, pad_id):
        count = int((batch["labels"][:, 1:] != -100).sum())
        total += loss_of(model, batch).item() * count
        tokens += count
    model.train(was_training)
    return total / tokens


def schedule(optimizer, cfg: TrialConfig):
    """transformers' schedule, warm-up from lr 0; "constant" keeps the warm-up (constant_with_warmup)."""
    from transformers import get_scheduler
    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)


def clip(params, max_norm: float) -> float:
    """The raw gradient norm; the gradients are scaled down to max_norm when above it (0: never)."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf).item()


def prepare(cfg: TrialConfig, device, training: data.Training = data.Training()):
    """(model, tokenizer, train examples, val examples) for a resolved config and the task's
    training rows and format (default: the gsm8k task's)."""
    model, tok = load(cfg.model, device, pick_dtype(device, cfg.dtype), cfg.trust_remote_code)
    return (model, tok, *examples(cfg, tok, training))


def examples(cfg: TrialConfig, tok, training: data.Training) -> tuple[list, list]:
    """(train, val) examples: the task's rows, split and tokenized."""
    rows = data.load_rows(training.source, "train", cfg.data_dir)
    train_rows, val_rows = data.split_rows(rows, cfg.val_size, cfg.train_size, training.split_seed)
    return (data.encode(train_rows, tok, cfg.max_length, training.format),
            data.encode(val_rows, tok, cfg.max_length, training.format))


class Timer:
    """Seconds spent per phase, summed over every entry to it: `with timer("val"): ...`."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict:
        return {f"{phase}_seconds": seconds for phase, seconds in self.seconds.items()}


def add_adapters(cfg: TrialConfig, model, train_ex, pad_id, device) -> tuple:
    """The PEFT model with the method's init, from the init cache when it holds it, and the init
    phase's measurements. The init draws its random numbers (PEFT's kaiming A, randomized SVDs)
    from a stream seeded by the trial seed and then put back, so training continues from the same
    RNG state whether the init was computed or loaded."""
    method = methods.get(cfg.method)
    targets = target_modules(model, cfg.targets)
    fields = inits.key(cfg, method, model, targets, train_ex) if cfg.init_cache and inits.cacheable(method, cfg.hparams) else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        entry = inits.load(cfg.init_cache, fields) if fields else None
        if entry:
            model = load_init(cfg, method, model, targets, entry)
            return model, dict(init_cached=1, init_seconds=time.perf_counter() - start)
        before = inits.originals(model, targets) if fields and method.mutates_base else None
        model, info = compute_init(cfg, method, model, targets, train_ex, pad_id, device)
        if fields:
            start = time.perf_counter()
            inits.save(cfg.init_cache, fields, inits.capture(model, before))
            info["init_save_seconds"] = time.perf_counter() - start
    return model, info


def compute_init(cfg: TrialConfig, method, model, targets, train_ex, pad_id, device) -> tuple:
    """The method's data pass (logged as grad_seconds and grad_peak_mb, the names of the gradient
    phase it generalises), then PEFT's adapters and the method's init."""
    hp, found, info = cfg.hparams, None, dict(init_cached=0)
    if method.data_samples:
        start = time.perf_counter()
        with PeakMemory(device) as peak:
            batches = list(data.in_order(train_ex[:hp[method.data_samples]], 1, pad_id))
            found = method.data_pass(model, batches, targets, hp)
        info.update(grad_seconds=time.perf_counter() - start, grad_peak_mb=peak.mb)
    start = time.perf_counter()
    model = get_peft_model(model, method.lora_config(hp, targets))
    method.init_adapters(model, hp, found)
    info["init_seconds"] = time.perf_counter() - start
    return model, info


def load_init(cfg: TrialConfig, method, model, targets, entry: dict):
    """PEFT's plain init (no SVD), overwritten by the stored factors and base weights."""
    config = method.lora_config(cfg.hparams, targets)
    init, config.init_lora_weights = config.init_lora_weights, True
    model = get_peft_model(model, config)
    model.peft_config["default"].init_lora_weights = init   # saved in adapter_config.json
    inits.restore(model, entry, method.mutates_base)
    return model


def save_adapter(cfg: TrialConfig, model, init_dir: Path | None):
    """Save to <out>/adapter; adapters of a modified base are converted to apply to the original."""
    model.save_pretrained(Path(cfg.out) / "adapter",
                          path_initial_model_for_weight_conversion=str(init_dir) if init_dir else None)
    if init_dir:
        shutil.rmtree(init_dir, ignore_errors=True)


def save_init(model, out: str) -> Path:
    """The untrained adapter, which PEFT's conversion subtracts at save time."""
    init_dir = Path(out) / "init_adapter"
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True  # reload must not re-run the init
    model.save_pretrained(init_dir)
    config.init_lora_weights = init
    return init_dir


def run_trial(cfg: TrialConfig, report=None, progress: bool = False,
              training: data.Training = data.Training()) -> dict:
    """Train one resolved config; returns the final metrics (also written to <out>/metrics.json)."""
    started, timer = time.perf_counter(), Timer()
    seed_everything(cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    keep_freed(device)
    with timer("load"):
        model, tok = load(cfg.model, device, dtype, cfg.trust_remote_code)
    with timer("data"):
        train_ex, val_ex = examples(cfg, tok, training)
    model, info = add_adapters(cfg, model, train_ex, tok.pad_token_id, device)
    info["fused_modules"] = kernels.install(model, cfg.kernels)
    method = methods.get(cfg.method)
    init_dir = save_init(model, cfg.out) if method.mutates_base else None
    optimizer = method.optimizer(model, cfg.lr, cfg.hparams, cfg.weight_decay)
    lr_schedule = schedule(optimizer, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    info.update(trainable_params=sum(p.numel() for p in params),
                total_params=sum(p.numel() for p in model.parameters()))
    flops, (peak_flops, info["peak_source"]) = Counter(model), peak(device, dtype)
    batches = data.batches(train_ex, cfg.batch_size, tok.pad_token_id, cfg.seed, cfg.batching)

    def val():
        with timer("val"):
            return validation_loss(model, val_ex, cfg.batch_size, tok.pad_token_id)

    val_init = val()
    history = [dict(step=0, val_loss=val_init, lr_now=lr_schedule.get_last_lr()[0])]
    if report:
        report(history[0])
    status, ema, tokens, work, train_time, step_times, memory = "finished", None, 0, 0.0, 0.0, [], []
    model.train()
    bar = tqdm(total=cfg.steps, disable=not progress, desc=f"{cfg.method} lr={cfg.lr:g}", unit="step")
    with PeakMemory(device) as peak_memory:
        for step in range(1, cfg.steps + 1):
            start = time.perf_counter()
            loss = 0.0
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                part = maybe_inject(cfg, step, loss_of(model, batch)) / cfg.grad_accum
                part.backward()
                loss += part.item()
                tokens += int(batch["attention_mask"].sum())  # real tokens: padding is not work done
                work += flops.batch(batch)
            lr = lr_schedule.get_last_lr()[0]
            grad_norm = clip(params, cfg.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - start)
            train_time += step_times[-1]
            memory.append(peak_memory.now())
            ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
            if not math.isfinite(loss) or ema > cfg.diverge_factor * val_init:
                status = "diverged"
            if status == "diverged" or step % cfg.eval_interval == 0 or step == cfg.steps:
                point = dict(step=step, train_loss=loss, lr_now=lr, grad_norm=grad_norm, train_tokens=tokens,
                             train_seconds=train_time, tokens_per_s=tokens / train_time,
                             mfu=work / train_time / peak_flops, peak_mem_mb=peak_memory.so_far())
                if status == "finished":
                    point["val_loss"] = val()
                history.append(point)
                tokens, work, train_time = 0, 0.0, 0.0
                if report:
                    report(point)
            if status == "diverged":
                break
    bar.close()
    if status == "finished":
        save_adapter(cfg, model, init_dir)
    elif init_dir:
        shutil.rmtree(init_dir, ignore_errors=True)
    info.update(mem_avg_mb=float(np.mean(memory)), mem_p99_mb=float(np.percentile(memory, 99)),
                peak_tflops=peak_flops / 1e12, **timer.metrics())
    result = summarize(history, status, val_init, info, step_times)
    result["seconds"] = time.perf_counter() - started
    Path(cfg.out, "metrics.json").write_text(json.dumps(
        {"config": cfg.to_dict(), **result, "history": history}, indent=2))
    return result


def summarize(history, status, val_init, info, step_times) -> dict:
    last = history[-1]
    vals = [p["val_loss"] for p in history if "val_loss" in p]
    # Skip the first steps: they include one-off warm-up costs (allocator, kernels).
    steady = step_times[len(step_times) // 4:] or step_times
    return dict(status=status, step=last["step"], val_loss=vals[-1], val_loss_init=val_init,
                best_val_loss=min(vals), train_loss=last.get("train_loss"),
                grad_norm=last.get("grad_norm"), tokens_per_s=last.get("tokens_per_s"), mfu=last.get("mfu"),
                peak_mem_mb=last.get("peak_mem_mb"), train_tokens=sum(p.get("train_tokens", 0) for p in history),
                train_seconds=float(sum(step_times)), step_seconds=float(np.median(steady)) if steady else None, **info)

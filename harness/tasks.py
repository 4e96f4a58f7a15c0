"""Tasks: what a trial fits and how it is scored. Config, sweep, report and CLI ask the task and
never which kind it is. Two kinds implement the same attributes:
- LLMTask (gsm8k, below): fine-tunes a causal LM on the task's data, scored by lm-eval;
- harness.toy.Toy: the LoRA-One paper's linear model, fitted in seconds on a CPU."""

import functools
import os
from pathlib import Path

import methods
from harness.config import UsageError

PARAMS = {"tiny": 3.3e6, "smollm2-135m": 134.5e6, "Qwen/Qwen3-0.6B": 0.6e9,
          "meta-llama/Llama-2-7b-hf": 6.74e9}


class LLMTask:
    defaults = {}            # TrialConfig fields the task sets in place of the preset's
    reuse_workers = False    # a trial loads a model: a fresh worker costs little beside it

    def __init__(self, name: str):
        self.name = name

    def hparams(self, method: str, overrides: dict) -> dict:
        return methods.get(method).resolve(overrides)

    def validate(self, cfg):
        from harness.model import check_name
        check_name(cfg.model)

    def ladder(self, preset: str, folder: Path) -> list[float]:
        from harness import spaces
        return spaces.ladder(preset, folder)

    def spaces(self, names: list[str], folder: Path) -> dict:
        from harness import spaces
        return spaces.load(folder)

    def preflight(self, trial):
        """A missing file or corrupt row is reported before the sweep, not in every trial."""
        from harness import data
        if trial.data_dir:
            data.load_rows(trial.train_data or trial.task, "train", trial.data_dir)

    def resources(self, cpus: float, gpus: float, remote: bool) -> tuple[float, float]:
        """(CPUs, GPUs) per trial from the --cpus/--gpus-per-trial values (0 = choose)."""
        import torch
        cpus = cpus or (4 if gpus else max(1, (os.cpu_count() or 1)))
        return cpus, gpus if gpus else (1 if torch.cuda.is_available() and not remote else 0)

    def compute(self, trial, count: int) -> str:
        """The dry run's compute estimate."""
        tokens = trial.steps * trial.batch_size * trial.grad_accum * trial.max_length
        params = PARAMS.get(trial.model)
        flops = f"{4 * params * tokens * count / 1e12:,.1f} TFLOP (4 x params x tokens)" if params else \
            "unknown FLOPs (model size unknown)"
        return (f"compute: {count} trials x <= {tokens:,} training tokens = {flops}, "
                f"plus {trial.eval_limit} GSM8K generations per trial")

    def run(self, cfg, report=None) -> dict:
        """Train one resolved config; from the terminal (no report callback) with a progress bar."""
        from harness.train import run_trial
        return run_trial(cfg, report=report, progress=report is None)

    def score(self, cfg) -> dict:
        """Scores of a finished trial (also written as PEFT's result file, <out>/peft_result.json)."""
        from harness import data, peft_result
        scores = self._evaluate(cfg) if cfg.eval_limit else {}
        peft_result.write(cfg.out, scores, data.PROMPT)
        return scores

    def _evaluate(self, cfg) -> dict:
        """lm-eval on the saved adapter applied to a fresh original base (what a user would load)."""
        from peft import PeftModel

        from harness.evaluate import evaluate
        from harness.model import load, pick_device, pick_dtype
        device = pick_device(cfg.device)
        base, tok = load(cfg.model, device, pick_dtype(device, cfg.dtype), cfg.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(Path(cfg.out, "adapter"))).merge_and_unload()
        return evaluate(model, tok, task=cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit,
                        batch_size=max(cfg.batch_size, 8), out_dir=cfg.out)

    def report_sections(self, analysis, rows, folder) -> list:
        return []


@functools.cache  # asked for every trial config resolved: build the tasks once
def _all() -> dict:
    from harness import data, toy
    return {**{name: LLMTask(name) for name in data.TASKS}, **toy.TASKS}


def names() -> tuple:
    return tuple(_all())


def get(name: str):
    found = _all().get(name)
    if found is None:
        raise UsageError(f"unknown task {name!r}: choose one of {', '.join(names())}")
    return found

"""Score a model on GSM8K with lm-eval, zero-shot, in the prompt format it was fine-tuned on.

The task is lm-eval's own gsm8k.yaml (prompt "Question: ...\\nAnswer:", filters strict-match
"#### N" and flexible-extract "last number"), included by a small YAML written to a temp folder
that makes it zero-shot, caps the generation length, stops at the tokenizer's end-of-sequence
text, and reads the local data folder (<data_dir>/gsm8k/{train,test}.jsonl) when one is given.

With `out_dir`, the per-question samples go to <out_dir>/gsm8k_samples.jsonl, one JSON object
a line: doc_id, question, prompt, generation, target, and per filter the extracted answer and
its exact match (strict_answer, strict_match, flexible_answer, flexible_match).
"""

import json
import logging
import math
import tempfile
import time
from pathlib import Path

import yaml

from harness.config import UsageError
from harness.data import SOURCES, TASKS

FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}
STOCK_UNTIL = ["Question:", "</s>", "<|im_end|>"]  # gsm8k.yaml's stop sequences


def evaluate(model, tokenizer, *, task="gsm8k", data_dir="", limit=None, batch_size=8,
             max_gen_toks=256, out_dir=None) -> dict:
    """Metrics of an in-memory HF or PEFT causal LM: {task}_strict, {task}_flexible (accuracy
    0..1) with their _stderr, {task}_n (questions scored) and eval_seconds, all floats."""
    _check(task, limit)
    from lm_eval.models.huggingface import HFLM
    _quiet()
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", None) or 2048)
    try:
        return evaluate_lm(lm, eos=tokenizer.eos_token, task=task, data_dir=data_dir, limit=limit,
                           max_gen_toks=max_gen_toks, out_dir=out_dir)
    finally:
        model.train(was_training)  # HFLM switches the model to eval mode


def evaluate_lm(lm, *, eos=None, task="gsm8k", data_dir="", limit=None, max_gen_toks=256,
                out_dir=None) -> dict:
    """evaluate() for any lm_eval LM object; `eos` is added to the stop sequences."""
    _check(task, limit)
    import lm_eval
    from lm_eval.tasks import TaskManager
    _quiet()
    name = f"harness_{task}"
    with tempfile.TemporaryDirectory(prefix="harness-task-") as folder:
        config = task_config(task, name, data_dir, max_gen_toks, eos)
        Path(folder, f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[name], task_manager=TaskManager(include_path=folder, include_defaults=False),
            limit=limit, log_samples=out_dir is not None,
            # Greedy decoding needs no seeds: leave the caller's global RNGs alone.
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
        seconds = time.perf_counter() - start
    scores = results["results"][name]
    metrics = {}
    for short, filt in FILTERS.items():
        metrics[f"{task}_{short}"] = _float(scores[f"exact_match,{filt}"])
        metrics[f"{task}_{short}_stderr"] = _float(scores[f"exact_match_stderr,{filt}"])
    metrics[f"{task}_n"] = float(results["n-samples"][name]["effective"])
    metrics["eval_seconds"] = seconds
    if out_dir is not None:
        write_samples(results["samples"][name], Path(out_dir) / f"{task}_samples.jsonl")
    return metrics


def task_config(task: str, name: str, data_dir: str, max_gen_toks: int, eos: str | None) -> dict:
    """The task YAML: lm-eval's stock task, zero-shot, with our stop sequences and data."""
    import lm_eval.tasks
    stock = Path(lm_eval.tasks.__file__).parent / task / f"{task}.yaml"
    until = STOCK_UNTIL + ([eos] if eos and eos not in STOCK_UNTIL else [])
    config = {"include": str(stock), "task": name, "tag": [], "num_fewshot": 0,
              "generation_kwargs": {"until": until, "do_sample": False, "temperature": 0.0,
                                    "max_gen_toks": int(max_gen_toks)}}
    if data_dir:
        files = {split: Path(data_dir, task, file).expanduser().resolve()
                 for split, file in SOURCES[task].files.items()}
        for path in files.values():
            if not path.is_file():
                raise UsageError(f"data file {path} does not exist: pass a data folder holding "
                                 f"{task}/{path.name}")
        config.update(dataset_path="json", dataset_name=None,
                      dataset_kwargs={"data_files": {s: str(p) for s, p in files.items()}})
    return config


def write_samples(samples: list[dict], path: Path):
    """One line per question; lm-eval logs one sample per (question, filter)."""
    rows = {}
    for s in samples:
        row = rows.setdefault(s["doc_id"], {
            "doc_id": s["doc_id"], "question": s["doc"]["question"],
            "prompt": s["arguments"][0][0], "generation": s["resps"][0][0], "target": s["target"]})
        short = next(k for k, v in FILTERS.items() if v == s["filter"])
        row[f"{short}_answer"] = s["filtered_resps"][0]
        row[f"{short}_match"] = float(s["exact_match"])
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for _, row in sorted(rows.items())]
    path.write_text("".join(lines), encoding="utf-8")


def _check(task, limit):
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a whole number of questions >= 1 (or None for all), got {limit!r}")


def _quiet():
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def _float(value) -> float:
    """lm-eval's numpy floats as floats; its "N/A" (stderr of one sample) as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

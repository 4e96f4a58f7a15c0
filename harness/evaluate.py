"""Score a model with lm-eval, in the prompt format it was fine-tuned on.

A task's `Scoring` is turned into an lm-eval task YAML, written to a temp folder: the prompt
(the training prompt, by default zero-shot), greedy generation capped at max_gen_toks that stops
at the task's stop sequences and the tokenizer's end-of-sequence text, two filters ("strict" and
"flexible", regexes over the generation) and lm-eval's exact_match against the reference answer.
The rows come from the local data folder (<data_dir>/<folder>/<file>) when one is given, else
from the hub. The gsm8k task's Scoring is lm-eval's own gsm8k.yaml, zero-shot.

With `out_dir`, the per-question samples go to <out_dir>/<benchmark>_samples.jsonl, one JSON
object a line: doc_id, question, prompt, generation, target, and per filter the extracted answer
and its exact match (strict_answer, strict_match, flexible_answer, flexible_match).
"""

import json
import logging
import math
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.config import UsageError
from harness.data import Source

FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}  # lm-eval's names for GSM8K's


@dataclass(frozen=True)
class Scoring:
    """The evaluation half of a task, as lm-eval runs it."""
    benchmark: str          # metric names: <benchmark>_strict, _flexible, _n
    source: Source          # split "test" is scored; split "train" holds the few-shot examples
    prompt: str             # over {question}, as the training prompt
    answer_prefix: str      # written between a few-shot example's prompt and answer
    num_fewshot: int
    max_gen_toks: int
    until: tuple            # stop sequences (the tokenizer's end of sequence is added)
    filters: dict           # "strict"/"flexible" -> (regex, which match: 0 first, -1 last)
    ignore: tuple           # regexes removed from answer and reference before exact_match


def evaluate(model, tokenizer, scoring: Scoring, *, data_dir="", limit=None, batch_size=8,
             max_gen_toks=None, out_dir=None) -> dict:
    """Metrics of an in-memory HF or PEFT causal LM: {benchmark}_strict, {benchmark}_flexible
    (accuracy 0..1) with their _stderr, {benchmark}_n (questions scored) and eval_seconds, all floats."""
    _check(limit)
    from lm_eval.models.huggingface import HFLM
    _quiet()
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", None) or 2048)
    try:
        return evaluate_lm(lm, scoring, eos=tokenizer.eos_token, data_dir=data_dir, limit=limit,
                           max_gen_toks=max_gen_toks, out_dir=out_dir)
    finally:
        model.train(was_training)  # HFLM switches the model to eval mode


def evaluate_lm(lm, scoring: Scoring, *, eos=None, data_dir="", limit=None, max_gen_toks=None,
                out_dir=None) -> dict:
    """evaluate() for any lm_eval LM object; `eos` is added to the stop sequences."""
    _check(limit)
    import lm_eval
    from lm_eval.tasks import TaskManager
    _quiet()
    name, bench = f"harness_{scoring.benchmark}", scoring.benchmark
    with tempfile.TemporaryDirectory(prefix="harness-task-") as folder:
        config = task_config(scoring, name, data_dir, max_gen_toks or scoring.max_gen_toks, eos)
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
        metrics[f"{bench}_{short}"] = _float(scores[f"exact_match,{filt}"])
        metrics[f"{bench}_{short}_stderr"] = _float(scores[f"exact_match_stderr,{filt}"])
    metrics[f"{bench}_n"] = float(results["n-samples"][name]["effective"])
    metrics["eval_seconds"] = seconds
    if out_dir is not None:
        write_samples(results["samples"][name], Path(out_dir) / f"{bench}_samples.jsonl", scoring.source.question)
    return metrics


def jinja(template: str, field: str, name: str) -> str:
    """A str.format template over {name} as lm-eval's Jinja over the row's `field`."""
    return "".join(literal + ("{{" + field + "}}" if key == name else "")
                   for literal, key, _, _ in string.Formatter().parse(template))


def filter_list(filters: dict) -> list[dict]:
    return [{"name": FILTERS[short], "filter": [
                {"function": "regex", "regex_pattern": regex, "group_select": select},
                {"function": "take_first"}]}
            for short, (regex, select) in filters.items()]


def task_config(scoring: Scoring, name: str, data_dir: str, max_gen_toks: int, eos: str | None) -> dict:
    """The lm-eval task YAML of a Scoring, reading <data_dir> when given."""
    src = scoring.source
    until = list(scoring.until) + ([eos] if eos and eos not in scoring.until else [])
    config = {"task": name, "dataset_path": src.hub, "dataset_name": src.hub_config,
              "output_type": "generate_until", "test_split": "test",
              "doc_to_text": jinja(scoring.prompt, src.question, "question"),
              "doc_to_target": "{{" + src.answer + "}}", "target_delimiter": scoring.answer_prefix,
              "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                               "ignore_case": True, "ignore_punctuation": False,
                               "regexes_to_ignore": list(scoring.ignore)}],
              "generation_kwargs": {"until": until, "do_sample": False, "temperature": 0.0,
                                    "max_gen_toks": int(max_gen_toks)},
              "repeats": 1, "num_fewshot": scoring.num_fewshot,
              "filter_list": filter_list(scoring.filters), "metadata": {"version": 1.0}}
    splits = ["test"] + (["train"] if scoring.num_fewshot else [])
    if scoring.num_fewshot:
        config["fewshot_split"] = "train"
    if data_dir:
        files = {split: Path(data_dir, src.folder, src.files[split]).expanduser().resolve() for split in splits}
        for path in files.values():
            if not path.is_file():
                raise UsageError(f"data file {path} does not exist: pass a data folder holding "
                                 f"{src.folder}/{path.name}")
        config.update(dataset_path="json", dataset_name=None,
                      dataset_kwargs={"data_files": {s: str(p) for s, p in files.items()}})
    elif not src.hub:
        raise UsageError(f"{src.folder} has no hub dataset: pass --data-dir with a folder holding "
                         f"{src.folder}/{src.files['test']}")
    return config


def write_samples(samples: list[dict], path: Path, question: str = "question"):
    """One line per question; lm-eval logs one sample per (question, filter)."""
    rows = {}
    for s in samples:
        row = rows.setdefault(s["doc_id"], {
            "doc_id": s["doc_id"], "question": s["doc"][question],
            "prompt": s["arguments"][0][0], "generation": s["resps"][0][0], "target": s["target"]})
        short = next(k for k, v in FILTERS.items() if v == s["filter"])
        row[f"{short}_answer"] = s["filtered_resps"][0]
        row[f"{short}_match"] = float(s["exact_match"])
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for _, row in sorted(rows.items())]
    path.write_text("".join(lines), encoding="utf-8")


def _check(limit):
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

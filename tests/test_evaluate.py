"""GSM8K scoring with lm-eval: the tiny model end to end, and scripted answers through the
lm_eval LM seam that check the strict ("#### N") and flexible (last number) filters of the gsm8k
task, and that its lm-eval task is lm-eval's own gsm8k.yaml made zero-shot."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from lm_eval.api.model import LM

from harness import tasks
from harness.config import UsageError
from harness.data import load_rows
from harness.evaluate import evaluate, evaluate_lm, task_config
from harness.model import load

GSM8K = tasks.get("gsm8k").scoring

KEYS = {"gsm8k_strict", "gsm8k_strict_stderr", "gsm8k_flexible", "gsm8k_flexible_stderr",
        "gsm8k_n", "eval_seconds"}


@pytest.fixture(scope="module")
def tiny():
    return load("tiny", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def gold(data_dir):
    """question -> official answer text of the test split."""
    return {r["question"]: r["answer"] for r in load_rows("gsm8k", "test", data_dir)}


class Scripted(LM):
    """An lm_eval model that answers each GSM8K prompt with reply(gold answer text)."""

    def __init__(self, gold, reply):
        super().__init__()
        self.gold, self.reply, self.gen_kwargs = gold, reply, []

    def generate_until(self, requests, disable_tqdm=False):
        answers = []
        for request in requests:
            context, gen_kwargs = request.args
            self.gen_kwargs.append(gen_kwargs)
            question = context.removeprefix("Question: ").removesuffix("\nAnswer:")
            answers.append(self.reply(self.gold[question]))
        return answers

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    loglikelihood_rolling = loglikelihood


def test_tiny_model_zero_shot_on_local_data(tiny, data_dir, tmp_path):
    model, tok = tiny
    limit = 5
    metrics = evaluate(model, tok, GSM8K, data_dir=data_dir, limit=limit, batch_size=limit,
                       max_gen_toks=32, out_dir=tmp_path)
    assert set(metrics) == KEYS
    assert all(type(v) is float for v in metrics.values())
    assert metrics["gsm8k_n"] == limit
    assert all(0.0 <= metrics[k] <= 1.0 for k in KEYS - {"gsm8k_n", "eval_seconds"})
    samples = [json.loads(line) for line in Path(tmp_path, "gsm8k_samples.jsonl").read_text().splitlines()]
    assert len(samples) == limit
    rows = load_rows("gsm8k", "test", data_dir)[:limit]
    for sample, row in zip(samples, rows):
        assert sample["prompt"] == f"Question: {row['question']}\nAnswer:"  # zero-shot, training format
        assert sample["prompt"].count("Question:") == 1
        assert sample["target"] == row["answer"]
        assert {"generation", "strict_answer", "flexible_answer"} <= set(sample)
        assert sample["strict_match"] in (0.0, 1.0) and sample["flexible_match"] in (0.0, 1.0)


def wrong_number(answer):
    work, number = answer.rsplit("#### ", 1)
    return f" {work}#### {number}1"


@pytest.mark.parametrize("reply,strict,flexible", [
    (lambda answer: " " + answer, 1.0, 1.0),                                    # gold text
    (wrong_number, 0.0, 0.0),                                                   # wrong final number
    (lambda answer: " The answer is " + answer.rsplit("#### ", 1)[1], 0.0, 1.0),  # right, no ####
], ids=["gold", "wrong-number", "no-hashes"])
def test_filters_score_scripted_answers(gold, data_dir, reply, strict, flexible):
    lm = Scripted(gold, reply)
    metrics = evaluate_lm(lm, GSM8K, eos="<END>", data_dir=data_dir, limit=6, max_gen_toks=7)
    assert metrics["gsm8k_strict"] == strict
    assert metrics["gsm8k_flexible"] == flexible
    assert metrics["gsm8k_n"] == 6
    assert math.isfinite(metrics["gsm8k_strict_stderr"])
    assert all(kw["max_gen_toks"] == 7 and "<END>" in kw["until"] for kw in lm.gen_kwargs)


def test_one_question_has_no_stderr(gold, data_dir):
    metrics = evaluate_lm(Scripted(gold, lambda a: " " + a), GSM8K, data_dir=data_dir, limit=1)
    assert metrics["gsm8k_strict"] == 1.0
    assert math.isnan(metrics["gsm8k_strict_stderr"])


@pytest.mark.parametrize("limit", [-1, 0, 2.5])
def test_invalid_limit_is_a_usage_error(tiny, limit):
    with pytest.raises(UsageError, match="limit"):
        evaluate(*tiny, GSM8K, limit=limit)


def test_gsm8k_task_is_lm_evals_own_zero_shot():
    """The gsm8k task file spells out lm-eval's gsm8k.yaml: same prompt, target, metric, stops and
    filters; only the shot count, the length cap and the data folder differ."""
    import lm_eval.tasks
    stock = yaml.safe_load((Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml").read_text())
    ours = task_config(GSM8K, "harness_gsm8k", "", 256, None)
    for key in ("dataset_path", "dataset_name", "output_type", "test_split", "doc_to_text", "doc_to_target",
                "metric_list", "repeats"):
        assert ours[key] == stock[key], key
    assert ours["target_delimiter"] == " " and ours["num_fewshot"] == 0
    assert ours["generation_kwargs"] == {**stock["generation_kwargs"], "max_gen_toks": 256}
    for mine, theirs in zip(ours["filter_list"], stock["filter_list"]):
        assert mine["name"] == theirs["name"] and mine["filter"][1] == theirs["filter"][1]
        regex = {"group_select": 0, **theirs["filter"][0]}
        assert mine["filter"][0] == regex

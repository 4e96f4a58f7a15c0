"""Every task answers the same questions, so the core never asks which kind a task is. The task
files: each shipped task's training text and lm-eval answer parsing on real GSM8K rows and
made-up MetaMathQA rows, a user's task from --tasks-dir end to end, bad files, presets, dry run."""

import inspect
import json
from dataclasses import asdict
from pathlib import Path

import lm_eval.filters.extraction  # noqa: F401  (registers lm-eval's regex filter)
import lm_eval.filters.selection  # noqa: F401  (and take_first)
import pytest
import torch
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.api.registry import get_filter

from harness import data, tasks
from harness.cli import main
from harness.config import TrialConfig, UsageError
from harness.evaluate import task_config
from harness.tasks import LLMTask

INTERFACE = [name for name in vars(LLMTask) if not name.startswith("_")]


@pytest.mark.parametrize("name", tasks.names())
def test_every_task_has_the_whole_interface(name):
    task = tasks.get(name)
    for attr in INTERFACE:
        ours, theirs = getattr(LLMTask, attr), getattr(type(task), attr)
        if callable(ours):
            assert list(inspect.signature(theirs).parameters) == list(inspect.signature(ours).parameters), attr
        else:
            assert isinstance(getattr(task, attr), type(ours)), attr


def test_known_tasks_and_unknown_task():
    assert {"gsm8k", "toy-linear", "toy-linear-illcond"} <= set(tasks.names())
    with pytest.raises(UsageError, match="unknown task 'mmlu': choose one of gsm8k"):
        tasks.get("mmlu")


def test_resources_per_trial():
    llm, toy = tasks.get("gsm8k"), tasks.get("toy-linear")
    assert llm.resources(0, 1, remote=True) == (4, 1) and llm.resources(3, 0, remote=True) == (3, 0)
    assert toy.resources(0, 0, remote=False) == (1, 0) and toy.reuse_workers and not llm.reuse_workers


# ---- task files ----

@pytest.fixture
def fresh_registry(monkeypatch):
    """--tasks-dir folders added by a test stay with that test."""
    monkeypatch.setattr(tasks, "_folders", [])


def lm_eval_config(name, data_dir):
    """The lm-eval task YAML (as a dict) that a shipped task hands to lm-eval."""
    return task_config(tasks.get(name).scoring, f"harness_{name}", data_dir, 32, None)


def score_generation(config, generation, target) -> dict:
    """{filter name: (extracted answer, exact match)} of one generation, through lm-eval's own
    filter classes and exact_match metric, configured exactly as the task YAML configures them."""
    metric = {k: v for k, v in config["metric_list"][0].items() if k not in ("metric", "aggregation",
                                                                              "higher_is_better")}
    found = {}
    for pipeline in config["filter_list"]:
        resps = [[generation]]
        for step in pipeline["filter"]:
            resps = list(get_filter(step["function"])(**{k: v for k, v in step.items() if k != "function"})
                         .apply(resps, [{}]))
        answer = resps[0]
        match = exact_match_hf_evaluate(predictions=[answer], references=[target], **metric)["exact_match"]
        found[pipeline["name"]] = (answer, float(match))
    return found


@pytest.fixture(scope="module")
def gsm8k_test(data_dir):
    """Real GSM8K test rows with their final numbers."""
    rows = data.load_rows("gsm8k", "test", data_dir)[:4]
    return [(r, r["answer"].rsplit("#### ", 1)[1]) for r in rows]


def metamath_folder(tmp_path) -> str:
    """A data folder with MetaMathQA-style rows (MetaMathQA itself cannot be downloaded here)."""
    rows = [
        {"query": "Tom has 3 apples and buys 4 more. How many apples does he have?", "type": "GSM_AnsAug",
         "response": "Tom has 3 + 4 = 7 apples.\n#### 7\nThe answer is: 7", "original_question": ""},
        {"query": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "type": "MATH_AnsAug",
         "response": "We have $\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.\nThe answer is: \\frac{3}{4}",
         "original_question": ""},
        {"query": "A long one. " * 60, "type": "GSM_Rephrased",
         "response": "Step. " * 150 + "\n#### 1\nThe answer is: 1", "original_question": ""},
    ]
    folder = tmp_path / "data" / "metamathqa"
    folder.mkdir(parents=True)
    (folder / "MetaMathQA-395K.json").write_text(json.dumps(rows))
    return str(folder.parent)


def test_gsm8k_task_is_the_default_training_and_real_rows_read_as_before(data_dir):
    task = tasks.get("gsm8k")
    assert task.training == data.Training()  # what train.prepare uses when called without a task
    rows = data.load_rows(task.training.source, "train", data_dir)
    first = json.loads((Path(data_dir) / "gsm8k" / "train.jsonl").read_text().splitlines()[0])
    assert len(rows) == 7473 and rows[0] == {"question": first["question"], "answer": first["answer"]}
    for row in rows[:3]:
        assert data.training_text(row, task.training.format) == (f"Question: {row['question']}\nAnswer:",
                                                                 f" {row['answer']}")


def test_gsm8k_filters_on_real_rows(data_dir, gsm8k_test):
    config = lm_eval_config("gsm8k", data_dir)
    for row, number in gsm8k_test:
        gold = score_generation(config, " " + row["answer"], row["answer"])
        assert gold == {"strict-match": (number, 1.0), "flexible-extract": (number, 1.0)}
        loose = score_generation(config, f" So the total is {number} dollars.", row["answer"])
        assert loose == {"strict-match": ("[invalid]", 0.0), "flexible-extract": (number, 1.0)}


def test_peft_task_rows_text_and_answer_parsing(tmp_path, data_dir, gsm8k_test):
    task = tasks.get("metamath-gsm8k-peft")
    rows = data.load_rows(task.training.source, "train", metamath_folder(tmp_path))
    assert [r["question"][:3] for r in rows] == ["Tom", "Wha"]  # the 1,300-character limit drops the long row
    prompt, target = data.training_text(rows[0], task.training.format)
    assert prompt + target == ("Question: Tom has 3 apples and buys 4 more. How many apples does he have? "
                               "Think step by step.\nAnswer:Tom has 3 + 4 = 7 apples.\n#### 7\nThe answer is: 7")
    config = lm_eval_config("metamath-gsm8k-peft", data_dir)
    assert config["doc_to_text"] == "Question: {{question}} Think step by step.\nAnswer:"
    assert config["generation_kwargs"]["until"] == [] and task.scoring.max_gen_toks == 300
    for row, number in gsm8k_test:
        for generation in (f" Work.\nThe answer is: {number}", f" Work.\n#### {number}",
                           f" Work. The final answer is {number}.", f" The answer is: 5.\nNo: the answer is: 6"
                           f"\nThe answer is: ${number}"):
            assert score_generation(config, generation, row["answer"])["strict-match"] == (number.rstrip("."), 1.0)
        wrong = score_generation(config, f" The answer is: {number}1", row["answer"])
        assert wrong["strict-match"] == (f"{number}1", 0.0)


def test_loraone_task_rows_text_and_answer_parsing(tmp_path, data_dir, gsm8k_test):
    task = tasks.get("metamath-gsm8k-loraone")
    rows = data.load_rows(task.training.source, "train", metamath_folder(tmp_path))
    assert len(rows) == 2  # the MATH row is dropped: GSM rows only
    assert rows[0]["answer"] == "Tom has 3 + 4 = 7 apples.\n#### 7"  # cut before "\nThe answer is:"
    prompt, target = data.training_text(rows[0], task.training.format)
    assert (prompt, target) == ("Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA: ",
                                " Tom has 3 + 4 = 7 apples.\n#### 7")
    config = lm_eval_config("metamath-gsm8k-loraone", data_dir)
    assert config["doc_to_text"] == "Q: {{question}}\nA:  "  # the reference encodes x + " "
    for row, number in gsm8k_test:
        generation = f" She makes {number} dollars.\n#### {number}\nQ: And then?\nA: #### 77"
        assert score_generation(config, generation, row["answer"]) == {
            "strict-match": (number, 1.0), "flexible-extract": ("77", 0.0)}  # the first "#### N" counts


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from harness.model import load
    return load("tiny", torch.device("cpu"), torch.float32)[1]


def test_labels_cover_the_prompt_only_where_the_task_says_so(tiny_tokenizer):
    row = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4.\n#### 4"}
    for name, on_prompt in (("gsm8k", False), ("metamath-gsm8k-peft", True)):
        fmt = tasks.get(name).training.format
        [(ids, labels)] = data.encode([row], tiny_tokenizer, 128, fmt)
        prompt = len(tiny_tokenizer(data.training_text(row, fmt)[0]).input_ids)
        assert ids[-1] == tiny_tokenizer.eos_token_id and labels[prompt:] == ids[prompt:]
        assert labels[:prompt] == (ids[:prompt] if on_prompt else [-100] * prompt)


def test_presets_pick_their_task_and_hyperparameters(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    peft = tasks.resolve(TrialConfig(method="lora", preset="peft"))  # no --task: the preset's own task
    assert peft.task == "metamath-gsm8k-peft" and peft.lr == 1e-4 and peft.dtype == "bfloat16"
    assert (peft.model, peft.steps, peft.batch_size, peft.max_length) == ("meta-llama/Llama-3.2-3B", 5000, 4, 768)
    assert (peft.schedule, peft.warmup, peft.weight_decay, peft.max_grad_norm, peft.targets) == \
        ("cosine", 500, 0.1, 1.0, "q_proj,v_proj")
    assert (peft.hparams["rank"], peft.hparams["alpha"]) == (32, 64)
    mine = tasks.resolve(TrialConfig(method="pissa", preset="peft", hparams={"rank": 8}))
    assert (mine.hparams["rank"], mine.hparams["alpha"]) == (8, 64)  # --set wins over the preset
    paper = tasks.resolve(TrialConfig(method="lora", lr=1e-4, preset="paper"))
    assert paper.task == "metamath-gsm8k-loraone" and paper.train_size == 100_000
    assert tasks.resolve(TrialConfig(method="lora", lr=1e-4, preset="cpu")).task == "gsm8k"
    with pytest.raises(UsageError, match="unknown preset 'peft' for task gsm8k: choose one of smoke"):
        tasks.resolve(TrialConfig(method="lora", lr=1e-4, task="gsm8k", preset="peft"))


def test_dry_run_prints_the_peft_protocol(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)  # nothing of model or data is needed
    code = main(["run", "--dry-run", "--task", "metamath-gsm8k-peft", "--preset", "peft", "--methods", "lora",
                 "--storage", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert code == 0, out
    for expected in ["task metamath-gsm8k-peft, preset peft, model meta-llama/Llama-3.2-3B",
                     "lora        lr=0.0001   seed=0 rank=32 alpha=64",
                     "5000 steps of batch 4 x 1 accumulated, max_length 768, cosine schedule after 500 steps",
                     "weight decay 0.1, gradient clipping 1, targets q_proj,v_proj, dtype bfloat16",
                     "meta-math/MetaMathQA", "<= 1300 characters", "the first 20,000",
                     "'Question: {question} Think step by step.\\nAnswer:' + '{answer}' + end of sequence",
                     "loss on prompt and answer", "1319 questions, 0-shot", "<= 300 new tokens",
                     "strict: last match of '(?:The answer is:? |The final answer is:? |#### )"]:
        assert expected in out, expected
    assert not (tmp_path / "store").exists()


USER_TASK = """\
name: gsm8k-terse
description: GSM8K rows in a terser prompt
train: {folder: gsm8k, file: train.jsonl, question: question, answer: answer}
format: {prompt: "Problem: {question}\\nSolution:", answer: " {answer}"}
eval:
  benchmark: gsm8k
  folder: gsm8k
  file: test.jsonl
  question: question
  answer: answer
  max_gen_toks: 8
  until: ["Problem:"]
  filters:
    strict: {regex: "#### (\\\\-?[0-9\\\\.\\\\,]+)"}
    flexible: {regex: "(-?[0-9]+)", select: -1}
  ignore: [",", "(?s).*#### "]
"""


def test_user_task_from_tasks_dir_trains_and_is_scored(fresh_registry, tmp_path, data_dir):
    folder = tmp_path / "my-tasks"
    folder.mkdir()
    (folder / "terse.yaml").write_text(USER_TASK)
    out = tmp_path / "trial"
    code = main(["trial", "--task", "gsm8k-terse", "--tasks-dir", str(folder), "--method", "lora", "--lr", "1e-2",
                 "--preset", "smoke", "--steps", "4", "--data-dir", data_dir, "--eval-limit", "2", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "finished" and saved["config"]["tasks_dir"] == str(folder)
    cfg = tasks.resolve(TrialConfig(**saved["config"]))
    task = tasks.get("gsm8k-terse")
    from harness.train import prepare
    _, tok, train_ex, _ = prepare(cfg, torch.device("cpu"), task.training)
    assert tok.decode(train_ex[0][0], skip_special_tokens=True).startswith("Problem: ")
    metrics = task.score(cfg)
    assert metrics["gsm8k_n"] == 2.0 and 0.0 <= metrics["gsm8k_flexible"] <= 1.0
    samples = [json.loads(line) for line in (out / "gsm8k_samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == [f"Problem: {r['question']}\nSolution:"
                                              for r in data.load_rows("gsm8k", "test", data_dir)[:2]]


BAD_FILES = {
    "missing field": (lambda t: t.replace("  question: question\n", "", 1), "field eval.question is missing"),
    "prompt without question": (lambda t: t.replace("Problem: {question}", "Problem:"), "field format.prompt"),
    "bad regex": (lambda t: t.replace('"(-?[0-9]+)"', '"(-?[0-9]+"'), "field eval.filters.flexible.regex"),
    "unknown field": (lambda t: t + "extra: 1\n", "field extra is unknown"),
    "python tag": (lambda t: t.replace("description: GSM8K rows in a terser prompt",
                                       'description: !!python/object/apply:os.system ["touch hacked"]'), "line 2"),
    "name taken": (lambda t: t.replace("name: gsm8k-terse", "name: gsm8k"), "already defined by"),
    "preset field": (lambda t: t + "presets: {mine: {steps: 3, rank: 4}}\n", "field presets.mine.rank is unknown"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_task_file_is_one_line_naming_file_and_field(case, fresh_registry, tmp_path, capsys, monkeypatch):
    edit, needle = BAD_FILES[case]
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.yaml").write_text(edit(USER_TASK))
    monkeypatch.chdir(tmp_path)
    code = main(["trial", "--method", "lora", "--lr", "1e-3", "--preset", "smoke", "--tasks-dir", str(folder)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"harness: error: task file {folder / 'broken.yaml'}") and needle in lines[0]
    assert not (tmp_path / "hacked").exists() and not (tmp_path / "runs").exists()


def test_tasks_dir_is_absolute_in_the_config_and_a_resume_accepts_it_again(fresh_registry, tmp_path, monkeypatch):
    from harness import resume
    from harness.sweep import SweepConfig
    folder = tmp_path / "my-tasks"
    folder.mkdir()
    (folder / "terse.yaml").write_text(USER_TASK)
    monkeypatch.chdir(tmp_path)
    cfg = tasks.resolve(TrialConfig(method="lora", lr=1e-3, task="gsm8k-terse", tasks_dir="my-tasks"))
    assert cfg.tasks_dir == str(folder)

    def sweep(trial):
        return SweepConfig(methods=["lora"], trial=trial, name="s", storage=str(tmp_path))
    given = sweep(TrialConfig(method="lora", lr=1.0, task="gsm8k-terse", tasks_dir="my-tasks"))
    assert resume.merge(sweep(cfg), given, sweep(TrialConfig(method="lora", lr=1.0))).trial.tasks_dir == str(folder)
    with pytest.raises(UsageError, match="--tasks-dir"):
        resume.merge(sweep(cfg), sweep(TrialConfig(method="lora", lr=1.0, tasks_dir=str(tmp_path))),
                     sweep(TrialConfig(method="lora", lr=1.0)))
    assert asdict(cfg)["tasks_dir"] == str(folder)


def test_config_is_the_bottom_layer():
    source = (Path(__file__).resolve().parents[1] / "harness" / "config.py").read_text()
    assert "import harness" not in source and "from harness" not in source

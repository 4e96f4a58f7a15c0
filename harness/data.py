"""Training data: sources, the prompt template, answer-only labels, splits and batches.

Each source is read from a local data folder (<data_dir>/<name>/<file>) when one is given,
otherwise from the hub. The prompt is lm-eval's GSM8K prompt, so the model is scored in the
format it was trained on.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import UsageError

PROMPT = "Question: {question}\nAnswer:"
SPLIT_SEED = 1234  # fixed, so every trial of a sweep sees the same validation rows


@dataclass(frozen=True)
class Source:
    hub_id: str
    hub_config: str | None
    files: dict          # split -> file name in the local folder
    question: str        # field names
    answer: str


SOURCES = {
    "gsm8k": Source("openai/gsm8k", "main", {"train": "train.jsonl", "test": "test.jsonl"},
                    "question", "answer"),
    "metamathqa": Source("meta-math/MetaMathQA", None, {"train": "MetaMathQA-395K.json"},
                         "query", "response"),
}
TASKS = ("gsm8k",)  # evaluation tasks; each one is also a training source


def _read_local(path: Path, src: Source) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist: pass --data-dir with a folder "
                         f"holding {path.parent.name}/{path.name}")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if path.suffix == ".json" else None
    except json.JSONDecodeError as err:
        raise UsageError(f"data file {path} is not valid JSON ({err}): restore the original file")
    if rows is None:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"data file {path} line {number} is not valid JSON: "
                                 f"fix or remove that row") from None
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get(src.question), str)
                and isinstance(row.get(src.answer), str)):
            raise UsageError(f"data file {path} row {number} lacks the text fields "
                             f"{src.question!r} and {src.answer!r}: fix or remove that row")
    return rows


def _read_hub(src: Source, split: str) -> list[dict]:
    from datasets import load_dataset
    try:
        return list(load_dataset(src.hub_id, src.hub_config, split=split))
    except Exception as err:  # offline, unknown split, ...
        raise UsageError(f"cannot load {src.hub_id} from the hub ({type(err).__name__}): "
                         f"pass --data-dir with a local copy") from None


def load_rows(name: str, split: str, data_dir: str = "") -> list[dict]:
    """Rows of a source as {"question", "answer"} dicts, in dataset order."""
    src = SOURCES[name]
    if data_dir:
        rows = _read_local(Path(data_dir) / name / src.files[split], src)
    else:
        rows = _read_hub(src, split)
    return [{"question": r[src.question], "answer": r[src.answer]} for r in rows]


def split_rows(rows: list[dict], val_size: int, train_size: int = 0):
    """(train, val): val is a fixed random slice; train keeps dataset order, cut to train_size."""
    if val_size >= len(rows):
        raise UsageError(f"val_size {val_size} leaves no training rows out of {len(rows)}")
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    held = set(order[:val_size])
    val = [rows[i] for i in sorted(held)]
    train = [r for i, r in enumerate(rows) if i not in held]
    return (train[:train_size] if train_size else train), val


def encode(rows: list[dict], tok, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; labels are -100 on the prompt, so loss is on the answer only."""
    examples = []
    for row in rows:
        prompt = tok(PROMPT.format(question=row["question"])).input_ids
        answer = tok(" " + row["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = (prompt + answer)[:max_length]
        labels = ([-100] * len(prompt) + answer)[:max_length]
        examples.append((ids, labels))
    return examples


def collate(examples, pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)] = torch.tensor(x)
        labels[row, :len(y)] = torch.tensor(y)
        mask[row, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def in_order(examples, batch_size: int, pad_id: int):
    """Batches in dataset order, once (validation, gradient estimation)."""
    for i in range(0, len(examples), batch_size):
        yield collate(examples[i:i + batch_size], pad_id)


def shuffled(examples, batch_size: int, pad_id: int, seed: int):
    """Endless batches, reshuffled every epoch from the trial seed."""
    rng = random.Random(seed)
    epoch = list(examples)
    while True:
        rng.shuffle(epoch)
        for i in range(0, len(epoch) - batch_size + 1, batch_size):
            yield collate(epoch[i:i + batch_size], pad_id)

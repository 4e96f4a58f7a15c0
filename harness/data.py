"""Training data: sources, the prompt and answer format, answer-only labels, splits and batches.

A task names its training rows (a `Source`) and how a row becomes training text (a `Format`);
the defaults here are GSM8K's train split in lm-eval's GSM8K prompt, the gsm8k task. Each source
is read from a local data folder (<data_dir>/<folder>/<file>) when one is given, otherwise from
the hub.
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.config import UsageError

SPLIT_SEED = 1234  # fixed, so every trial of a sweep sees the same validation rows


@dataclass(frozen=True)
class Source:
    """Where a task's rows come from, which fields hold the text, and which rows to keep."""
    folder: str                       # local rows: <data_dir>/<folder>/<files[split]>
    files: dict                       # split -> file name (.jsonl, or a .json list)
    hub: str | None = None            # else the hub dataset id and config, same split names
    hub_config: str | None = None
    question: str = "question"        # field names of the question and answer text
    answer: str = "answer"
    where: dict = field(default_factory=dict)  # keep rows whose field contains the text
    max_chars: int = 0                # keep rows with len(question + " " + answer) <= max_chars; 0 = all
    cut_answer_at: str = ""           # the answer is the text before this marker (when given)


@dataclass(frozen=True)
class Format:
    """How a row becomes training text: prompt, then the target (the answer, and end of sequence)."""
    prompt: str = "Question: {question}\nAnswer:"
    answer: str = " {answer}"
    eos: bool = True
    loss: str = "answer"              # "answer": loss on the target only; "all": on the prompt too


GSM8K = Source("gsm8k", {"train": "train.jsonl"}, "openai/gsm8k", "main")  # the gsm8k task's rows


@dataclass(frozen=True)
class Training:
    """The training half of a task: its rows, their format, and the seed of the validation split."""
    source: Source = GSM8K
    format: Format = field(default_factory=Format)
    split_seed: int = SPLIT_SEED


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
    needed = (src.question, src.answer, *src.where)
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and all(isinstance(row.get(name), str) for name in needed)):
            raise UsageError(f"data file {path} row {number} lacks the text fields "
                             f"{', '.join(map(repr, needed))}: fix or remove that row")
    return rows


def _read_hub(src: Source, split: str) -> list[dict]:
    if not src.hub:
        raise UsageError(f"{src.folder} has no hub dataset: pass --data-dir with a folder holding "
                         f"{src.folder}/{src.files[split]}")
    from datasets import load_dataset
    try:
        return list(load_dataset(src.hub, src.hub_config, split=split))
    except Exception as err:  # offline, unknown split, ...
        raise UsageError(f"cannot load {src.hub} from the hub ({type(err).__name__}): "
                         f"pass --data-dir with a local copy") from None


def keep(src: Source, row: dict) -> bool:
    """The source's row filter (applied to the original text, before cut_answer_at)."""
    if any(text not in row[name] for name, text in src.where.items()):
        return False
    return not src.max_chars or len(f"{row[src.question]} {row[src.answer]}") <= src.max_chars


def load_rows(source: Source | str, split: str, data_dir: str = "") -> list[dict]:
    """Rows of a source that pass its filter, as {"question", "answer"} dicts, in dataset order.
    A bare name reads the data folder's plain layout: <data_dir>/<name>/<split>.jsonl."""
    src = Source(source, {split: f"{split}.jsonl"}) if isinstance(source, str) else source
    if split not in src.files:
        raise UsageError(f"source {src.folder} has no {split} split: name its file in the task file")
    if data_dir:
        rows = _read_local(Path(data_dir) / src.folder / src.files[split], src)
    else:
        rows = _read_hub(src, split)
    cut = src.cut_answer_at
    return [{"question": r[src.question], "answer": r[src.answer].split(cut)[0] if cut else r[src.answer]}
            for r in rows if keep(src, r)]


def split_rows(rows: list[dict], val_size: int, train_size: int = 0, seed: int = SPLIT_SEED):
    """(train, val): val is a fixed random slice; train keeps dataset order, cut to train_size."""
    if val_size >= len(rows):
        raise UsageError(f"val_size {val_size} leaves no training rows out of {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:val_size])
    val = [rows[i] for i in sorted(held)]
    train = [r for i, r in enumerate(rows) if i not in held]
    return (train[:train_size] if train_size else train), val


def training_text(row: dict, fmt: Format = Format()) -> tuple[str, str]:
    """(prompt, target) of a row as training text; the end-of-sequence token follows the target."""
    return fmt.prompt.format(question=row["question"]), fmt.answer.format(answer=row["answer"])


def encode(rows: list[dict], tok, max_length: int, fmt: Format = Format()) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; labels are -100 on the prompt unless fmt.loss is "all"."""
    examples = []
    for row in rows:
        prompt, target = training_text(row, fmt)
        prompt = tok(prompt).input_ids
        answer = tok(target, add_special_tokens=False).input_ids + ([tok.eos_token_id] if fmt.eos else [])
        ids = (prompt + answer)[:max_length]
        labels = (prompt if fmt.loss == "all" else [-100] * len(prompt)) + answer
        examples.append((ids, labels[:max_length]))
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


def batches(examples, batch_size: int, pad_id: int, seed: int, batching: str = "bucket"):
    """The training batches of a trial: `bucketed` or `shuffled`."""
    pick = bucketed if batching == "bucket" else shuffled
    return pick(examples, batch_size, pad_id, seed)


def bucketed(examples, batch_size: int, pad_id: int, seed: int, window: int = 20):
    """Endless batches of rows of similar length, so little of a batch is padding. Every epoch the
    rows are shuffled from the trial seed, sorted by length within windows of `window` batches, cut
    into batches (the epoch's last may be short), and the batches shuffled: every row once per epoch."""
    rng = random.Random(seed)
    span = window * batch_size
    while True:
        epoch = list(examples)
        rng.shuffle(epoch)
        order = []
        for i in range(0, len(epoch), span):
            chunk = sorted(epoch[i:i + span], key=lambda example: len(example[0]))
            order += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(order)
        for batch in order:
            yield collate(batch, pad_id)


def shuffled(examples, batch_size: int, pad_id: int, seed: int):
    """Endless batches, reshuffled every epoch from the trial seed (the loop before bucketing; the
    rows of an epoch that fill no whole batch are left out)."""
    rng = random.Random(seed)
    epoch = list(examples)
    while True:
        rng.shuffle(epoch)
        for i in range(0, len(epoch) - batch_size + 1, batch_size):
            yield collate(epoch[i:i + batch_size], pad_id)

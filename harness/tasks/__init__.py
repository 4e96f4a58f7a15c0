"""Tasks: what a trial fits and how it is scored. Config, sweep, report and CLI ask the task and
never which kind it is. Two kinds implement the same attributes:
- LLMTask: fine-tunes a causal LM on the task's rows, scored by lm-eval. One YAML file per task,
  found by walking this folder and the folders given with --tasks-dir (see docs/tasks.md);
- toy.Toy (toy.py): the LoRA-One paper's linear model, fitted in seconds on a CPU.

`resolve` turns a TrialConfig into a complete one: the task (given, or the preset's), the preset
(a global one of harness.config.PRESETS or one of the task file's), the task's defaults, then
the method's hyperparameters under the preset's."""

import functools
import os
import re
import string
import time
from dataclasses import fields
from pathlib import Path

import yaml

from harness import config
from harness.config import PRESETS, TrialConfig, UsageError, load_yaml, positive, quote
from harness.data import Format, Source, Training
from harness.evaluate import Scoring

FOLDER = Path(__file__).resolve().parent
PARAMS = {"tiny": 3.3e6, "smollm2-135m": 134.5e6, "Qwen/Qwen3-0.6B": 0.6e9, "meta-llama/Llama-3.2-3B": 3.21e9,
          "meta-llama/Llama-2-7b-hf": 6.74e9}
_folders = []  # absolute folders given with --tasks-dir, searched after this one


class LLMTask:
    defaults = {}            # TrialConfig fields the task sets in place of the preset's
    reuse_workers = False    # a trial loads a model: a fresh worker costs little beside it
    presets = {}             # the task file's own presets: TrialConfig fields, hparams and lrs

    def __init__(self, name: str, path: Path, description: str, training: Training, scoring: Scoring,
                 presets: dict):
        self.name, self.path, self.description = name, path, description
        self.training, self.scoring, self.presets = training, scoring, presets

    def hparams(self, method: str, overrides: dict) -> dict:
        import methods
        return methods.get(method).resolve(overrides)

    def validate(self, cfg):
        """The model name, and the rank against the model's smallest adapted layer (a PiSSA or
        LoRA-GA init of a larger rank fails inside the SVD, minutes into a sweep)."""
        import methods
        from harness.model import check_name, smallest_side
        check_name(cfg.model)
        side, rank = smallest_side(cfg.model), cfg.hparams["rank"]
        need = methods.get(cfg.method).ranks_per_layer * rank
        if side and need > side:
            raise UsageError(f"rank {rank} is too large for model {quote(cfg.model)}, whose smallest linear "
                             f"layer side is {side} (method {cfg.method} needs {need} <= {side}): lower --set rank")

    def ladder(self, preset: str, folder: Path) -> list[float]:
        if "lrs" in self.presets.get(preset, {}):
            return list(self.presets[preset]["lrs"])
        from harness import spaces
        return spaces.ladder(preset, folder)

    def spaces(self, names: list[str], folder: Path) -> dict:
        from harness import spaces
        return spaces.load(folder)

    def preflight(self, trial):
        """A missing file or corrupt row is reported before the sweep, not in every trial."""
        from harness import data, evaluate
        if trial.data_dir:
            data.load_rows(self.training.source, "train", trial.data_dir)
            if trial.eval_limit:
                evaluate.task_config(self.scoring, self.name, trial.data_dir, 1, None)

    def resources(self, cpus: float, gpus: float, remote: bool) -> tuple[float, float]:
        """(CPUs, GPUs) per trial from the --cpus/--gpus-per-trial values (0 = choose). On a CPU
        two trials share the cores: their serial phases (worker start, loading, tokenizing,
        generation) overlap, and a step on half the threads is not twice as slow (SmolLM2-135M on
        2 cores: 4.9 s on one thread, 3.2 s on two)."""
        import torch
        cpus = cpus or (4 if gpus else max(1, (os.cpu_count() or 1) // 2))
        return cpus, gpus if gpus else (1 if torch.cuda.is_available() and not remote else 0)

    def compute(self, trial, count: int) -> str:
        """The dry run's compute estimate."""
        tokens = trial.steps * trial.batch_size * trial.grad_accum * trial.max_length
        params = PARAMS.get(trial.model)
        flops = f"{4 * params * tokens * count / 1e12:,.1f} TFLOP (4 x params x tokens)" if params else \
            "unknown FLOPs (model size unknown)"
        return (f"compute: {count} trials x <= {tokens:,} training tokens = {flops}, "
                f"plus {trial.eval_limit} {self.scoring.benchmark} generations per trial")

    def describe(self, trial) -> str:
        """The dry run's account of the task: rows, training text, validation split, scoring."""
        src, fmt, sc = self.training.source, self.training.format, self.scoring
        kept = [f"{name} contains {text!r}" for name, text in src.where.items()]
        if src.max_chars:
            kept.append(f"len({src.question} + ' ' + {src.answer}) <= {src.max_chars} characters")
        cut = f"; the answer is the {src.answer} before {src.cut_answer_at!r}" if src.cut_answer_at else ""
        rows = f"the first {trial.train_size:,}" if trial.train_size else "all"
        strict, flexible = (f"{'first' if s == 0 else 'last' if s == -1 else f'#{s}'} match of {r!r}"
                            for r, s in (sc.filters["strict"], sc.filters["flexible"]))
        return "\n".join([
            f"task {self.name}: {self.description} ({self.path})",
            f"  train rows: {_where(src, 'train')}, keeping {' and '.join(kept) or 'every row'}{cut}; "
            f"{trial.val_size} held out for validation loss (seed {self.training.split_seed}), then {rows} "
            f"in dataset order, reshuffled every epoch"
            f"{', rows of similar length batched together' if trial.batching == 'bucket' else ''}",
            f"  training text: {fmt.prompt!r} + {fmt.answer!r}{' + end of sequence' if fmt.eos else ''}, "
            f"loss on {'prompt and answer' if fmt.loss == 'all' else 'the answer only'}, <= {trial.max_length} tokens",
            f"  scoring: lm-eval on {sc.benchmark} test ({_where(sc.source, 'test')}), "
            f"{trial.eval_limit or 'no'} questions, {sc.num_fewshot}-shot, prompt {sc.prompt!r}, greedy, "
            f"<= {sc.max_gen_toks} new tokens; strict: {strict}; flexible: {flexible}"])

    def run(self, cfg, report=None) -> dict:
        """Train one resolved config; from the terminal (no report callback) with a progress bar."""
        from harness.train import run_trial
        return run_trial(cfg, report=report, progress=report is None, training=self.training)

    def score(self, cfg) -> dict:
        """Scores of a finished trial (also written as PEFT's result file, <out>/peft_result.json)."""
        from harness import peft_result
        scores, start = {}, time.perf_counter()
        if cfg.eval_limit:  # the whole phase: loading the base and the adapter, merging, lm-eval
            scores = self._evaluate(cfg)
            scores["score_seconds"] = time.perf_counter() - start
        peft_result.write(cfg.out, scores, self.training.format.prompt, f"{self.scoring.benchmark}_flexible")
        return scores

    def _evaluate(self, cfg) -> dict:
        """lm-eval on the saved adapter applied to a fresh original base (what a user would load)."""
        from peft import PeftModel

        from harness.evaluate import evaluate
        from harness.model import load, pick_device, pick_dtype
        device = pick_device(cfg.device)
        base, tok = load(cfg.model, device, pick_dtype(device, cfg.dtype), cfg.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(Path(cfg.out, "adapter"))).merge_and_unload()
        # 16: a short --eval-limit in one batch, as a batch generates until its longest answer ends
        return evaluate(model, tok, self.scoring, data_dir=cfg.data_dir, limit=cfg.eval_limit,
                        batch_size=max(cfg.batch_size, 16), out_dir=cfg.out)

    def report_sections(self, analysis, rows, folder) -> list:
        return []


def _where(src: Source, split: str) -> str:
    local = f"<data-dir>/{src.folder}/{src.files[split]}"
    return f"{src.hub} or {local}" if src.hub else local


# ---- the registry ----

@functools.cache  # asked for every trial config resolved: read the files once per set of folders
def _load(folders: tuple) -> dict:
    from harness.tasks import toy

    def files(folder):
        return [(task.name, task, task.path) for task in map(parse, sorted(Path(folder).glob("*.yaml")))]
    toys = [(name, task, FOLDER / "toy.py") for name, task in toy.TASKS.items()]
    found, origin = {}, {}
    for name, task, path in files(FOLDER) + toys + [e for folder in folders for e in files(folder)]:
        if name in found:
            raise UsageError(f"task file {path}: field name: task {quote(name)} is already defined by "
                             f"{origin[name]}: rename it")
        found[name], origin[name] = task, path
    return found


def _all() -> dict:
    return _load(tuple(_folders))


def add_folder(folder: str) -> str:
    """Search `folder` (--tasks-dir) for task files too; returns it absolute."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"--tasks-dir {quote(str(folder))} is not a folder: pass a folder of task YAML files")
    if str(path) not in _folders:
        _folders.append(str(path))
    _all()  # a bad file is reported now, before anything starts
    return str(path)


def names() -> tuple:
    return tuple(_all())


def get(name: str):
    found = _all().get(name)
    if found is None:
        raise UsageError(f"unknown task {quote(name)}: choose one of {', '.join(names())}"
                         f"{'' if _folders else ', or add task files with --tasks-dir'}")
    return found


def presets_of(task) -> dict:
    return {**PRESETS, **task.presets}


def preset_task(preset: str) -> str:
    """The task a preset is made for: a global preset's `task`, or the one task file defining it."""
    if preset in PRESETS:
        return PRESETS[preset].get("task", "gsm8k")
    owners = [task.name for task in _all().values() if preset in task.presets]
    return owners[0] if len(owners) == 1 else "gsm8k"


def preset_hparams(cfg: TrialConfig, method: str) -> dict:
    """The preset's method hyperparameters that `method` has (below --set and the search grids)."""
    import methods
    known = methods.get(method).resolve({})
    wanted = presets_of(get(cfg.task)).get(cfg.preset, {}).get("hparams", {})
    return {k: v for k, v in wanted.items() if k in known}


def resolve(cfg: TrialConfig) -> TrialConfig:
    """Fill the fields left at None from the task's defaults and the preset, then validate it all."""
    if cfg.tasks_dir:
        cfg.tasks_dir = add_folder(cfg.tasks_dir)
    cfg.task = cfg.task or preset_task(cfg.preset)
    task = get(cfg.task)
    presets = presets_of(task)
    if cfg.preset not in presets:
        raise UsageError(f"unknown preset {quote(cfg.preset)} for task {cfg.task}: choose one of "
                         f"{', '.join(presets)}")
    config.fill(cfg, {**presets[cfg.preset], **task.defaults})
    cfg.hparams = task.hparams(cfg.method, {**preset_hparams(cfg, cfg.method), **cfg.hparams})
    task.validate(cfg)
    return cfg


# ---- task files ----

SECTIONS = {
    "train": ("folder", "file", "hub", "hub_config", "question", "answer", "where", "max_chars", "cut_answer_at"),
    "format": ("prompt", "answer", "eos", "loss"),
    "validation": ("seed",),
    "eval": ("benchmark", "folder", "file", "fewshot_file", "hub", "hub_config", "question", "answer",
             "prompt", "num_fewshot", "max_gen_toks", "until", "filters", "ignore"),
}
# What a task's preset may set: the trial fields a preset fills (those left at None), plus the
# method hyperparameters under --set and the grids (hparams) and the learning-rate ladder (lrs).
PRESET_FIELDS = {f.name for f in fields(TrialConfig) if f.default is None} - {"task"} | {"hparams", "lrs"}
REQUIRED = object()


class TaskFile:
    """A task file's fields, read with one-line errors that name the file and the field."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.spec = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UsageError(f"task file {path}{where} is not plain YAML ({getattr(err, 'problem', err)}): "
                             f"fix the file") from None
        if not isinstance(self.spec, dict):
            raise UsageError(f"task file {path}: expected fields name, train, format, eval: fix the file")
        self.known(self.spec, "", ("name", "description", *SECTIONS, "presets"))

    def error(self, key: str, problem: str) -> UsageError:
        return UsageError(f"task file {self.path}: field {key} {problem}")

    def known(self, spec: dict, prefix: str, allowed):
        for key in spec:
            if key not in allowed:
                raise self.error(f"{prefix}{key}", f"is unknown: use {', '.join(allowed)}")

    def section(self, name: str, required=True) -> dict:
        spec = self.spec.get(name) if required else self.spec.get(name) or {}
        if not isinstance(spec, dict):
            raise self.error(name, "is missing" if spec is None else "must be a mapping of fields")
        self.known(spec, f"{name}.", SECTIONS[name])
        return spec

    def get(self, spec: dict, key: str, kind: str, default=REQUIRED):
        """spec[key] checked as `kind` (text, text?, count, flag, texts, mapping, regex, loss)."""
        if key.rpartition(".")[2] not in spec:
            if default is REQUIRED:
                raise self.error(key, "is missing")
            return default
        value = spec[key.rpartition(".")[2]]
        ok = {"text": isinstance(value, str) and value != "",
              "text?": value is None or (isinstance(value, str) and value != ""),
              "any text": isinstance(value, str),
              "count": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
              "flag": isinstance(value, bool),
              "texts": isinstance(value, list) and all(isinstance(v, str) and v for v in value),
              "mapping": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
              "loss": value in ("answer", "all")}[kind]
        if not ok:
            wanted = {"text": "text", "text?": "text or null", "any text": "text", "count": "a whole number >= 0",
                      "flag": "true or false", "texts": "a list of texts", "mapping": "a mapping of field: text",
                      "loss": "answer or all"}[kind]
            raise self.error(key, f"must be {wanted}, got {quote(value)}")
        return value

    def template(self, spec: dict, key: str, name: str, default=REQUIRED) -> str:
        """A str.format template with exactly one {name} and no other braces."""
        text = self.get(spec, key, "text", default)
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError:
            parts = None
        keys = [p[1] for p in parts or [] if p[1] is not None]
        if parts is None or keys != [name] or any(p[2] or p[3] or "{" in p[0] or "}" in p[0] for p in parts):
            raise self.error(key, f"must hold {{{name}}} once and no other braces, got {quote(text)}")
        return text

    def regex(self, spec: dict, key: str) -> tuple:
        spec = spec.get(key.rpartition(".")[2])
        if not isinstance(spec, dict):
            raise self.error(key, "is missing" if spec is None else "must be a mapping with regex and select")
        self.known(spec, f"{key}.", ("regex", "select"))
        pattern = self.get(spec, f"{key}.regex", "text")
        try:
            re.compile(pattern)
        except re.error as err:
            raise self.error(f"{key}.regex", f"is not a regular expression ({err}): fix the pattern") from None
        select = spec.get("select", 0)
        if select not in (0, -1) or isinstance(select, bool):
            raise self.error(f"{key}.select", f"must be 0 (first match) or -1 (last match), got {quote(select)}")
        return pattern, select

    def source(self, spec: dict, prefix: str, files: dict, **extra) -> Source:
        return Source(folder=self.get(spec, f"{prefix}.folder", "text"), files=files,
                      hub=self.get(spec, f"{prefix}.hub", "text?", None),
                      hub_config=self.get(spec, f"{prefix}.hub_config", "text?", None),
                      question=self.get(spec, f"{prefix}.question", "text"),
                      answer=self.get(spec, f"{prefix}.answer", "text"), **extra)

    def presets(self) -> dict:
        spec = self.spec.get("presets") or {}
        if not isinstance(spec, dict):
            raise self.error("presets", "must map preset names to their settings")
        for name, preset in spec.items():
            if name in PRESETS:
                raise self.error(f"presets.{name}", f"is a global preset ({', '.join(PRESETS)}): rename it")
            if not isinstance(preset, dict):
                raise self.error(f"presets.{name}", "must be a mapping of trial fields")
            self.known(preset, f"presets.{name}.", sorted(PRESET_FIELDS))
            if not isinstance(preset.get("hparams", {}), dict):
                raise self.error(f"presets.{name}.hparams", "must map hyperparameters to values")
            lrs = preset.get("lrs", [1.0])
            if not isinstance(lrs, list) or not lrs:
                raise self.error(f"presets.{name}.lrs", "must be a non-empty list of learning rates")
            for lr in lrs:
                try:
                    positive("learning rate", lr)
                except UsageError as err:
                    raise self.error(f"presets.{name}.lrs", f"holds a bad value: {err}") from None
        return spec


def parse(path: Path) -> LLMTask:
    """The LLMTask of a task file (see docs/tasks.md for its fields)."""
    f = TaskFile(path)
    name = f.get(f.spec, "name", "text")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise f.error("name", f"must be letters, digits, '.', '_' or '-', got {quote(name)}")
    train, fmt, ev = f.section("train"), f.section("format"), f.section("eval")
    val = f.section("validation", required=False)
    prompt = f.template(fmt, "format.prompt", "question")
    answer = f.template(fmt, "format.answer", "answer")
    training = Training(
        source=f.source(train, "train", {"train": f.get(train, "train.file", "text")},
                        where=f.get(train, "train.where", "mapping", {}),
                        max_chars=f.get(train, "train.max_chars", "count", 0),
                        cut_answer_at=f.get(train, "train.cut_answer_at", "any text", "")),
        format=Format(prompt, answer, f.get(fmt, "format.eos", "flag", True), f.get(fmt, "format.loss", "loss", "answer")),
        split_seed=f.get(val, "validation.seed", "count", 1234))
    fewshot = f.get(ev, "eval.num_fewshot", "count", 0)
    files = {"test": f.get(ev, "eval.file", "text")}
    if fewshot:
        files["train"] = f.get(ev, "eval.fewshot_file", "text")
    max_gen = f.get(ev, "eval.max_gen_toks", "count")
    if not max_gen:
        raise f.error("eval.max_gen_toks", "must be a whole number > 0, got 0")
    filters = ev.get("filters")
    if not isinstance(filters, dict) or sorted(filters) != ["flexible", "strict"]:
        raise f.error("eval.filters", "must have exactly the filters strict and flexible")
    scoring = Scoring(
        benchmark=f.get(ev, "eval.benchmark", "text"), source=f.source(ev, "eval", files),
        prompt=f.template(ev, "eval.prompt", "question", prompt),
        answer_prefix=answer.partition("{answer}")[0], num_fewshot=fewshot, max_gen_toks=max_gen,
        until=tuple(f.get(ev, "eval.until", "texts", [])),
        filters={key: f.regex(filters, f"eval.filters.{key}") for key in ("strict", "flexible")},
        ignore=tuple(f.get(ev, "eval.ignore", "texts", [])))
    for pattern in scoring.ignore:
        try:
            re.compile(pattern)
        except re.error as err:
            raise f.error("eval.ignore", f"holds {quote(pattern)}, not a regular expression ({err})") from None
    return LLMTask(name, path, f.get(f.spec, "description", "text", name), training, scoring, f.presets())

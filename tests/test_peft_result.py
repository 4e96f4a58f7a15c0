"""PEFT's method_comparison result file: the keys and types of PEFT's published results.

Expected schema read from huggingface/peft, method_comparison/MetaMathQA/results/
adamss--llama-3.2-3B-rank32.json (commit 0d4d8485b7d8ff9bb48b9937b51f91c58e819e5c), and the reads of
method_comparison/processing.py `preprocess` (commit 0006753e0f0c10527391d131053989376d83ba8d)."""

import json
from pathlib import Path

import pytest

from harness import tasks
from harness.peft_result import FILE
from harness.train import run_trial

NUMBER = (int, float)
SCHEMA = {
    "run_info": {"created_at": str, "total_time": float, "experiment_name": str, "peft_branch": str,
                 "train_config": dict, "peft_config": dict, "error_msg": str},
    "train_info": {"accelerator_memory_reserved_avg": int, "accelerator_memory_max": int,
                   "accelerator_memory_reserved_99th": int, "train_time": float, "file_size": int,
                   "num_trainable_params": int, "num_total_params": int, "status": str, "metrics": list},
    "meta_info": {"model_info": dict, "dataset_info": dict, "package_info": dict, "system_info": dict,
                  "pytorch_info": str},
}
TRAIN_CONFIG = {"model_id": str, "dtype": str, "max_seq_length": int, "batch_size": int, "batch_size_eval": int,
                "max_steps": int, "eval_steps": int, "compile": bool, "query_template": str, "seed": int,
                "grad_norm_clip": NUMBER, "optimizer_type": str, "optimizer_kwargs": dict, "lr_scheduler": str,
                "generation_kwargs": dict}
STEP = {"step": int, "train loss": float, "train samples": int, "train time": float, "tokens / sec": float}
FINAL = {"step": int, "test accuracy": float, "train loss": float, "train samples": int, "train total tokens": int}
PACKAGES = ("peft-version", "transformers-version", "datasets-version", "torch-version", "bitsandbytes-version")
SYSTEM = ("system", "release", "version", "machine", "processor", "accelerator")


def check(obj: dict, schema: dict):
    assert set(schema) <= set(obj), sorted(set(schema) - set(obj))
    for key, kind in schema.items():
        assert isinstance(obj[key], kind) and not (kind is int and isinstance(obj[key], bool)), (key, obj[key])


@pytest.fixture(scope="module")
def result(data_dir, tmp_path_factory):
    from harness.config import TrialConfig
    from harness.tasks import resolve
    out = tmp_path_factory.mktemp("trial") / "lora"
    cfg = resolve(TrialConfig(method="lora", lr=1e-2, preset="smoke", data_dir=data_dir, steps=8,
                              eval_interval=4, eval_limit=1, out=str(out)))
    assert run_trial(cfg)["status"] == "finished"
    scores = tasks.get("gsm8k").score(cfg)
    return cfg, scores, json.loads((out / FILE).read_text())


def test_result_file_has_the_keys_and_types_of_peft_published_results(result):
    cfg, scores, saved = result
    for section, schema in SCHEMA.items():
        check(saved[section], schema)
    check(saved["run_info"]["train_config"], TRAIN_CONFIG)
    steps, final = saved["train_info"]["metrics"][:-1], saved["train_info"]["metrics"][-1]
    assert [m["step"] for m in steps] == [4, 8]
    for entry in steps:
        check(entry, STEP)
    check(final, FINAL)
    assert set(PACKAGES) <= set(saved["meta_info"]["package_info"])
    assert set(SYSTEM) <= set(saved["meta_info"]["system_info"])


def test_result_file_holds_the_trial_numbers(result):
    cfg, scores, saved = result
    metrics = json.loads(Path(cfg.out, "metrics.json").read_text())
    run, train = saved["run_info"], saved["train_info"]
    assert run["peft_config"]["r"] == cfg.hparams["rank"] and run["peft_config"]["peft_type"] == "LORA"
    assert run["train_config"]["optimizer_kwargs"] == {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    assert run["train_config"]["grad_norm_clip"] == cfg.max_grad_norm == 1.0
    assert train["status"] == "success"
    assert train["metrics"][-1]["test accuracy"] == scores["gsm8k_flexible"]
    assert train["metrics"][-1]["train total tokens"] == metrics["train_tokens"] > 0
    assert train["metrics"][-1]["train samples"] == 8 * cfg.batch_size
    assert train["num_trainable_params"] < train["num_total_params"]
    assert train["file_size"] == Path(cfg.out, "adapter", "adapter_model.safetensors").stat().st_size
    assert 0 < train["accelerator_memory_reserved_avg"] <= train["accelerator_memory_reserved_99th"] \
        <= train["accelerator_memory_max"] * 1.01


def test_processing_reads_every_field_it_needs(result):
    """The reads of PEFT's processing.preprocess, on our file."""
    _, _, row = result
    run_info, train_info, meta_info = row["run_info"], row["train_info"], row["meta_info"]
    last = train_info["metrics"][-1]
    fields = [run_info["peft_config"]["peft_type"], run_info["experiment_name"], run_info["train_config"]["model_id"],
              train_info["accelerator_memory_reserved_avg"], train_info["accelerator_memory_max"],
              train_info["accelerator_memory_reserved_99th"], run_info["total_time"], train_info["train_time"],
              train_info["file_size"], last["test accuracy"], last["train loss"], last["train samples"],
              last["train total tokens"], run_info["peft_branch"], run_info["created_at"],
              meta_info["system_info"], *(meta_info["package_info"][k] for k in PACKAGES if k != "bitsandbytes-version")]
    assert all(f is not None for f in fields)

"""A finished trial as a result file of PEFT's `method_comparison` benchmark, so that PEFT's own
`processing.py` and its Gradio app can read a sweep beside PEFT's published results.

The keys and types follow PEFT's published files (method_comparison/MetaMathQA/results/*.json):
run_info (the run's config and PEFT config), train_info (memory, times, sizes, status, and one
metrics entry per eval step, the last holding "test accuracy"), meta_info (packages, system).
Where the harness measures something else than PEFT, the entry says what it is: the per-step
entries hold the validation loss ("valid loss"), as the harness validates by loss, not accuracy;
memory is the allocator's on CUDA and the process's resident set on CPU."""

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

FILE = "peft_result.json"
MB = 2**20


def write(out: str, scores: dict, template: str, score_key: str = "gsm8k_flexible") -> Path:
    """Write <out>/peft_result.json from the trial's metrics.json and its scores."""
    saved = json.loads(Path(out, "metrics.json").read_text())
    path = Path(out, FILE)
    path.write_text(json.dumps(build(saved, scores, template, Path(out, "adapter"), score_key), indent=2))
    return path


def build(saved: dict, scores: dict, template: str, adapter: Path, score_key: str) -> dict:
    cfg = saved["config"]
    return {"run_info": _run_info(saved, cfg, scores, template, adapter),
            "train_info": _train_info(saved, cfg, scores, adapter, score_key),
            "meta_info": _meta_info(cfg)}


def _run_info(saved, cfg, scores, template, adapter) -> dict:
    config_file = adapter / "adapter_config.json"
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_time": float(saved["seconds"] + scores.get("eval_seconds", 0.0)),
        "experiment_name": f"{cfg['method']}/{Path(cfg['model']).name}-lr{cfg['lr']:g}-seed{cfg['seed']}",
        "peft_branch": "lora-harness",
        "train_config": {
            "model_id": cfg["model"], "dtype": cfg["dtype"], "max_seq_length": cfg["max_length"],
            "batch_size": cfg["batch_size"] * cfg["grad_accum"], "batch_size_eval": cfg["batch_size"],
            "max_steps": cfg["steps"], "eval_steps": cfg["eval_interval"], "compile": False,
            "query_template": template, "seed": cfg["seed"], "grad_norm_clip": cfg["max_grad_norm"],
            "optimizer_type": cfg["hparams"].get("optimizer", "adamw"),
            "optimizer_kwargs": {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]},
            "lr_scheduler": cfg["schedule"], "generation_kwargs": {"max_new_tokens": None},
            "attn_implementation": None, "method": cfg["method"], "hparams": cfg["hparams"],
        },
        "peft_config": json.loads(config_file.read_text()) if config_file.is_file() else None,
        "error_msg": "" if saved["status"] == "finished" else saved["status"],
    }


def _train_info(saved, cfg, scores, adapter, score_key) -> dict:
    per_step = cfg["batch_size"] * cfg["grad_accum"]
    metrics = [{"step": p["step"], "valid loss": p.get("val_loss"), "train loss": p["train_loss"],
                "train samples": p["step"] * per_step, "train time": p["train_seconds"],
                "tokens / sec": p["tokens_per_s"]} for p in saved["history"][1:]]
    last = saved["history"][-1]
    metrics.append({"step": last["step"], "test accuracy": scores.get(score_key),
                    "train loss": last.get("train_loss"), "train samples": last["step"] * per_step,
                    "train total tokens": saved["train_tokens"]})
    files = list(adapter.glob("*.safetensors")) if adapter.is_dir() else []
    return {
        "accelerator_memory_reserved_avg": int(saved["mem_avg_mb"] * MB),
        "accelerator_memory_max": int(saved["peak_mem_mb"] * MB),
        "accelerator_memory_reserved_99th": int(saved["mem_p99_mb"] * MB),
        "train_time": float(saved["train_seconds"]), "file_size": sum(f.stat().st_size for f in files),
        "num_trainable_params": saved["trainable_params"], "num_total_params": saved["total_params"],
        "status": "success" if saved["status"] == "finished" else saved["status"],
        "metrics": metrics,
    }


def _meta_info(cfg) -> dict:
    packages = {}
    for name in ("transformers", "peft", "datasets", "bitsandbytes", "torch"):
        packages[f"{name}-version"] = _version(name)
        packages[f"{name}-commit-hash"] = None
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "model_info": {"sha": None, "created_at": None},
        "dataset_info": {cfg["task"]: {"sha": None, "created_at": None}},
        "package_info": packages,
        "system_info": {"system": platform.system(), "release": platform.release(), "version": platform.version(),
                        "machine": platform.machine(), "processor": platform.processor(),
                        "accelerator": accelerator},
        "pytorch_info": torch.__config__.show(),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None

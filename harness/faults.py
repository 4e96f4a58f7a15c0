"""Fault injection for tests: HARNESS_FAULT="KIND@STEP[,method=M][,lr=X][;KIND@STEP...]".

KIND is nan (the loss becomes NaN), error (an exception), kill (the worker process dies) or
oom (an out-of-memory error). A fault fires at training step STEP of every trial that matches
its optional method and lr filters; several faults are separated by ";", the first match fires."""

import os
import signal

import torch

KINDS = ("nan", "error", "kill", "oom")


def parse(spec: str) -> list[dict]:
    return [_parse_one(part) for part in spec.split(";") if part.strip()]


def _parse_one(spec: str) -> dict:
    head, *filters = spec.strip().split(",")
    kind, _, step = head.partition("@")
    fault = dict(kind=kind, step=int(step or 1))
    fault.update(f.split("=", 1) for f in filters)
    if kind not in KINDS:
        raise ValueError(f"HARNESS_FAULT kind {kind!r} is not one of {', '.join(KINDS)}")
    return fault


def _matches(fault: dict, cfg, step: int) -> bool:
    return (fault["step"] == step and fault.get("method", cfg.method) == cfg.method
            and float(fault.get("lr", cfg.lr)) == cfg.lr)


def maybe_inject(cfg, step: int, loss: torch.Tensor) -> torch.Tensor:
    """The loss, replaced or preceded by the configured fault when it targets this trial and step."""
    fault = next((f for f in parse(os.environ.get("HARNESS_FAULT", "")) if _matches(f, cfg, step)), None)
    if fault is None:
        return loss
    if fault["kind"] == "nan":
        return loss * float("nan")
    if fault["kind"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault["kind"] == "oom":
        raise torch.OutOfMemoryError("injected out-of-memory error (HARNESS_FAULT)")
    raise RuntimeError("injected error (HARNESS_FAULT)")

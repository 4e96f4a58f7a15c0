"""Fault injection for tests: HARNESS_FAULT="KIND@STEP[,method=M][,lr=X]".

KIND is nan (the loss becomes NaN), error (an exception), kill (the worker process dies) or
oom (an out-of-memory error). The fault fires at training step STEP of every trial that matches
the optional method and lr filters."""

import os
import signal

import torch

KINDS = ("nan", "error", "kill", "oom")


def parse(spec: str) -> dict | None:
    if not spec:
        return None
    head, *filters = spec.split(",")
    kind, _, step = head.partition("@")
    fault = dict(kind=kind, step=int(step or 1))
    fault.update(f.split("=", 1) for f in filters)
    if kind not in KINDS:
        raise ValueError(f"HARNESS_FAULT kind {kind!r} is not one of {', '.join(KINDS)}")
    return fault


def maybe_inject(cfg, step: int, loss: torch.Tensor) -> torch.Tensor:
    """The loss, replaced or preceded by the configured fault when it targets this trial and step."""
    fault = parse(os.environ.get("HARNESS_FAULT", ""))
    if (not fault or fault["step"] != step or fault.get("method", cfg.method) != cfg.method
            or float(fault.get("lr", cfg.lr)) != cfg.lr):
        return loss
    if fault["kind"] == "nan":
        return loss * float("nan")
    if fault["kind"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault["kind"] == "oom":
        raise torch.OutOfMemoryError("injected out-of-memory error (HARNESS_FAULT)")
    raise RuntimeError("injected error (HARNESS_FAULT)")

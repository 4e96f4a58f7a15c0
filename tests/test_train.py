"""End-to-end trials on the tiny local Llama: seeds, divergence, clipping, schedules. The contract
of every method (init, saving, determinism) is tests/test_methods_contract.py."""

import json
import math
from pathlib import Path

import pytest
import torch

from harness import train
from harness.train import run_trial


def test_trial_records_the_time_of_each_phase_and_its_mfu(smoke):
    cfg = smoke("lora-ga", 3e-3, steps=8, eval_interval=4)
    run_trial(cfg)
    saved = json.loads(Path(cfg.out, "metrics.json").read_text())
    phases = ("load", "data", "grad", "init", "train", "val")
    assert all(saved[f"{phase}_seconds"] > 0 for phase in phases)
    assert sum(saved[f"{phase}_seconds"] for phase in phases) < saved["seconds"]
    assert 0 < saved["mfu"] < 1 and all(0 < p["mfu"] < 1 for p in saved["history"][1:])


def test_other_seed_other_metrics(smoke, tmp_path):
    first = run_trial(smoke("lora-one", 1e-2, steps=8, out=str(tmp_path / "a")))
    other = run_trial(smoke("lora-one", 1e-2, steps=8, seed=1, out=str(tmp_path / "c")))
    assert other["val_loss"] != first["val_loss"]


def test_non_finite_loss_stops_the_trial_as_diverged(smoke, monkeypatch):
    # The tiny model's loss is bounded (tiny tied embeddings behind a final RMSNorm), so no
    # learning rate makes it explode; a NaN loss is injected instead.
    monkeypatch.setenv("HARNESS_FAULT", "nan@10,method=lora")
    cfg = smoke("lora", 1e-2)
    result = run_trial(cfg)
    assert result["status"] == "diverged"
    assert result["step"] == 10
    assert result["val_loss"] < result["val_loss_init"]  # the last good validation is kept
    assert not Path(cfg.out, "adapter").exists()


def test_clip_scales_a_planted_huge_gradient_to_the_limit_and_returns_the_raw_norm():
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    params[0].grad = torch.full((3, 4), 1e3)
    params[1].grad = torch.full((5,), -2e3)
    raw = math.sqrt(12 * 1e6 + 5 * 4e6)
    assert train.clip(params, 1.0) == pytest.approx(raw)
    assert torch.cat([p.grad.flatten() for p in params]).norm().item() == pytest.approx(1.0)
    params[0].grad, params[1].grad = torch.full((3, 4), 1e3), torch.full((5,), -2e3)
    assert train.clip(params, 0.0) == pytest.approx(raw)
    assert params[0].grad.eq(1e3).all() and params[1].grad.eq(-2e3).all()  # 0: no clipping


@pytest.mark.parametrize("max_norm", [1.0, 0.0])
def test_trial_clips_raw_gradients_before_the_step_and_records_the_raw_norm(smoke, monkeypatch, max_norm):
    """A loss scaled by 1e4 plants a huge gradient; the step sees it clipped to max_norm, and
    grad_norm records the raw value."""
    seen = []

    def spy(params, limit):
        raw = real_clip(params, limit)
        seen.append((raw, torch.cat([p.grad.flatten() for p in params]).norm().item()))
        return raw

    real_clip, real_loss = train.clip, train.loss_of
    monkeypatch.setattr(train, "clip", spy)
    monkeypatch.setattr(train, "loss_of", lambda model, batch: real_loss(model, batch) * 1e4)
    cfg = smoke("lora", 1e-3, steps=2, eval_interval=1, max_grad_norm=max_norm, diverge_factor=1e9)
    result = run_trial(cfg)
    history = json.loads(Path(cfg.out, "metrics.json").read_text())["history"]
    assert [p["grad_norm"] for p in history[1:]] == [raw for raw, _ in seen]
    for raw, after in seen:
        assert raw > 100
        assert after == (pytest.approx(1.0) if max_norm else pytest.approx(raw))
    assert result["grad_norm"] == seen[-1][0]


@pytest.mark.parametrize("schedule,warmup", [("linear", dict(warmup_steps=2)), ("cosine", dict(warmup_ratio=0.3)),
                                             ("constant", dict(warmup_steps=3))])
def test_schedule_matches_transformers_step_by_step(smoke, schedule, warmup):
    from transformers import get_scheduler
    cfg = smoke("lora", 1e-2, steps=7, eval_interval=1, schedule=schedule, **warmup)
    run_trial(cfg)
    history = json.loads(Path(cfg.out, "metrics.json").read_text())["history"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    reference = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup, num_training_steps=7)
    expected = []
    for _ in range(7):
        expected.append(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()
    assert cfg.warmup == (2 if schedule == "linear" else 3)
    assert [p["lr_now"] for p in history[1:]] == expected
    assert expected[0] == 0.0  # warm-up starts from 0, as in transformers

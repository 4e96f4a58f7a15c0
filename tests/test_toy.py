"""The toy tasks reproduce the LoRA-One paper's qualitative results, through the real method modules."""

import json
import math

import pytest
import torch

import methods
from harness.config import TrialConfig, UsageError
from harness.tasks import resolve, toy
from helpers import run_cli, sweep_runs

METHODS = ["lora", "pissa", "lora-ga", "riemannian", "lora-one"]


def trial(tmp_path, task, method, steps=None, **hparams):
    out = tmp_path / f"{task}-{method}-{len(list(tmp_path.iterdir()))}"
    cfg = resolve(TrialConfig(method=method, task=task, steps=steps, hparams=hparams, out=str(out)))
    result = toy.run_trial(cfg)
    return result, json.loads((out / "metrics.json").read_text())["history"]


@pytest.mark.parametrize("task", toy.TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_task_defaults_give_the_papers_settings(task, method):
    cfg = resolve(TrialConfig(method=method, task=task))
    hp, m = cfg.hparams, methods.get(method)
    assert m.scaling(hp) == 1.0 and hp["optimizer"] == "sgd"
    assert (cfg.lr, cfg.steps, cfg.eval_limit) == (toy.TASKS[task].lr, toy.TASKS[task].steps, 0)
    assert hp.get("gamma", 1.0) == 1.0 and hp.get("reg", 1e-3) == 1e-3
    assert m.scaling(resolve(TrialConfig(method=method, task=task, hparams={"rank": 2})).hparams) == 1.0
    assert resolve(TrialConfig(method=method, task=task, hparams={"optimizer": "adamw"})).hparams["optimizer"] == "adamw"


def test_init_scale_only_for_lora_init():
    assert resolve(TrialConfig(method="riemannian", task="toy-linear")).hparams["init_scale"] == 1e-3
    with pytest.raises(UsageError, match="init_scale"):
        resolve(TrialConfig(method="pissa", task="toy-linear", hparams={"init_scale": 0.1}))


@pytest.mark.parametrize("task", toy.TASKS)
def test_lora_one_init_risk_is_ten_times_below_loras(task, tmp_path):
    lora_one, _ = trial(tmp_path, task, "lora-one", steps=1)
    lora, _ = trial(tmp_path, task, "lora", steps=1)
    assert lora["val_loss_init"] == pytest.approx(sum(s * s for s in toy.TASKS[task].singular_values) / 2)
    assert lora_one["val_loss_init"] * 10 <= lora["val_loss_init"]


def test_illcond_preconditioning_reaches_near_zero_and_gd_does_not(tmp_path):
    """100 iterations at η = 0.5. Near zero: 1e-20 of the initial risk (float64 resolves it;
    float32 alone would floor near 1e-11). Plain GD from the same init and LoRA under plain GD
    stay at least 100x above that bound."""
    task = "toy-linear-illcond"
    precond, _ = trial(tmp_path, task, "lora-one")
    plain, _ = trial(tmp_path, task, "lora-one", precondition=False)
    lora, _ = trial(tmp_path, task, "lora")
    near_zero = 1e-20 * precond["val_loss_init"]
    assert precond["status"] == plain["status"] == lora["status"] == "finished"
    assert precond["step"] == 100 and precond["val_loss"] < near_zero
    assert plain["val_loss"] > 100 * near_zero and lora["val_loss"] > 100 * near_zero


def test_smaller_init_aligns_better_and_ends_lower(tmp_path):
    small, small_history = trial(tmp_path, "toy-linear", "lora", init_scale=1e-3)
    large, large_history = trial(tmp_path, "toy-linear", "lora", init_scale=1e-1)
    assert small["alignment"] > large["alignment"]
    assert max(p["alignment"] for p in small_history) > max(p["alignment"] for p in large_history) + 0.05
    assert small["val_loss"] * 100 < large["val_loss"]
    # the paper's measure (Fig. 2): the best sine of the largest principal angle, smaller for the smaller init
    assert min(p["angle"] for p in small_history) + 0.2 < min(p["angle"] for p in large_history)


def test_angle_is_the_sine_of_the_largest_principal_angle():
    """Subspaces of R^3 at known angles: span(e1, e2) against span(e1, cos t e2 + sin t e3)."""
    t = 0.3
    G = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float64)
    A = torch.tensor([[1.0, 0, 0], [0, math.cos(t), math.sin(t)]], dtype=torch.float64)
    alignment, angle = toy.subspace_angles(toy.top_right(G, 2), A, 2)
    assert angle == pytest.approx(math.sin(t)) and alignment == pytest.approx((1 + math.cos(t) ** 2) / 2)


def test_trials_are_deterministic(tmp_path):
    first, _ = trial(tmp_path, "toy-linear-illcond", "lora")
    again, _ = trial(tmp_path, "toy-linear-illcond", "lora")
    assert first["val_loss"] == again["val_loss"]


def test_trial_command(tmp_path):
    proc = run_cli("trial", "--task", "toy-linear", "--method", "lora-one", "--out", tmp_path / "t", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert result["status"] == "finished" and result["step"] == 1500
    assert result["val_loss"] < 1e-6 * result["val_loss_init"]


def test_sweep_of_all_methods_is_tracked_and_reported(tmp_path):
    proc = run_cli("run", "--methods", "all", "--task", "toy-linear-illcond", "--storage", tmp_path,
                   "--name", "ill", "--lrs", "0.0625,0.5", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client, parents, children = sweep_runs(tmp_path / "mlflow.db", "ill", experiment="toy-linear-illcond")
    assert len(parents) == 1 and len(children) == 10
    best = {}
    for run in children:
        params = run.data.params
        assert params["optimizer"] == "sgd" and "gsm8k_n" not in run.data.metrics
        if run.data.tags["status"] == "finished":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "alignment")]
            assert steps == list(range(0, 101, 5))
            best[params["method"]] = min(best.get(params["method"], 1.0), run.data.metrics["val_loss"])
    assert best["lora-one"] < 1e-20 < best["lora"]
    report = tmp_path / "ill" / "report"
    assert (report / "risk.png").stat().st_size > 10_000 and (report / "alignment.png").is_file()
    assert "Toy task: risk and alignment" in (report / "report.html").read_text()

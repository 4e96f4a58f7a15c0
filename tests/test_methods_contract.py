"""The contract every registered method keeps, on the tiny model (smoke preset, 8 steps): the
output at init is unchanged (or changed by exactly its documented amount; checked through the
validation loss at init, to 1e-5), a trained adapter reloaded on a fresh original base gives the
trial's validation loss, the same seed gives the same metrics, and `harness methods` lists it. And a method module and search space in temporary folders are found
and run with no other edit."""

import json
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

import methods
from harness import cli, data, spaces
from harness.config import TrialConfig, UsageError
from harness.gradients import estimate_gradients
from harness.loss import loss_of
from harness.model import load, target_modules
from harness.tasks import resolve
from harness.train import prepare, run_trial, validation_loss
from methods._base import Method, lora_layers
from helpers import run_cli

CPU = torch.device("cpu")
LRS = {"lora-ga": 3e-3, "lora-ga-peft": 3e-3}   # the rest learn at 2e-2 in 24 smoke steps


def val_examples(cfg, tok):
    _, rows = data.split_rows(data.load_rows("gsm8k", "train", cfg.data_dir), cfg.val_size, cfg.train_size)
    return data.encode(rows, tok, cfg.max_length)


def one_step_base(cfg):
    """LoRA-One's documented init as a plain model: W - s/(gamma sigma1) [G]_r in every target layer."""
    hp = cfg.hparams
    model, tok, train_ex, _ = prepare(cfg, CPU)
    targets = target_modules(model)
    grads = estimate_gradients(model, data.in_order(train_ex[:hp["grad_samples"]], 1, tok.pad_token_id), targets)
    s = methods.get("lora-one").scaling(hp)
    with torch.no_grad():
        for name in targets:
            U, S, Vh = torch.linalg.svd(grads[name].double(), full_matrices=False)
            top = U[:, :hp["rank"]] @ torch.diag(S[:hp["rank"]]) @ Vh[:hp["rank"]]
            model.get_submodule(name).weight -= (s / (hp["gamma"] * S[0]) * top).float()
    return model


SHIFTED = {"lora-one": one_step_base}   # methods whose init changes the output, and how


@pytest.fixture(scope="module")
def plain_val_loss(data_dir):
    """The smoke validation loss of the tiny model without adapters."""
    cfg = resolve(TrialConfig(method="lora", lr=1e-2, preset="smoke", data_dir=data_dir))
    model, tok = load(cfg.model, CPU, torch.float32)
    return validation_loss(model, val_examples(cfg, tok), cfg.batch_size, tok.pad_token_id)


def val_loss_of(cfg, model_of):
    """The validation loss of the model that `model_of(base)` makes of a fresh tiny base."""
    base, tok = load(cfg.model, CPU, torch.float32)
    return validation_loss(model_of(base), val_examples(cfg, tok), cfg.batch_size, tok.pad_token_id)


@pytest.mark.parametrize("method", methods.names())
def test_method_keeps_the_contract(smoke, tmp_path, capsys, plain_val_loss, method):
    cfg = smoke(method, LRS.get(method, 2e-2), steps=8, eval_interval=4, out=str(tmp_path / "a"))
    first = run_trial(cfg)
    at_init = plain_val_loss
    if method in SHIFTED:
        shifted = SHIFTED[method](cfg)
        at_init = val_loss_of(cfg, lambda base: shifted)
        assert at_init != pytest.approx(plain_val_loss, rel=1e-3)
    assert first["val_loss_init"] == pytest.approx(at_init, rel=1e-5)   # the output at init
    assert first["status"] == "finished" and first["val_loss"] < first["val_loss_init"]
    history = json.loads(Path(cfg.out, "metrics.json").read_text())["history"]
    assert [p["step"] for p in history] == [0, 4, 8]
    reloaded = val_loss_of(cfg, lambda base: PeftModel.from_pretrained(base, f"{cfg.out}/adapter"))
    assert reloaded == pytest.approx(first["val_loss"], rel=1e-5)   # on a fresh original base
    again = run_trial(replace(cfg, out=str(tmp_path / "b")))
    assert (again["val_loss"], again["train_loss"]) == (first["val_loss"], first["train_loss"])
    assert cli.main(["methods"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [method, methods.group_of(method)] in [line[:2] for line in listed]


def test_lora_ga_peft_reads_the_gradient_preprocess_loraga_estimates(smoke):
    """The harness's data pass stands in for PEFT's preprocess_loraga: the same mean gradient, and
    PEFT's LoRA-GA init (not its fallback, LoRA's B = 0) runs from it."""
    from peft.tuners.lora.loraga import preprocess_loraga
    cfg = smoke("lora-ga-peft")
    method, hp = methods.get("lora-ga-peft"), cfg.hparams
    model, tok, train_ex, _ = prepare(cfg, CPU)
    targets = target_modules(model)
    batches = list(data.in_order(train_ex[:hp["grad_samples"]], 1, tok.pad_token_id))
    preprocess_loraga(model, method.lora_config(hp, targets),
                      lambda: [loss_of(model, batch).backward() for batch in batches])
    theirs = {name: model.get_submodule(name)._peft_loraga_grad for name in targets}
    model, _ = load(cfg.model, CPU, torch.float32)
    method.data_pass(model, batches, targets, hp)
    for name in targets:
        torch.testing.assert_close(model.get_submodule(name)._peft_loraga_grad, theirs[name], rtol=1e-5, atol=1e-7)
    original = model.get_submodule(targets[0]).weight.detach().clone()
    model = get_peft_model(model, method.lora_config(hp, targets))
    (_, layer), *_ = lora_layers(model)
    assert layer.lora_B["default"].weight.abs().max() > 0
    assert not torch.equal(layer.get_base_layer().weight, original)


def test_groups():
    assert methods.group("all") == ["lora", "lora-ga", "lora-one", "pissa", "riemannian"]
    assert methods.group("every") == methods.names()
    assert set(methods.group("every")) > set(methods.group("all"))


MODULE = '''
    from methods import register
    from methods._base import Method


    @register
    class FolderLora(Method):
        name = "folder-lora"
        description = "LoRA from a temporary folder"
        defaults = dict(alpha=8.0)
'''


def test_method_and_space_in_temporary_folders_are_found_and_run(tmp_path, data_dir):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "folder_lora.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "spaces").mkdir()
    shutil.copy(spaces.FOLDER / "_ladders.yaml", tmp_path / "spaces")
    (tmp_path / "spaces" / "folder-lora.yaml").write_text("method: folder-lora\ngrid:\n  alpha: [8.0, 16.0]\n")
    env = {"HARNESS_METHODS_DIR": str(tmp_path / "methods")}
    listed = run_cli("methods", env=env)
    assert listed.returncode == 0 and "folder-lora  every  LoRA from a temporary folder" in listed.stdout
    trial = run_cli("trial", "--method", "folder-lora", "--lr", "1e-2", "--preset", "smoke", "--steps", "4",
                    "--eval-limit", "0", "--data-dir", data_dir, "--out", tmp_path / "trial", env=env)
    assert trial.returncode == 0, trial.stderr
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["config"]["hparams"]["alpha"] == 8.0 and saved["status"] == "finished"
    plan = run_cli("run", "--methods", "folder-lora", "--spaces", tmp_path / "spaces", "--preset", "smoke",
                   "--data-dir", data_dir, "--storage", tmp_path / "runs", "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("6 trials\n")   # its grid's 2 alphas x the 3-rung smoke ladder


def test_eva_never_loops_for_ever():
    from methods import eva
    calls = eva.counted(lambda model, batch: batch, limit=2)
    assert [calls(None, 1), calls(None, 2)] == [1, 2]
    with pytest.raises(UsageError, match="did not converge.*tau"):
        calls(None, 3)
    short = {"labels": torch.full((1, 40), -100), "input_ids": torch.zeros(1, 40, dtype=torch.long)}
    with pytest.raises(UsageError, match="at least rho x rank = 16 answer tokens"):
        methods.get("eva").data_pass(None, [short], ["lin"], methods.get("eva").resolve({}))


def test_method_folder_and_name_clashes_are_usage_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_METHODS_DIR", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="missing, which is not a folder"):
        methods.names()
    monkeypatch.delenv("HARNESS_METHODS_DIR")
    with pytest.raises(UsageError, match="method lora is defined twice"):
        methods.register(type("Other", (Method,), {"name": "lora"}))

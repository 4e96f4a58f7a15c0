"""The fused LoRA layer and RMSNorm (harness.kernels) against the libraries' own forward and backward."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLinear
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from harness import data, kernels
from harness.loss import loss_of
from harness.train import prepare, run_trial


def adapted(cfg, **lora):
    """The tiny Llama with LoRA adapters whose B is not zero, so the adapters change the output."""
    model, tok, train_ex, _ = prepare(cfg, torch.device("cpu"))
    lora = dict(dict(r=4, lora_alpha=12, target_modules="all-linear", init_lora_weights=False), **lora)
    return get_peft_model(model, LoraConfig(**lora)), tok, train_ex


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = loss_of(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def library_then_fused(module, x, switch):
    """(output, input gradient) of the module before and after `switch()` installs the fused forms."""
    results = []
    for fused in (False, True):
        if fused:
            switch()
        y = module(x)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        results.append((y.detach().clone(), x.grad.clone()))
        x.grad = None
    return results


def test_one_layer_equals_peft_in_output_and_every_gradient():
    torch.manual_seed(0)
    net = get_peft_model(torch.nn.Sequential(torch.nn.Linear(24, 40)),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False))
    layer = net.base_model.model[0]
    assert kernels.covered(layer)
    x = torch.randn(3, 5, 24, requires_grad=True)
    outputs, grads = [], []
    for fused in (False, True):
        if fused:
            assert kernels.install(net, "fused") == 2   # the LoRA layer and its frozen base
        y = layer(x)
        (y * torch.linspace(-1, 1, 40)).sum().backward()
        outputs.append(y.detach().clone())
        grads.append([t.grad.clone() for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight)])
        for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            t.grad = None
    assert outputs[1].shape == (3, 5, 40)
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for peft_grad, fused_grad in zip(*grads):
        assert torch.allclose(peft_grad, fused_grad, rtol=1e-5, atol=1e-6)


def test_a_tiny_model_trains_the_same_with_the_fused_layers(smoke):
    model, tok, train_ex = adapted(smoke())
    fused = copy.deepcopy(model)
    switched = kernels.install(fused, "fused")
    layers = [m for m in fused.modules() if isinstance(m, (PeftLinear, LlamaRMSNorm))
              or type(m) is torch.nn.Linear and not m.weight.requires_grad]   # the head, the bases
    assert switched == len(layers) > 0 and all("forward" in vars(m) for m in layers)
    batch = data.collate(train_ex[:6], tok.pad_token_id)
    (loss, grads), (fused_loss, fused_grads) = loss_and_grads(model, batch), loss_and_grads(fused, batch)
    assert abs(loss - fused_loss) <= 1e-5 * abs(loss)
    assert grads.keys() == fused_grads.keys()
    for name in grads:
        assert (grads[name] - fused_grads[name]).norm() <= 1e-5 * grads[name].norm(), name   # float rounding
    assert fused.state_dict().keys() == model.state_dict().keys()   # the saved adapter is PEFT's


@pytest.mark.parametrize("lora", [dict(lora_dropout=0.1), dict(use_dora=True)])
def test_layers_the_fused_form_does_not_cover_keep_pefts_forward(smoke, lora):
    model, _, _ = adapted(smoke(), **lora)
    kernels.install(model, "fused")
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, PeftLinear))


def test_mixed_dtypes_and_disabled_adapters_take_pefts_path(smoke, monkeypatch):
    model, tok, train_ex = adapted(smoke())
    kernels.install(model, "fused")
    calls = []
    monkeypatch.setattr(kernels.LoraLinear, "apply", lambda *a: calls.append(a))
    batch = data.collate(train_ex[:2], tok.pad_token_id)
    with model.disable_adapter():
        loss_of(model, batch)
    assert not calls
    model.base_model.model.to(torch.float64)
    for module in model.modules():
        if isinstance(module, PeftLinear):
            module.lora_A.float()   # fp64 base, fp32 adapters
            module.lora_B.float()
    with torch.no_grad():
        model(input_ids=batch["input_ids"])
    assert not calls




@pytest.mark.parametrize("method", ["lora", "pissa", "riemannian"])
def test_a_trial_with_the_fused_layers_ends_where_pefts_does(smoke, tmp_path, method):
    results = {kind: run_trial(smoke(method, 1e-2, steps=6, eval_limit=0, kernels=kind,
                                     out=str(tmp_path / kind))) for kind in kernels.KERNELS}
    assert results["fused"]["fused_modules"] > 0 and results["library"]["fused_modules"] == 0
    assert abs(results["fused"]["val_loss"] - results["library"]["val_loss"]) <= 1e-5 * results["library"]["val_loss"]


def test_the_matmul_equals_f_linear_in_every_layout_it_is_given():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(7, 24), torch.randn(40, 24), torch.randn(40)
    for args in [(x, weight, bias), (x, weight), (x.t().contiguous().t(), weight), (torch.randn(7, 40), weight.t())]:
        assert torch.allclose(kernels.linear(*args), torch.nn.functional.linear(*args), rtol=1e-5, atol=1e-5)
    assert kernels.onednn(x, weight) == kernels.ONEDNN   # fp32 on CPU
    assert not kernels.onednn(x.double(), weight.double())


def test_a_frozen_linear_equals_torchs_and_a_trained_one_is_left_alone(monkeypatch):
    torch.manual_seed(0)
    head, trained = torch.nn.Linear(24, 40).requires_grad_(False), torch.nn.Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    def switch():
        assert kernels.install(torch.nn.Sequential(head, trained), "fused") == 1
        assert "forward" in vars(head) and "forward" not in vars(trained)
    for library, fused in zip(*library_then_fused(head, x, switch)):
        assert torch.allclose(library, fused, rtol=1e-5, atol=1e-6)
    calls = []
    monkeypatch.setattr(kernels.FrozenLinear, "apply", lambda *a: calls.append(a))
    head.double()(x.double())                     # not fp32: torch's own forward
    head.float().requires_grad_(True)(x)          # trained after the switch: likewise
    assert not calls


@pytest.mark.parametrize("norm_class", [LlamaRMSNorm, Qwen3RMSNorm])
def test_one_rmsnorm_equals_transformers_in_output_and_gradient(norm_class):
    torch.manual_seed(0)
    norm = norm_class(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    norm.requires_grad_(False)
    x = torch.randn(3, 5, 24, requires_grad=True)
    def switch():
        assert kernels.install(torch.nn.Sequential(norm), "fused") == 1
    for library, fused in zip(*library_then_fused(norm, x, switch)):
        assert torch.allclose(library, fused, rtol=1e-5, atol=1e-6)


def test_norms_of_another_form_a_trained_weight_or_bf16_keep_transformers_forward(monkeypatch):
    gemma = GemmaRMSNorm(24).requires_grad_(False)   # w scales by (1 + w): another forward
    trained = LlamaRMSNorm(24)                       # its weight requires grad
    assert kernels.install(torch.nn.Sequential(gemma, torch.nn.Sequential(trained)), "fused") == 0
    norm = LlamaRMSNorm(24).requires_grad_(False)
    kernels.install(torch.nn.Sequential(norm), "fused")
    calls = []
    monkeypatch.setattr(kernels.RMSNorm, "apply", lambda *a: calls.append(a))
    norm(torch.randn(2, 24, dtype=torch.bfloat16))
    assert not calls

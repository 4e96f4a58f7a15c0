"""PEFT's LoRA-GA (`init_lora_weights="lora_ga"`, `LoraGAConfig` defaults: direction ArB2r,
scale stable), beside the published init of methods/lora_ga.py so both run on one ladder.

From the randomized SVD U S V of the mean full gradient G (q = min(4r, m, n), 4 iterations):
A = V[:, :r]ᵀ, B = U[:, r:2r] diag(S[r:2r]) m^¼/√γ, cast to W's dtype, W <- W - s B A, so the
output at init is unchanged. Not the paper's init, which uses no singular values and scales both
factors by c = m^¼/√γ. PEFT reads G from `preprocess_loraga`, which only estimates it on the
plain model and attaches it to each target layer; here the harness's gradient phase estimates the
same mean (host-offloaded, harness/gradients.py) and attaches it, so both LoRA-GAs see one G."""

from peft import LoraGAConfig

from methods import register
from methods._base import Method


@register
class LoraGAPeft(Method):
    name = "lora-ga-peft"
    description = "PEFT's LoRA-GA: B = U[:, r:2r] S[r:2r] c, A = V[:, :r]ᵀ, offset subtracted (not the paper's)"
    defaults = dict(use_rslora=True, gamma=16.0, grad_samples=8)   # as lora-ga
    ranks_per_layer = 2   # B takes the singular vectors r..2r
    data_samples = "grad_samples"
    mutates_base = True
    init_keys = ("rank", "alpha", "use_rslora", "gamma", "grad_samples")

    def data_pass(self, model, batches, targets, hp):
        """`preprocess_loraga`'s job: the mean gradient, attached where PEFT's init reads it."""
        grads = super().data_pass(model, batches, targets, hp)
        for name in targets:
            layer = model.get_submodule(name)
            layer._peft_loraga_grad = grads[name].to(layer.weight.device)

    def lora_config(self, hp, targets):
        config = super().lora_config(hp, targets)
        config.init_lora_weights = "lora_ga"
        config.lora_ga_config = LoraGAConfig(stable_gamma=hp["gamma"])
        return config

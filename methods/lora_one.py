"""LoRA-One (Zhang et al., ICML 2025, arXiv 2502.01235), as in the reference code YuanheZ/LoRA-One.

Spectral init from one full gradient step: with U S V = svd_lowrank(-G, min(512, m, n), 16),
B = U_r sqrt(S_r) / sqrt(sigma1 gamma), A = sqrt(S_r) V_r^T / sqrt(sigma1 gamma), W unchanged,
so s B A = -(s / (gamma sigma1)) [G]_r at init. Training is preconditioned AdamW by default (the
paper's algorithm): with `update: reference` (default) the authors' scaled AdamW `AdamWr` as
LoRA-One's earlier code ran it (YuanheZ/LoRA-One prec_logTrainer.py at
e4d9c276d5a8a6587acbf869b3053bbad6ec3d9d: no bias correction, B preconditioned with the updated
A, weight decay after the step), with `update: peft` PEFT's form (see methods/riemannian.py).
`precondition: false` gives the plain AdamW of the released code; `update` then has no effect.
An older repo version used the name for a different init (orthonormal factors of +G with the
offset subtracted); this is the published one."""

import math

import torch

from methods import register
from methods._base import Method, lora_layers, randomized, set_factors, top_svd
from methods.riemannian import UPDATES, preconditioned_optimizer


def sketch_size(m: int, n: int) -> int:
    return min(512, m, n)


def init_factors(weight: torch.Tensor, grad: torch.Tensor, *, rank: int, scaling: float,
                 gamma: float = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A r×n fp32, B m×r fp32, the unchanged weight) for one m×n layer."""
    m, n = weight.shape
    U, S, V = top_svd(-grad.float(), q=sketch_size(m, n), niter=16)
    root = S[:rank].sqrt() / math.sqrt(S[0].item() * gamma)
    B = U[:, :rank] * root
    A = (V[:, :rank] * root).T.contiguous()
    return A, B, weight


@register
class LoraOne(Method):
    name = "lora-one"
    description = "LoRA-One: one-step full-gradient spectral init, preconditioned AdamW"
    defaults = dict(use_rslora=True, gamma=128.0, reg=1e-6, precondition=True, update="reference",
                    grad_samples=8)
    choices = {**Method.choices, "update": UPDATES}
    data_samples = "grad_samples"
    init_keys = ("rank", "gamma", "grad_samples")   # the factors do not depend on the scaling

    def init_seeded(self, hp, shapes):
        return any(randomized((m, n), sketch_size(m, n)) for m, n in shapes)

    def init_adapters(self, model, hp, grads):
        s = self.scaling(hp)
        for name, layer in lora_layers(model):
            weight = layer.get_base_layer().weight
            A, B, _ = init_factors(weight.data, grads[name].to(weight.device),
                                   rank=hp["rank"], scaling=s, gamma=hp["gamma"])
            set_factors(layer, A, B)

    def inert(self, hp):
        return set() if hp.get("precondition", True) else {"reg", "update"}

    def optimizer(self, model, lr, hp, weight_decay):
        if hp["precondition"]:
            return preconditioned_optimizer(model, lr, hp, weight_decay)
        return super().optimizer(model, lr, hp, weight_decay)

"""LoRA-GA (Wang et al. 2024, arXiv 2407.05000), as in the reference code Outsider565/LoRA-GA.

A = V[:, :r]^T c and B = U[:, r:2r] c with c = m^(1/4)/sqrt(gamma), from the randomized SVD of
the averaged full gradient G; W <- W - s B A so the output at init is unchanged.
PEFT's `init_lora_weights="lora_ga"` multiplies B by S[r:2r] and scales B only, which is not the
published method, so this module implements the reference."""

import math

import torch

from methods import register
from methods._base import Method, lora_layers, randomized, set_factors, top_svd


def sketch_size(rank: int, m: int, n: int) -> int:
    return min(4 * rank, m, n)


def init_factors(weight: torch.Tensor, grad: torch.Tensor, *, rank: int, scaling: float,
                 gamma: float = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A r×n fp32, B m×r fp32, new weight in weight's dtype) for one m×n layer."""
    m, n = weight.shape
    if 2 * rank > min(m, n):
        raise ValueError(f"LoRA-GA needs 2*rank <= min(m, n); got rank {rank} for a {m}x{n} layer")
    U, _, V = top_svd(grad.float(), q=sketch_size(rank, m, n), niter=4)
    c = m ** 0.25 / math.sqrt(gamma)
    A = V[:, :rank].T.contiguous() * c
    B = U[:, rank:2 * rank].contiguous() * c
    new_weight = (weight.float() - scaling * (B @ A)).to(weight.dtype)
    return A, B, new_weight


@register
class LoraGA(Method):
    name = "lora-ga"
    description = "LoRA-GA: adapters from the gradient's singular vectors, offset subtracted from W (reference init)"
    defaults = dict(use_rslora=True, gamma=16.0, grad_samples=8)
    ranks_per_layer = 2   # B takes the singular vectors r..2r
    data_samples = "grad_samples"
    mutates_base = True
    init_keys = ("rank", "alpha", "use_rslora", "gamma", "grad_samples")

    def init_seeded(self, hp, shapes):
        return any(randomized((m, n), sketch_size(hp["rank"], m, n)) for m, n in shapes)

    def init_adapters(self, model, hp, grads):
        s = self.scaling(hp)
        for name, layer in lora_layers(model):
            weight = layer.get_base_layer().weight
            A, B, new_weight = init_factors(weight.data, grads[name].to(weight.device),
                                            rank=hp["rank"], scaling=s, gamma=hp["gamma"])
            set_factors(layer, A, B, new_weight)

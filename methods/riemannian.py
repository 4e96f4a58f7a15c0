"""Riemannian-preconditioned LoRA (Zhang & Pilanci 2024, arXiv 2402.02347).

LoRA's init; each step first maps the raw gradients of every (A, B) pair to
g_A <- (B^T B + reg I)^-1 g_A and g_B <- g_B (A A^T + reg I)^-1, then runs AdamW (scaled AdamW)
or SGD (scaled GD). The optimizer is PEFT's `create_riemannian_optimizer`; tests check that its
step equals `precondition` below. Differences from the reference code: PEFT preconditions both
factors from the pre-step values (the reference AdamW uses the updated A for B), inverts with
pinv, and keeps the wrapped optimizer's bias correction (the reference Mistral/HF path had none).
`reg` is an absolute damping constant and a real hyperparameter (reference: 1e-6 for GPT-2,
tuned from 1e-7 to 100 per task; PEFT's default 1e-2)."""

import torch

from methods import register
from methods._base import Method, riemannian_optimizer


def precondition(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                 *, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The r×r-preconditioned gradients ((B^T B + reg I)^-1 g_A, g_B (A A^T + reg I)^-1)."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    new_A = torch.linalg.solve(B.T @ B + reg * eye, grad_A)
    new_B = torch.linalg.solve(A @ A.T + reg * eye, grad_B.T).T  # (AA^T + reg I) is symmetric
    return new_A, new_B


@register
class Riemannian(Method):
    name = "riemannian"
    description = "Riemannian-preconditioned LoRA: LoRA init, r×r-preconditioned AdamW or SGD (PEFT)"
    defaults = dict(reg=1e-6)

    def optimizer(self, model, lr, hp, weight_decay):
        return riemannian_optimizer(model, lr, hp, weight_decay)

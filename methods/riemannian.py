"""Riemannian-preconditioned LoRA (Zhang & Pilanci 2024, arXiv 2402.02347).

LoRA's init; each step maps the raw gradients of every (A, B) pair to
g̃_A = (BᵀB + reg I)⁻¹ g_A and g̃_B = g_B (AAᵀ + reg I)⁻¹ and steps AdamW (scaled AdamW) or SGD
(scaled GD) with them. Two forms, chosen by the hyperparameter `update`:

- `reference` (default): the authors' optimizers as they ran, `AdamWr` and `SGDr` of
  pilancilab/Riemannian_Preconditioned_LoRA, Mistral-7B/mistral/custom_optimizer.py at commit
  00d850f7f666468afbafbf34cdbeb670374073f7 (LoRA-One's copy, YuanheZ/LoRA-One prec_logTrainer.py
  at e4d9c276d5a8a6587acbf869b3053bbad6ec3d9d, steps the same). Scaled AdamW, per pair: A takes
  an Adam step with g̃_A (from the pre-step B) and no bias correction, p <- p - lr m/(sqrt(v) + eps),
  then p <- p - lr wd p; then B does the same with g̃_B built from the already-updated A.
  Scaled GD preconditions both factors from the pre-step values, then p <- p - lr wd p - lr g̃.
- `peft`: PEFT's `create_riemannian_optimizer`: both factors preconditioned from the pre-step
  values, then torch's AdamW (bias correction, decoupled decay before the step) or SGD (whose
  update is the same as `SGDr`'s).

`reg` is an absolute damping constant and a real hyperparameter (reference: 1e-6 for GPT-2,
tuned from 1e-7 to 100 per task; PEFT's default 1e-2).

Why not PEFT's optimizer: it inverts each layer's r×r matrices with `pinv` in a Python loop, a
dozen small kernels per layer, which made a step 2.0x LoRA's on an H100 with SmolLM2-135M
(210 layers). Here the layers of one shape are stacked and solved in one batched call."""

from collections import defaultdict

import torch

from methods import register
from methods._base import Method, lora_layers

UPDATES = ("reference", "peft")


def scale_A(B: torch.Tensor, grad_A: torch.Tensor, *, reg: float) -> torch.Tensor:
    """(BᵀB + reg I)⁻¹ g_A, for one layer or a stack of layers (a leading batch dimension)."""
    eye = reg * torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    # solve_ex does not check for singular matrices, so it never waits for the GPU; with reg > 0
    # the matrix is positive definite.
    return torch.linalg.solve_ex(B.mT @ B + eye, grad_A)[0]


def scale_B(A: torch.Tensor, grad_B: torch.Tensor, *, reg: float) -> torch.Tensor:
    """g_B (AAᵀ + reg I)⁻¹, for one layer or a stack of layers."""
    eye = reg * torch.eye(A.shape[-2], dtype=A.dtype, device=A.device)
    return torch.linalg.solve_ex(A @ A.mT + eye, grad_B.mT)[0].mT  # (AAᵀ + reg I) is symmetric


def precondition(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                 *, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The r×r-preconditioned gradients of a pair, both from the given (pre-step) factors."""
    return scale_A(B, grad_A, reg=reg), scale_B(A, grad_B, reg=reg)


def pair_groups(model) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The trainable (A, B) pairs of a PEFT model, grouped by shapes, dtype and device: one
    batched solve per group."""
    groups = defaultdict(list)
    for _, layer in lora_layers(model):
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if A.requires_grad and B.requires_grad:
            groups[(A.shape, B.shape, A.dtype, A.device)].append((A, B))
    return list(groups.values())


def with_grads(group):
    """The pairs of a group whose factors both have gradients (a frozen path has none)."""
    return [(A, B) for A, B in group if A.grad is not None and B.grad is not None]


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One (layers, ...) tensor in fp32 at least."""
    return torch.stack(tensors).to(torch.promote_types(tensors[0].dtype, torch.float32))


class Preconditioner:
    """Applies `precondition` in place to the gradients of every LoRA pair of a model, in fp32 at
    least, one batched call per group of same-shaped layers (the `peft` form)."""

    def __init__(self, model, reg: float):
        self.groups, self.reg = pair_groups(model), reg

    @torch.no_grad()
    def __call__(self):
        for group in self.groups:
            pairs = with_grads(group)
            if not pairs:
                continue
            As, Bs = (list(factors) for factors in zip(*pairs))
            new_A, new_B = precondition(stack(As), stack(Bs), stack([A.grad for A in As]),
                                        stack([B.grad for B in Bs]), reg=self.reg)
            torch._foreach_copy_([A.grad for A in As], list(new_A.unbind()))
            torch._foreach_copy_([B.grad for B in Bs], list(new_B.unbind()))


class ScaledOptimizer(torch.optim.Optimizer):
    """The authors' scaled AdamW (`AdamWr`, kind "adamw") or scaled GD (`SGDr`, kind "sgd") as
    they ran: no bias correction, betas and eps as the Hugging Face Trainer passes them. Pairs are
    independent, so the layers of one shape are stepped together: one batched solve per factor,
    `torch._foreach_*` for the moments and the update. Moments are fp32 at least; a low-precision
    parameter is updated through an fp32 copy and rounded once."""

    def __init__(self, model, lr: float, *, kind: str, reg: float, weight_decay: float,
                 betas=(0.9, 0.999), eps=1e-8):
        self.pairs, self.kind = pair_groups(model), kind
        paired = {id(p) for group in self.pairs for pair in group for p in pair}
        params = [p for p in model.parameters() if p.requires_grad]
        if any(id(p) not in paired for p in params):
            raise ValueError("the reference scaled optimizer trains LoRA (A, B) pairs only, "
                             "but the model has other trainable parameters")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, reg=reg, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:   # a closure would recompute the raw gradients after us
            raise ValueError("the preconditioned optimizer does not take a closure")
        group, = self.param_groups
        for pairs in map(with_grads, self.pairs):
            if pairs:
                As, Bs = (list(factors) for factors in zip(*pairs))
                (self._adamw if self.kind == "adamw" else self._sgd)(As, Bs, group)

    def _sgd(self, As, Bs, group):
        # SGDr: both preconditioners from the pre-step factors, weight decay, then the step
        new_A, new_B = precondition(stack(As), stack(Bs), stack([A.grad for A in As]),
                                    stack([B.grad for B in Bs]), reg=group["reg"])
        for params, grads in ((As, new_A), (Bs, new_B)):
            work = working_copy(params, grads.dtype)
            if group["weight_decay"] > 0:
                torch._foreach_mul_(work, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(work, list(grads.unbind()), alpha=-group["lr"])
            write_back(params, work)

    def _adamw(self, As, Bs, group):
        # AdamWr: A first, from the pre-step B; then B, from the A just updated
        grads_A = scale_A(stack(Bs), stack([A.grad for A in As]), reg=group["reg"])
        self._adam_update(As, grads_A, group)
        grads_B = scale_B(stack(As), stack([B.grad for B in Bs]), reg=group["reg"])
        self._adam_update(Bs, grads_B, group)

    def _adam_update(self, params, grads: torch.Tensor, group):
        beta1, beta2 = group["betas"]
        lr, decay = group["lr"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                # .to: load_state_dict casts the moments to a low-precision parameter's dtype
                old = state.get(key)
                state[key] = torch.zeros_like(p, dtype=grads.dtype) if old is None else old.to(grads.dtype)
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        g = list(grads.unbind())
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        work = working_copy(params, grads.dtype)
        torch._foreach_addcdiv_(work, m, denom, value=-lr)   # no bias correction
        if decay > 0:
            torch._foreach_mul_(work, 1 - lr * decay)         # decay after the step
        write_back(params, work)


def working_copy(params, dtype):
    """The parameters themselves, or copies in `dtype` (fp32) of low-precision ones."""
    return params if params[0].dtype == dtype else [p.to(dtype) for p in params]


def write_back(params, work):
    if work is not params:
        torch._foreach_copy_(params, work)


def preconditioned_optimizer(model, lr: float, hp: dict, weight_decay: float) -> torch.optim.Optimizer:
    """Scaled AdamW (hp["optimizer"] == "adamw") or scaled GD ("sgd") over the trainable
    parameters, in the form hp["update"] names."""
    if hp["update"] == "reference":
        return ScaledOptimizer(model, lr, kind=hp["optimizer"], reg=hp["reg"], weight_decay=weight_decay)
    base = torch.optim.SGD if hp["optimizer"] == "sgd" else torch.optim.AdamW
    preconditioner = Preconditioner(model, hp["reg"])

    class Preconditioned(base):
        def step(self, closure=None):
            if closure is not None:   # a closure would recompute the raw gradients after us
                raise ValueError("the preconditioned optimizer does not take a closure")
            preconditioner()
            return super().step()

    params = [p for p in model.parameters() if p.requires_grad]
    return Preconditioned(params, lr=lr, weight_decay=weight_decay)


@register
class Riemannian(Method):
    name = "riemannian"
    description = "Riemannian-preconditioned LoRA: LoRA init, r×r-preconditioned AdamW or SGD"
    defaults = dict(reg=1e-6, update="reference")
    choices = {**Method.choices, "update": UPDATES}

    def optimizer(self, model, lr, hp, weight_decay):
        return preconditioned_optimizer(model, lr, hp, weight_decay)

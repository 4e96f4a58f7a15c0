"""PEFT's vanilla LoRA layer, y = x W^T + b + s (x A^T) B^T, as one autograd function whose
products take the operand layouts the CPU BLAS runs fastest.

PEFT's forward makes B's product, scales it and adds it to the base output: three passes over a
[tokens x out] tensor, where one `addmm` into the base output does all three. Its backward, left
to autograd, scales the whole output gradient and multiplies it by B in the layout MKL runs 2-3x
slower for rank-wide products ([640 x 1536] @ [1536 x 8]: 630 us against 270 us transposed).
The sums are the same, so outputs and gradients equal PEFT's to float rounding
(tests/test_lora_linear.py); the adapter's parameters, names and saved files are PEFT's own.

Only layers this exact form covers are switched: one adapter, no dropout, no variant (DoRA), a
frozen plain nn.Linear base, no hooks on the factors. At call time, anything else (adapters
disabled or merged, mixed dtypes such as a bf16 base with fp32 adapters, extra arguments) goes to
PEFT's forward."""

import types

import torch
from peft.tuners.lora.layer import Linear as PeftLinear

from harness.config import LORA_KERNELS as KERNELS


class LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling):
        flat = x.reshape(-1, x.shape[-1])
        h = flat @ a.t()                                                        # [n, r]
        base = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        y = base.addmm_(h, b.t(), alpha=scaling)                               # in place: one pass
        ctx.save_for_backward(flat, h, weight, a, b)
        ctx.scaling, ctx.shape = scaling, x.shape
        return y.view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, dy):
        flat, h, weight, a, b = ctx.saved_tensors
        dy = dy.reshape(-1, dy.shape[-1])
        dh = (dy @ b.t().contiguous().t()) * ctx.scaling                       # [n, r]
        db = (h.t() @ dy).t() * ctx.scaling                                    # [out, r]
        da = dh.t() @ flat                                                      # [r, in]
        dx = (dy @ weight).addmm_(dh, a).view(ctx.shape) if ctx.needs_input_grad[0] else None
        return dx, None, None, da, db, None


def fused_forward(layer: PeftLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = layer.active_adapters[0] if len(layer.active_adapters) == 1 else None
    a, b = (layer.lora_A[name].weight, layer.lora_B[name].weight) if name in layer.lora_A else (None, None)
    base = layer.base_layer
    if (args or kwargs or a is None or layer.disable_adapters or layer.merged
            or not x.dtype == base.weight.dtype == a.dtype == b.dtype):
        return PeftLinear.forward(layer, x, *args, **kwargs)
    return LoraLinear.apply(x, base.weight, base.bias, a, b, layer.scaling[name])


def covered(layer) -> bool:
    """Whether the fused form computes this layer exactly (checked once, at install)."""
    if type(layer) is not PeftLinear or type(layer.base_layer) is not torch.nn.Linear or layer.fan_in_fan_out:
        return False
    base, names = layer.base_layer, list(layer.lora_A)
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    plain = all(isinstance(layer.lora_dropout[n], torch.nn.Identity) and n not in layer.lora_variant
                and layer.lora_B[n].bias is None and not layer.lora_A[n]._forward_hooks
                and not layer.lora_B[n]._forward_hooks for n in names)
    return frozen and plain and len(names) == 1


def install(model, kernel: str) -> int:
    """Switch every covered LoRA layer of a PEFT model to the fused form; the number switched."""
    if kernel != "fused":
        return 0
    layers = [m for m in model.modules() if covered(m)]
    for layer in layers:
        layer.forward = types.MethodType(fused_forward, layer)
    return len(layers)

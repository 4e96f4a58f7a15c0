"""Faster forms of the two layers a trial passes through most, as autograd functions with the
same sums, switched in per module where they compute exactly what the library's forward does.

LoRA: PEFT's vanilla layer, y = x W^T + b + s (x A^T) B^T. PEFT's forward makes B's product,
scales it and adds it to the base output: three passes over a [tokens x out] tensor, where one
`addmm` into the base output does all three. Its backward, left to autograd, scales the whole
output gradient and multiplies it by B in the layout MKL runs 2-3x slower for rank-wide products
([640 x 1536] @ [1536 x 8]: 630 us against 270 us transposed). Switched where the fused form
covers the layer: one adapter, no dropout, no variant (DoRA), a frozen plain nn.Linear base, no
hooks on the factors. At call time, anything else (adapters disabled or merged, mixed dtypes such
as a bf16 base with fp32 adapters, extra arguments) goes to PEFT's forward.

RMSNorm: transformers' Llama form, y = w * x / sqrt(mean(x^2) + eps), whose autograd graph takes
a dozen passes over the activations forward and back; written out, its backward is three
(2.5 ms against 0.9 ms for a [4 x 160 x 576] batch). Switched on norms whose forward is the Llama
one to the byte (Llama, Qwen2/3, Mistral, SmolLM, ...) and whose weight is frozen; in fp32 only,
where the library's casts are no-ops.

Matmuls: on CPU in fp32, the base products of those LoRA layers and every other frozen
nn.Linear (the LM head) go to oneDNN's linear, the op torch.compile emits for CPU linears, instead
of MKL's sgemm, which torch's mm calls: on a small model's shapes it runs 7-34% faster on 2 cores
and 3-16% on one (fp32 products and sums either way). Elsewhere, the library's matmul.

Outputs and gradients equal the library's to float rounding (tests/test_kernels.py); parameters,
their names and the saved adapter are unchanged."""

import types

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as PeftLinear
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from harness.config import KERNELS


ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn(x, weight) -> bool:
    return ONEDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


def linear(x, weight, bias=None):
    """x W^T + b, by oneDNN for fp32 on CPU, else by F.linear."""
    if onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def frozen(layer: torch.nn.Linear) -> bool:
    return not layer.weight.requires_grad and (layer.bias is None or not layer.bias.requires_grad)


class LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling):
        flat = x.reshape(-1, x.shape[-1])
        h = flat @ a.t()                                                        # [n, r]
        base = linear(flat, weight, bias)
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
        dx = linear(dy, weight.t()).addmm_(dh, a).view(ctx.shape) if ctx.needs_input_grad[0] else None
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
    """Whether the fused LoRA form computes this layer exactly (checked once, at install)."""
    if type(layer) is not PeftLinear or type(layer.base_layer) is not torch.nn.Linear or layer.fan_in_fan_out:
        return False
    names = list(layer.lora_A)
    plain = all(isinstance(layer.lora_dropout[n], torch.nn.Identity) and n not in layer.lora_variant
                and layer.lora_B[n].bias is None and not layer.lora_A[n]._forward_hooks
                and not layer.lora_B[n]._forward_hooks for n in names)
    return frozen(layer.base_layer) and plain and len(names) == 1


class FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        weight, = ctx.saved_tensors
        return linear(dy, weight.t()), None, None


def frozen_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not (onednn(x, layer.weight) and frozen(layer)):
        return torch.nn.Linear.forward(layer, x)
    return FrozenLinear.apply(x, layer.weight, layer.bias)


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, dy):
        normed, rstd, weight = ctx.saved_tensors
        g = dy * weight
        return (g - normed * (g * normed).mean(-1, keepdim=True)).mul_(rstd), None, None


def fused_norm(norm, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or norm.weight.dtype != torch.float32:
        return type(norm).forward(norm, x)
    return RMSNorm.apply(x, norm.weight, norm.variance_epsilon)


LLAMA_NORM = LlamaRMSNorm.forward.__code__


def llama_norm(module) -> bool:
    """Whether a module is an RMSNorm with the Llama forward to the byte, and a frozen weight."""
    code = getattr(type(module).forward, "__code__", None)
    same = code is not None and (code.co_code, code.co_names, code.co_consts) == (
        LLAMA_NORM.co_code, LLAMA_NORM.co_names, LLAMA_NORM.co_consts)
    return same and hasattr(module, "variance_epsilon") and not module.weight.requires_grad


def install(model, kernels: str) -> int:
    """Switch every covered LoRA layer and RMSNorm of a PEFT model to its fused form, and every
    frozen nn.Linear (the head, the LoRA layers' bases) to oneDNN's matmul; the number switched."""
    if kernels != "fused":
        return 0
    switched = 0
    for module in model.modules():
        if covered(module):
            module.forward = types.MethodType(fused_forward, module)
        elif llama_norm(module):
            module.forward = types.MethodType(fused_norm, module)
        elif type(module) is torch.nn.Linear and frozen(module):
            module.forward = types.MethodType(frozen_forward, module)
        else:
            continue
        switched += 1
    return switched

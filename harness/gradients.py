"""Full-gradient estimation for gradient-based inits (LoRA-GA, LoRA-One).

On the plain model in train mode, over batches of the first training examples, with the training
loss. Only target weights require gradients, and each layer's gradient leaves the device as soon
as backward has produced it (a post-accumulate hook adds it to an fp32 sum in host memory and frees
it), so device memory never holds more than one layer's full gradient."""

import torch

from harness.loss import loss_of


def estimate_gradients(model, batches, targets: list[str]) -> dict[str, torch.Tensor]:
    """{module name: mean over batches of dLoss/dW}, fp32, in host memory."""
    saved = {p: p.requires_grad for p in model.parameters()}
    checkpointing = getattr(model, "is_activation_checkpointing", False)
    if checkpointing:  # reentrant checkpointing yields no weight gradients
        model.activation_checkpointing_disable()
    model.train()
    model.requires_grad_(False)
    sums, hooks = {}, []

    def offload(name):
        def hook(param):
            grad = param.grad.detach().to("cpu", torch.float32)
            if name in sums:
                sums[name] += grad
            else:
                sums[name] = grad if grad.data_ptr() != param.grad.data_ptr() else grad.clone()
            param.grad = None
        return hook

    for name in targets:
        weight = model.get_submodule(name).weight
        weight.requires_grad_(True)
        hooks.append(weight.register_post_accumulate_grad_hook(offload(name)))
    count = 0
    try:
        for batch in batches:
            loss_of(model, batch).backward()
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
        for param, flag in saved.items():
            param.requires_grad_(flag)
        if checkpointing:
            model.activation_checkpointing_enable()
    return {name: grad / count for name, grad in sums.items()}

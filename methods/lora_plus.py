"""LoRA+ (Hayou et al., ICML 2024, arXiv 2402.12354): LoRA with B's learning rate `lr_ratio` times
A's. Everything is PEFT's (`create_loraplus_optimizer`, from the authors' code): the ladder's lr is
A's; B, and any other vector parameter, trains at lr x lr_ratio. Weight decay is PEFT's
`loraplus_weight_decay`, applied to both groups. The default ratio 16 (2^4) is the commonly
recommended one; the authors find the best ratio model- and task-dependent, so the gpu grid
searches it."""

import torch
from peft.optimizers import create_loraplus_optimizer

from methods import register
from methods._base import Method


@register
class LoraPlus(Method):
    name = "lora-plus"
    description = "LoRA+: LoRA with B's learning rate lr_ratio x A's (PEFT create_loraplus_optimizer)"
    defaults = dict(lr_ratio=16.0)

    def optimizer(self, model, lr, hp, weight_decay):
        kind = torch.optim.SGD if hp["optimizer"] == "sgd" else torch.optim.AdamW
        return create_loraplus_optimizer(model, kind, lr=lr, loraplus_lr_ratio=hp["lr_ratio"],
                                         loraplus_weight_decay=weight_decay)

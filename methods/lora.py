"""LoRA (Hu et al. 2021): A kaiming-uniform, B = 0, AdamW. Everything is PEFT's."""

from methods import register
from methods._base import Method


@register
class Lora(Method):
    name = "lora"
    description = "LoRA baseline: PEFT init (A kaiming-uniform, B = 0), AdamW"

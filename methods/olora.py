"""OLoRA (Büyükakyüz 2024, "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models"):
adapters from the QR decomposition of W. Everything is PEFT's (`init_lora_weights="olora"`):
Q R = W (fp32), B = Q[:, :r], A = R[:r], W <- W - s B A, so the output at init is unchanged.
Like PiSSA it trains
against a changed base: the adapter is saved with PEFT's conversion to a rank-2r LoRA of the
original weights."""

from methods import register
from methods._base import Method


@register
class Olora(Method):
    name = "olora"
    description = "OLoRA: adapters from the QR factors of W, offset subtracted from W (PEFT)"
    mutates_base = True
    init_keys = ("rank", "alpha", "use_rslora")   # the factors, and s for W - s B A

    def init_seeded(self, hp, shapes):
        return False   # a QR draws no random numbers

    def lora_config(self, hp, targets):
        config = super().lora_config(hp, targets)
        config.init_lora_weights = "olora"
        return config

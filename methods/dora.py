"""DoRA (Liu et al., ICML 2024, arXiv 2402.09353): weight-decomposed LoRA. Everything is PEFT's
(`use_dora=True`), which computes the paper's method: W' = m·(W + s B A)/‖W + s B A‖_c with the
magnitude m (one per output row, PEFT's out×in naming) initialised to ‖W‖_c and trained, and the
norm treated as a constant in backward, the paper's memory saving (its section 4.3). LoRA's init,
so the output at init is unchanged."""

from methods import register
from methods._base import Method


@register
class Dora(Method):
    name = "dora"
    description = "DoRA: trained magnitude times the normalised LoRA-updated weight (PEFT use_dora)"

    def lora_config(self, hp, targets):
        config = super().lora_config(hp, targets)
        config.use_dora = True
        return config

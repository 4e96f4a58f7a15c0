"""PiSSA (Meng et al. 2024): adapters from the top-r singular triplets of W, base is the residual.

PEFT computes what the paper computes (`init_lora_weights="pissa_niter_K"`):
A = sqrt(S_r/s) V_r^T, B = U_r sqrt(S_r/s), W <- W - U_r S_r V_r^T. Reference recipe: alpha = r."""

from methods import register
from methods._base import Method


@register
class Pissa(Method):
    name = "pissa"
    description = "PiSSA: principal singular vectors of W as adapters, residual base (PEFT)"
    defaults = dict(alpha=8.0, niter=16)
    zero_ok = ("dropout", "niter")   # niter 0: exact SVD
    mutates_base = True
    init_keys = ("rank", "alpha", "use_rslora", "niter")

    def init_seeded(self, hp, shapes):
        return hp["niter"] > 0   # PEFT's pissa_niter_K is torch.svd_lowrank

    def worth_caching(self, hp):
        # The randomized SVD takes seconds, and on a bf16 model the entry must carry the residual
        # base weights (13 GB for Llama-2-7B); the exact SVD (niter 0) takes minutes per trial.
        return hp["niter"] == 0

    def lora_config(self, hp, targets):
        config = super().lora_config(hp, targets)
        config.init_lora_weights = f"pissa_niter_{hp['niter']}" if hp["niter"] else "pissa"
        return config

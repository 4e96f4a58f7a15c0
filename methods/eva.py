"""EVA (Paischer et al. 2024, arXiv 2410.07170): explained variance adaptation, PEFT's data-driven
init (`init_lora_weights="eva"`, `get_eva_state_dict`, `initialize_lora_eva_weights`).

A = the top principal directions of each target layer's inputs (right-singular vectors of the
centred inputs), from PEFT's incremental PCA over batches of the first eva_samples training
examples (answer tokens only, PEFT's label mask), cycled until each vector's cosine similarity
between two steps reaches tau; B = 0, so the output at init is unchanged. The ranks are then redistributed across layers by explained variance within the
same total, up to round(rho·r) per layer (rho = 1: none; a layer may get rank 0 and no adapter),
alpha scaled by new rank / r (PEFT's `adjust_scaling_factors`). This follows the paper's
algorithm; the batches are the harness's data pass (batch 1, on the plain model before adapters),
where the paper's examples use larger minibatches. Not cached (inits.cacheable): the new ranks
change the layers' shapes and the adapter config, which an init cache entry does not hold."""

from peft import EvaConfig
from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights

from harness.config import UsageError, quote
from harness.loss import loss_of
from methods import register
from methods._base import PEFT_PREFIX, Method

MAX_PASSES = 50   # PEFT cycles the batches until convergence, with no limit


def counted(forward, limit: int):
    """`forward` that raises a usage error on its call number limit + 1."""
    calls = 0

    def call(model, batch):
        nonlocal calls
        calls += 1
        if calls > limit:
            raise UsageError(f"EVA's SVD did not converge (tau) in {MAX_PASSES} passes over its examples: "
                             f"lower --set tau or raise --set eva_samples")
        return forward(model, batch)
    return call


@register
class Eva(Method):
    name = "eva"
    description = "EVA: A from the SVD of each layer's inputs on training data, ranks redistributed, B = 0 (PEFT)"
    defaults = dict(rho=2.0, tau=0.99, eva_samples=16)
    data_samples = "eva_samples"

    def resolve(self, overrides):
        hp = super().resolve(overrides)
        if hp["rho"] < 1:
            raise UsageError(f"rho must be >= 1 (the largest rank of a layer is rho x rank), got {quote(hp['rho'])}: "
                             f"use 1 for no redistribution")
        if hp["tau"] >= 1:
            raise UsageError(f"tau must be below 1 (a cosine similarity between SVD steps, which may never reach "
                             f"1), got {quote(hp['tau'])}: use 0.99")
        return hp

    def worth_caching(self, hp):
        return False

    def lora_config(self, hp, targets):
        config = super().lora_config(hp, targets)
        config.init_lora_weights = "eva"
        config.eva_config = EvaConfig(rho=hp["rho"], tau=hp["tau"])
        return config

    def data_pass(self, model, batches, targets, hp):
        """{layer name: its EVA factor A} from PEFT's incremental SVD of the layer inputs."""
        need = round(hp["rank"] * hp["rho"])
        if max(int((b["labels"] != -100).sum()) for b in batches) < need:   # PEFT would cycle forever
            raise UsageError(f"EVA needs an example with at least rho x rank = {need} answer tokens among "
                             f"its first {len(batches)}: raise --set eva_samples or lower rank or rho")
        return get_eva_state_dict(model, batches, peft_config=self.lora_config(hp, targets),
                                  forward_fn=counted(loss_of, MAX_PASSES * len(batches) + 1),
                                  show_progress_bar=False)

    def init_adapters(self, model, hp, found):
        initialize_lora_eva_weights(model, eva_state_dict={PEFT_PREFIX + k: v for k, v in found.items()})

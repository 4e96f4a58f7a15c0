"""What a method is: LoRA hyperparameters, an adapter init, and an optimizer.

The trial calls, in order: `data_pass` (only for a method that names `data_samples`: on the plain
model, over the first data_samples training examples at batch 1; by default the averaged full
gradients), `lora_config` (PEFT adapters on the target layers), `init_adapters` (with what the
data pass returned, else None), then `optimizer`. A method whose init changes the base weights
sets `mutates_base`: its adapter is saved with PEFT's conversion to a rank-2r LoRA of the
original base."""

import math

import torch
from peft import LoraConfig

LORA_DEFAULTS = dict(rank=8, alpha=16.0, use_rslora=False, dropout=0.0, optimizer="adamw")


class Method:
    name = ""
    description = ""
    defaults: dict = {}
    choices: dict = dict(optimizer=("adamw", "sgd"))   # allowed values of the string hyperparameters
    zero_ok = ("dropout",)          # numeric hyperparameters that may be 0
    below_one = ("dropout",)        # numeric hyperparameters that are probabilities
    ranks_per_layer = 1             # rank x this must fit a layer's smaller side
    data_samples = ""               # the hyperparameter counting the data pass's examples; "": no pass
    mutates_base = False
    init_keys: tuple | None = None  # the hyperparameters the init depends on; None: all (safe)

    def init_seeded(self, hp: dict, shapes: list[tuple[int, int]]) -> bool:
        """Whether the init's result depends on the random numbers it draws, for these (m, n)
        target shapes; then the init cache keys it by seed. LoRA's kaiming A does."""
        return True

    def resolve(self, overrides: dict) -> dict:
        """Defaults with overrides applied; unknown keys and bad values are usage errors."""
        from harness.config import UsageError, positive, quote
        allowed = {**LORA_DEFAULTS, **self.defaults}
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise UsageError(f"unknown hyperparameter {quote(unknown[0])} for method {self.name}: "
                             f"use one of {', '.join(sorted(allowed))}")
        hp = {**allowed, **overrides}
        for key, value in hp.items():
            kind = type(allowed[key])
            if kind is str:
                if value not in self.choices.get(key, ()):
                    raise UsageError(f"{key} must be one of {', '.join(self.choices[key])}, got {quote(value)}")
            elif kind is bool or (kind is int and (isinstance(value, bool) or not isinstance(value, int))):
                if type(value) is not kind:   # bool is a subclass of int: rank=True is no rank
                    raise UsageError(f"{key} must be {'true or false' if kind is bool else 'a whole number'}, "
                                     f"got {quote(value)}")
            else:
                positive(key, value, allow_zero=key in self.zero_ok)
                if key in self.below_one and value >= 1:
                    raise UsageError(f"{key} must be below 1 (a probability), got {quote(value)}")
        return hp

    def worth_caching(self, hp: dict) -> bool:
        """Whether a sweep should store this init for its other trials (harness/inits.py); False
        also where the cache cannot hold it (it stores factors of PEFT's shapes and base weights)."""
        return True

    def data_pass(self, model, batches: list, targets: list[str], hp: dict):
        """What `init_adapters` gets, read from the plain model: by default {layer: the mean full
        gradient over the batches} (harness/gradients.py)."""
        from harness.gradients import estimate_gradients
        return estimate_gradients(model, batches, targets)

    def inert(self, hp: dict) -> set:
        """Hyperparameters that change nothing given the others (a grid need not vary them)."""
        return set()

    def scaling(self, hp: dict) -> float:
        return hp["alpha"] / (math.sqrt(hp["rank"]) if hp["use_rslora"] else hp["rank"])

    def lora_config(self, hp: dict, targets: list[str]) -> LoraConfig:
        return LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], use_rslora=hp["use_rslora"],
                          lora_dropout=hp["dropout"], target_modules=targets, task_type="CAUSAL_LM")

    def init_adapters(self, model, hp: dict, found):
        """Change the adapters (and base weights) after PEFT built them; LoRA keeps PEFT's init."""

    def optimizer(self, model, lr: float, hp: dict, weight_decay: float) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        kind = torch.optim.SGD if hp["optimizer"] == "sgd" else torch.optim.AdamW
        return kind(params, lr=lr, weight_decay=weight_decay)


PEFT_PREFIX = "base_model.model."   # a PEFT model's name of the original model's modules


def lora_layers(model):
    """(original module name, LoRA layer) for every adapted layer of a PEFT model."""
    from peft.tuners.lora import LoraLayer
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name.removeprefix(PEFT_PREFIX), module


@torch.no_grad()
def set_factors(layer, A: torch.Tensor, B: torch.Tensor, new_weight: torch.Tensor | None = None):
    """Write init factors into a PEFT LoRA layer (adapter 'default'), keeping the adapter dtype."""
    layer.lora_A["default"].weight.copy_(A)
    layer.lora_B["default"].weight.copy_(B)
    if new_weight is not None:
        layer.get_base_layer().weight.copy_(new_weight)


def randomized(shape: tuple[int, int], q: int) -> bool:
    """Whether `top_svd` of a matrix of this shape draws a random sketch (else: the exact SVD)."""
    return 2 * q <= min(shape)


def top_svd(matrix: torch.Tensor, q: int, niter: int):
    """(U, S, V) of the top-q singular triplets, as torch.svd_lowrank(matrix, q, niter) computes.
    When q exceeds half the smaller side the randomized sketch is nearly full rank and costs more
    than the exact SVD (LoRA-One's q=512 on a 576x1536 layer: 0.65 s against 0.10 s on 2 CPU
    cores), so the exact SVD is used; it returns the same top factors, without sketch error."""
    if randomized(matrix.shape, q):
        return torch.svd_lowrank(matrix, q=q, niter=niter)
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return U[:, :q], S[:q], Vh[:q].T

"""The per-sweep init cache: each adapter init is computed once per sweep, not once per trial.

An init (LoRA-GA's and LoRA-One's gradient phase and SVDs, PiSSA's SVD of every weight) depends
on the model, the examples that feed the gradients, the targets and the method's init
hyperparameters, never on the learning rate; on the seed only where it draws random numbers.
`key` holds exactly that. An entry holds every layer's factors after the init and, for a method
that changes the base weights, the new weights of the layers where `residual` of the stored
factors does not give them bit for bit (checked when the entry is written).

The cache is a folder or a bucket location (harness/storage.py), so trials on every node of a
cluster share it. Entries are written atomically (temp file beside it, then moved into place):
writers racing on one key both compute, the last move wins, and both wrote the same bytes of
tensors; a reader never sees half a file, and an entry that does not load is computed and
written again."""

import hashlib
import io
import json
import logging

import torch

from harness import storage
from harness.config import TrialConfig
from harness.model import resolve_path
from methods._base import lora_layers, set_factors

VERSION = 1   # bump when an init's math or the encoding of the gradient examples changes
log = logging.getLogger(__name__)


def cacheable(method, hp: dict) -> bool:
    """Inits worth storing: a gradient phase or an SVD of the weights (LoRA's kaiming A is free),
    unless the method says otherwise for these hyperparameters."""
    return bool(method.data_samples or method.mutates_base) and method.worth_caching(hp)


def has_dropout(model) -> bool:
    """Dropout in train mode makes the gradient phase draw random numbers."""
    rates = {k: v for k, v in model.config.to_dict().items() if "dropout" in k or "pdrop" in k}
    return (any(isinstance(v, float) and v > 0 for v in rates.values())
            or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()))


def key(cfg: TrialConfig, method, model, targets: list[str], examples: list) -> dict:
    """What the init depends on, and nothing else; `examples` are the encoded training examples,
    whose first data_samples (grad_samples) feed the data pass (the gradient phase)."""
    hp = cfg.hparams
    weight = model.get_submodule(targets[0]).weight
    fields = dict(version=VERSION, model=resolve_path(cfg.model), dtype=str(weight.dtype),
                  device=weight.device.type, targets=targets, method=method.name,
                  hparams={k: hp[k] for k in sorted(method.init_keys or hp)})
    if method.data_samples:   # the first data_samples examples of the training split
        used = json.dumps(examples[:hp[method.data_samples]]).encode()   # source, format, split, tokens
        fields["data"] = hashlib.sha256(used).hexdigest()
    shapes = [tuple(model.get_submodule(t).weight.shape) for t in targets]
    if method.init_seeded(hp, shapes) or (method.data_samples and has_dropout(model)):
        fields["seed"] = cfg.seed
    return fields


def path(folder: str, fields: dict) -> str:
    """The entry's location in the cache `folder` (a folder or bucket location)."""
    text = json.dumps(fields, sort_keys=True)
    return storage.join(str(folder), f"{fields['method']}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt")


def originals(model, targets: list[str]) -> dict:
    """Host copies of the target weights, taken before an init that changes them."""
    return {t: model.get_submodule(t).weight.detach().to("cpu", copy=True) for t in targets}


def residual(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """W - s B A in fp32, in W's dtype: LoRA-GA's new weight, and PiSSA's when s B A rounds alike."""
    return (weight.float() - scaling * (B @ A)).to(weight.dtype)


@torch.no_grad()
def capture(model, before: dict | None) -> dict:
    """The post-init state of a PEFT model: the factors, and the new base weights that `residual`
    does not rebuild exactly from the original ones (`before`; None: the base is unchanged)."""
    entry = dict(A={}, B={}, weights={})
    for name, layer in lora_layers(model):
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        entry["A"][name], entry["B"][name] = A.cpu().clone(), B.cpu().clone()
        if before is not None:
            base = layer.get_base_layer().weight
            original = before[name].to(base.device)
            if not torch.equal(residual(original, A, B, layer.scaling["default"]), base):
                entry["weights"][name] = base.cpu().clone()
    return entry


@torch.no_grad()
def restore(model, entry: dict, mutates_base: bool):
    """Write a stored init into a PEFT model built on the original base."""
    for name, layer in lora_layers(model):
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A_new, B_new = entry["A"][name].to(A.device), entry["B"][name].to(B.device)
        new_weight = None
        if mutates_base:
            base = layer.get_base_layer().weight
            new_weight = (entry["weights"][name].to(base.device) if name in entry["weights"]
                          else residual(base, A_new, B_new, layer.scaling["default"]))
        set_factors(layer, A_new, B_new, new_weight)


def load(folder: str, fields: dict) -> dict | None:
    """The stored entry of a key, or None when there is none or it is unreadable."""
    file = path(folder, fields)
    if not storage.exists(file):
        return None
    try:
        entry = torch.load(io.BytesIO(storage.read_bytes(file)), map_location="cpu", weights_only=True)
        if entry["key"] != json.dumps(fields, sort_keys=True):
            raise ValueError("the entry holds another key")
        if set(entry["A"]) != set(entry["B"]) or not set(entry["weights"]) <= set(entry["A"]):
            raise ValueError("the entry's layers do not match")
        return entry
    except Exception as err:   # truncated, overwritten, or not a cache entry: compute it again
        log.warning("ignoring unreadable init cache entry %s (%s); recomputing", file, err)
        return None


def save(folder: str, fields: dict, entry: dict):
    """Write an entry atomically: readers see the old file, or none, or the whole new one."""
    with storage.atomic_writer(path(folder, fields)) as f:
        torch.save({**entry, "key": json.dumps(fields, sort_keys=True)}, f)

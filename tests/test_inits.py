"""The per-sweep init cache on the tiny model: a loaded init trains exactly like a computed one,
keys hold what the init depends on, bad entries are recomputed, racing writers leave one entry."""

import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import methods
from harness import inits
from harness.model import load, target_modules
from harness.train import add_adapters, prepare, run_trial

TIMINGS = ("tokens_per_s", "mfu", "peak_mem_mb", "train_seconds")   # wall-clock and memory samples differ run to run


def cached_trial(smoke, method, lr, out, cache, **fields):
    return run_trial(smoke(method, lr, steps=8, out=str(out), init_cache=str(cache), **fields))


@pytest.mark.parametrize("method,lr,hparams", [("lora-ga", 3e-3, {}), ("lora-one", 2e-2, {}),
                                               ("pissa", 2e-2, {"niter": 0})])
def test_loaded_init_trains_bit_identically(smoke, tmp_path, method, lr, hparams):
    cache = tmp_path / "inits"
    computed = cached_trial(smoke, method, lr, tmp_path / "computed", cache, hparams=hparams)
    loaded = cached_trial(smoke, method, lr, tmp_path / "loaded", cache, hparams=hparams)
    assert computed["init_cached"] == 0 and loaded["init_cached"] == 1
    if methods.get(method).data_samples:
        assert computed["grad_seconds"] > 0
    assert "grad_seconds" not in loaded and "init_save_seconds" not in loaded   # no gradient phase, no write
    assert len(list(cache.glob("*.pt"))) == 1

    def history(out):
        saved = json.loads(Path(out, "metrics.json").read_text())["history"]
        return [{k: v for k, v in point.items() if k not in TIMINGS} for point in saved]
    assert history(tmp_path / "computed") == history(tmp_path / "loaded")
    first = load_file(tmp_path / "computed" / "adapter" / "adapter_model.safetensors")
    second = load_file(tmp_path / "loaded" / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (Path(tmp_path / "computed" / "adapter" / "adapter_config.json").read_text()
            == Path(tmp_path / "loaded" / "adapter" / "adapter_config.json").read_text())


def test_cache_changes_nothing_but_the_time(smoke, tmp_path):
    """A trial without a cache trains exactly as one that filled it."""
    plain = cached_trial(smoke, "lora-ga", 3e-3, tmp_path / "plain", "")
    filled = cached_trial(smoke, "lora-ga", 3e-3, tmp_path / "filled", tmp_path / "inits")
    assert plain["init_cached"] == filled["init_cached"] == 0
    assert (plain["val_loss"], plain["train_loss"]) == (filled["val_loss"], filled["train_loss"])


def init_state(cfg):
    """(post-init state dict, info) of the PEFT model of a resolved config."""
    model, tok, train_ex, _ = prepare(cfg, torch.device("cpu"))
    model, info = add_adapters(cfg, model, train_ex, tok.pad_token_id, torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}, info


def same_state(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("method,dtype,hparams,weights_stored", [
    ("lora-ga", "float32", {}, False),                  # W - s B A recomputed bit for bit
    ("pissa", "float32", {"niter": 0}, False),          # alpha = r: s = 1, PEFT's (s B) A = s (B A)
    ("pissa", "float32", {"niter": 0, "alpha": 12.0}, True),   # s = 1.5: PEFT rounds (s B) A otherwise
    ("pissa", "bfloat16", {"niter": 0}, True),          # PEFT rounds the factors to bf16 after W
])
def test_base_weights_stored_only_where_not_rebuilt_exactly(smoke, tmp_path, method, dtype, hparams,
                                                            weights_stored):
    cfg = smoke(method, init_cache=str(tmp_path / "inits"), dtype=dtype, hparams=hparams)
    computed, info = init_state(cfg)
    loaded, again = init_state(cfg)
    assert (info["init_cached"], again["init_cached"]) == (0, 1)
    assert same_state(computed, loaded)
    entry = torch.load(next((tmp_path / "inits").glob("*.pt")), weights_only=True)
    assert bool(entry["weights"]) == weights_stored


def test_pissa_caches_only_its_exact_svd(smoke, tmp_path):
    """Its randomized SVD takes seconds; an entry could carry a whole bf16 model's residual weights."""
    _, info = init_state(smoke("pissa", init_cache=str(tmp_path / "inits")))
    assert info["init_cached"] == 0 and not (tmp_path / "inits").exists()


def key_of(smoke, method, model, **fields):
    cfg = smoke(method, **fields)
    _, _, examples, _ = prepare(cfg, torch.device("cpu"))
    return inits.key(cfg, methods.get(method), model, target_modules(model, cfg.targets), examples)


def test_key_holds_the_init_inputs_only(smoke):
    model, _ = load("tiny", torch.device("cpu"), torch.float32)
    ga = key_of(smoke, "lora-ga", model)
    assert key_of(smoke, "lora-ga", model, lr=1e-4) == ga
    assert key_of(smoke, "lora-ga", model, weight_decay=0.1, steps=3) == ga
    assert key_of(smoke, "lora-ga", model, train_size=256) == ga   # the first 8 examples stay the same
    for change in (dict(hparams={"rank": 4}), dict(hparams={"gamma": 8.0}),
                   dict(hparams={"grad_samples": 4}), dict(hparams={"alpha": 8.0}),
                   dict(max_length=64), dict(targets="q_proj,v_proj"),
                   dict(seed=1)):   # LoRA-GA's q = 32 sketch of a 64x64 layer is randomized
        assert inits.path("c", key_of(smoke, "lora-ga", model, **change)) != inits.path("c", ga), change
    one = key_of(smoke, "lora-one", model)
    # LoRA-One's factors do not depend on the scaling or the optimizer; its SVDs are exact here.
    for change in (dict(hparams={"alpha": 4.0, "reg": 1e-3, "precondition": False}), dict(seed=1),
                   dict(lr=0.5)):
        assert key_of(smoke, "lora-one", model, **change) == one
    assert key_of(smoke, "lora-one", model, hparams={"gamma": 64.0}) != one
    assert "seed" in key_of(smoke, "pissa", model)                       # svd_lowrank
    assert "seed" not in key_of(smoke, "pissa", model, hparams={"niter": 0})   # exact SVD
    assert "data" not in key_of(smoke, "pissa", model)                   # no gradient phase
    assert key_of(smoke, "pissa", model, max_length=64) == key_of(smoke, "pissa", model)


def test_bad_entries_are_recomputed(smoke, tmp_path):
    cache = tmp_path / "inits"
    cfg = smoke("lora-one", init_cache=str(cache))
    computed, _ = init_state(cfg)
    entry = next(cache.glob("*.pt"))
    # A writer that died mid-write leaves a temp file beside the entry: never read.
    (cache / f".{entry.name}.dead.tmp").write_bytes(entry.read_bytes()[:1000])
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])   # truncated
    again, info = init_state(cfg)
    assert info["init_cached"] == 0 and "grad_seconds" in info
    assert same_state(computed, again)
    _, info = init_state(cfg)   # rewritten whole
    assert info["init_cached"] == 1
    entry.write_bytes(b"not a checkpoint")
    assert init_state(cfg)[1]["init_cached"] == 0


def digest(entry: dict) -> str:
    """A hash of an entry's factors, small enough for a queue between processes."""
    sha = hashlib.sha256()
    for part in ("A", "B"):
        for name in sorted(entry[part]):
            sha.update(name.encode() + entry[part][name].numpy().tobytes())
    return sha.hexdigest()


def compute_and_store(barrier, data_dir, cache, results):
    """One spawned process: compute the same key's init as the other, at the same moment, then
    write it again and again to race the other's renames."""
    from harness.config import TrialConfig
    from harness.tasks import resolve
    torch.set_num_threads(1)
    cfg = resolve(TrialConfig(method="lora-ga", lr=1e-2, preset="smoke", data_dir=data_dir, init_cache=cache))
    model, tok, train_ex, _ = prepare(cfg, torch.device("cpu"))
    fields = inits.key(cfg, methods.get("lora-ga"), model, target_modules(model, cfg.targets), train_ex)
    barrier.wait()
    model, info = add_adapters(cfg, model, train_ex, tok.pad_token_id, torch.device("cpu"))
    entry = inits.capture(model, None)
    for _ in range(20):
        inits.save(cache, fields, entry)
    results.put((info["init_cached"], digest(entry)))


def test_racing_writers_leave_one_valid_entry(data_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results, cache = ctx.Barrier(2), ctx.Queue(), tmp_path / "inits"
    workers = [ctx.Process(target=compute_and_store, args=(barrier, data_dir, str(cache), results))
               for _ in range(2)]
    for w in workers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in workers):   # a reader never sees a half-written entry
        for file in cache.glob("*.pt"):
            torch.load(file, weights_only=True)
            reads += 1
        time.sleep(0.02)
    got = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join()
        assert w.exitcode == 0
    assert reads > 0
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".pt"   # no temp file left behind
    assert {d for _, d in got} == {digest(torch.load(entries[0], weights_only=True))}

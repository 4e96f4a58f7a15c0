"""The training loss: token-weighted mean cross-entropy over the supervised positions.

Labels are -100 on the prompt and the padding, so most positions of a batch need no logits; the
vocabulary projection is the largest single matmul of a small model (SmolLM2: 49,152 x 576) and
its fp32 logits the largest tensor of a step. Where the LM head is a plain linear layer after the
decoder, it runs on the supervised positions' hidden states only; the value is the one
`model(**batch).loss` computes. Other heads (soft-capped, scaled logits) take the full path."""

import torch
import torch.nn.functional as F

# Causal LMs whose logits are exactly lm_head(decoder(x).last_hidden_state).
PLAIN_HEADS = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"}


def plain_head(model) -> bool:
    return getattr(model.config, "model_type", None) in PLAIN_HEADS


def full_loss(model, batch: dict) -> torch.Tensor:
    """The model's own loss: logits at every position (transformers' ForCausalLMLoss)."""
    return model(**batch).loss


def selective_loss(model, batch: dict) -> torch.Tensor:
    """The same loss with the LM head applied to the supervised positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps it
    hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def loss_of(model, batch: dict, selective: bool = True) -> torch.Tensor:
    """Masked token cross-entropy of a batch (moved to the model's device)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    if selective and plain_head(model):
        return selective_loss(model, batch)
    return full_loss(model, batch)

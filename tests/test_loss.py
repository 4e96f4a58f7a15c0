"""The selective-logits loss (harness.loss) against the model's own full-vocabulary loss."""

import torch
from peft import LoraConfig, get_peft_model

from harness import data
from harness.loss import full_loss, loss_of, plain_head, selective_loss
from harness.train import prepare


def adapted(cfg):
    """The tiny Llama with LoRA adapters whose B is not zero, so the adapters change the loss."""
    model, tok, train_ex, _ = prepare(cfg, torch.device("cpu"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return model, tok, train_ex


def test_selective_loss_equals_the_full_loss_and_its_gradients(smoke):
    model, tok, train_ex = adapted(smoke())
    assert plain_head(model)
    batch = data.collate(train_ex[:6], tok.pad_token_id)   # rows of different lengths: padding
    assert (batch["attention_mask"] == 0).any()
    losses, grads = [], []
    for fn in (full_loss, selective_loss):
        model.zero_grad()
        loss = fn(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_an_unknown_head_takes_the_full_path(smoke, monkeypatch):
    model, tok, train_ex = adapted(smoke())
    batch = data.collate(train_ex[:2], tok.pad_token_id)
    monkeypatch.setattr(model.config, "model_type", "gemma2")   # soft-capped logits: not a plain head
    calls = []
    monkeypatch.setattr("harness.loss.selective_loss", lambda *a: calls.append(a))
    loss = loss_of(model, batch)
    assert not calls and torch.isclose(loss, full_loss(model, batch))

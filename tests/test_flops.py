"""Model FLOPs (harness.flops) against what torch counts for a selective-loss training step."""

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from harness import data
from harness.flops import Counter, measured
from harness.loss import loss_of
from harness.train import prepare


def test_model_flops_match_the_counted_matmuls_of_a_training_step(smoke):
    model, tok, train_ex, _ = prepare(smoke(), torch.device("cpu"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ex = [e for e in train_ex if len(e[0]) == len(train_ex[0][0])][:1] * 4   # no padding
    batch = data.collate(ex, tok.pad_token_id)
    with FlopCounterMode(display=False) as counter:
        loss_of(model, batch).backward()
    # torch counts full (not causal) attention: a few percent here, on short rows
    assert abs(Counter(model).batch(batch) / counter.get_total_flops() - 1) < 0.05


def test_padding_and_prompt_positions_are_not_model_flops(smoke):
    model, tok, train_ex, _ = prepare(smoke(), torch.device("cpu"))
    counter = Counter(model)
    batch = data.collate(train_ex[:4], tok.pad_token_id)
    padded = {**batch, "labels": torch.cat([batch["labels"], torch.full((4, 10), -100)], 1),
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(4, 10, dtype=torch.long)], 1)}
    assert counter.batch(padded) == counter.batch(batch)


def test_measured_peak_is_a_plausible_rate():
    assert 1e8 < measured(torch.device("cpu"), torch.float32, size=256, seconds=0.05) < 1e14

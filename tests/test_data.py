"""Training batches (harness.data): length-aware bucketing against plain shuffling."""

import itertools

from harness import data


def examples(n=203):
    """Rows whose ids encode their index and whose lengths vary from 1 to 40."""
    return [([i] * (1 + i * 7 % 40), [i] * (1 + i * 7 % 40)) for i in range(n)]


def rows_of(batch) -> list[int]:
    return [int(row[0]) for row in batch["input_ids"]]


def epoch(batches, n, size):
    return [rows_of(b) for b in itertools.islice(batches, -(-n // size))]


def test_bucketing_yields_every_example_once_per_epoch():
    ex = examples()
    batches = data.bucketed(ex, 4, pad_id=-1, seed=3)
    for _ in range(3):
        seen = [i for b in epoch(batches, len(ex), 4) for i in b]
        assert sorted(seen) == list(range(len(ex)))


def test_bucketing_is_deterministic_per_seed():
    ex = examples()
    first = epoch(data.bucketed(ex, 4, -1, seed=3), len(ex), 4)
    assert first == epoch(data.bucketed(ex, 4, -1, seed=3), len(ex), 4)
    assert first != epoch(data.bucketed(ex, 4, -1, seed=4), len(ex), 4)


def test_bucketing_pads_less_than_shuffling():
    ex = examples()
    size = 4
    padding = {}
    for name, batches in (("bucket", data.bucketed(ex, size, -1, 0)), ("shuffle", data.shuffled(ex, size, -1, 0))):
        picked = list(itertools.islice(batches, len(ex) // size))
        padding[name] = sum(int((b["attention_mask"] == 0).sum()) for b in picked)
    assert padding["bucket"] < padding["shuffle"] / 4

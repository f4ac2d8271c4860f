"""Length-grouped batches (stage 3's default): every row once per epoch, far less padding, and an
order that depends only on the seed and the epoch (so a resumed run sees the same batches)."""
from __future__ import annotations

import numpy as np

from training.data import LengthGroupedSampler


def _lengths(n: int = 203, seed: int = 0) -> np.ndarray:
    """Mostly short rows and a tail of long ones, as stage 3's conversations are (20-110 tokens)."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.8, rng.integers(18, 45, n), rng.integers(60, 110, n))


def _batches(order: list[int], batch: int) -> list[list[int]]:
    return [order[k : k + batch] for k in range(0, len(order), batch)]


def _padding(lengths: np.ndarray, batches) -> float:
    """The share of the tokens the model runs on that are padding (each batch is padded to its longest row)."""
    run = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - sum(lengths[b].sum() for b in batches) / run


def test_each_epoch_is_a_permutation_with_much_less_padding_and_the_short_batch_last():
    lengths, batch = _lengths(), 16
    sampler = LengthGroupedSampler(lengths, batch, seed=3)
    rng = np.random.default_rng(0)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths)))
        grouped = _batches(order, batch)
        assert [len(b) for b in grouped[:-1]] == [batch] * (len(grouped) - 1) and len(grouped[-1]) == len(lengths) % batch
        random = _batches(rng.permutation(len(lengths)).tolist(), batch)
        assert _padding(lengths, grouped) < 0.5 * _padding(lengths, random), epoch


def test_the_order_depends_only_on_the_seed_and_the_epoch():
    lengths = _lengths()

    def order(seed: int, epoch: int) -> list[int]:
        sampler = LengthGroupedSampler(lengths, 16, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 2) == order(3, 2)
    assert order(3, 2) != order(3, 1)
    assert order(3, 2) != order(4, 2)
    # the batches come in a shuffled order: not longest first, as a sorted sampler would give
    firsts = [_lengths()[order(3, e)[0]] for e in range(6)]
    assert len(set(firsts)) > 1

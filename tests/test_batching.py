"""Duration (dynamic) batches for fine-tuning and the step-counted stages (TAPT,
P-TAPT phases 1 and 2): the authors' greedy batches of at least a budget of audio
from length buckets (FT-w2v2-ser ``pretrain/dataloader.py:274-314``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import ReproducibleRandomSampler

from speechbrain_ptapt.data.dataio import DurationBatchSampler, duration_batch_sampler
from speechbrain_ptapt.stages.vft import train_loader_options


def _dataset(durations):
    return DynamicItemDataset({f"u{i}": {"duration": float(d)} for i, d in enumerate(durations)})


def _hparams(dynamic: bool) -> dict:
    return {
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "dynamic_batching": dynamic,
        "dynamic_batch_seconds": 12.0,
        "dynamic_batch_buckets": 4,
        "max_train_seconds": 5.0,
        "run_seed": 7,
    }


def _iemocap_like(n: int = 5500, seed: int = 0) -> np.ndarray:
    """Durations like IEMOCAP's (0.6-30 s, mean about 4.5 s, 5 % over 10 s)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=1.33, sigma=0.6, size=n), 0.6, 30.0)


def _check_greedy(batches, capped, budget):
    """Each batch reached the budget with its last utterance and not before."""
    for batch in batches:
        assert sum(capped[i] for i in batch) >= budget - 1e-9
        assert sum(capped[i] for i in batch[:-1]) < budget


def test_fixed_batches_by_default():
    """batch_size random utterances: SpeechBrain's ReproducibleRandomSampler seeded by
    run_seed, a new permutation every epoch."""
    dataset = _dataset([1.0] * 8)
    options = train_loader_options(_hparams(False), dataset)
    sampler = options.pop("sampler")
    assert isinstance(sampler, ReproducibleRandomSampler) and sampler.seed == 7
    generator = options.pop("generator")
    assert isinstance(generator, torch.Generator)  # starting an epoch draws no global numbers
    assert options == {"batch_size": 4, "num_workers": 0}
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert sorted(first) == list(range(8)) and list(sampler) != first


def test_duration_batches_hold_at_least_the_budget_and_drop_only_the_last_short_one():
    durations = [1.0, 1.2, 2.0, 2.5, 3.0, 4.0, 7.0, 9.0, 11.0, 1.5, 2.2, 3.3]
    capped = [min(d, 5.0) for d in durations]  # crops of at most max_train_seconds count
    options = train_loader_options(_hparams(True), _dataset(durations))
    sampler = options["batch_sampler"]
    assert isinstance(sampler, DurationBatchSampler) and "batch_size" not in options
    assert "sampler" not in options and "shuffle" not in options
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2  # 35.7 s: two full batches
        _check_greedy(batches, capped, 12.0)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))
        left = sum(capped) - sum(capped[i] for i in flat)
        assert 0 < left < 12.0  # only the short last batch is left out


def test_duration_batches_are_reproducible_per_epoch():
    dataset = _dataset([1.0 + 0.3 * i for i in range(40)])

    def epoch_batches(epoch):
        sampler = train_loader_options(_hparams(True), dataset)["batch_sampler"]
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(3) == epoch_batches(3)
    assert epoch_batches(3) != epoch_batches(4)


def test_a_pass_shorter_than_the_budget_is_one_batch_of_all():
    sampler = DurationBatchSampler([1.0, 2.0, 0.5], batch_seconds=250.0)
    assert sorted(i for b in sampler for i in b) == [0, 1, 2] and len(sampler) == 1


def test_buckets_and_walk_follow_the_authors_sampler():
    durations = np.minimum(_iemocap_like(5531, seed=1), 10.0)
    sampler = DurationBatchSampler(durations, batch_seconds=250.0, seed=5)
    # 50 buckets of N // 50 sorted lengths, plus one of the N % 50 longest
    assert [len(b) for b in sampler.buckets] == [110] * 50 + [31]
    bucket_of = np.empty(len(durations), dtype=int)
    for k, bucket in enumerate(sampler.buckets):
        bucket_of[bucket] = k
    for shorter, longer in zip(sampler.buckets, sampler.buckets[1:]):
        assert durations[shorter].max() <= durations[longer].min()
    batches = sampler.epoch_batches(2)
    _check_greedy(batches, durations, 250.0)
    # batches walk the buckets in ascending order: each spans neighbouring buckets
    # and only the walk's short tail is left over
    for batch in batches:
        spanned = np.unique(bucket_of[batch])
        assert np.array_equal(spanned, np.arange(spanned[0], spanned[-1] + 1))
    left = set(range(len(durations))) - {i for b in batches for i in b}
    assert durations[list(left)].sum() < 250.0
    assert set(bucket_of[list(left)]) <= {49, 50}  # the tail of the longest buckets
    order = [bucket_of[b].min() for b in batches]
    assert order != sorted(order)  # the batches themselves are shuffled


@pytest.mark.parametrize("budget", [33.0, 250.0])
def test_batches_hold_their_budget_on_an_iemocap_like_mix(budget):
    """A "250 s" batch holds about 250 s (SpeechBrain's DynamicBatchSampler without
    bucket boundaries gave ~116 s and 47 % padding)."""
    durations = _iemocap_like()
    capped = np.minimum(durations, 10.0)
    sampler = duration_batch_sampler(_dataset(durations), budget, 10.0, num_buckets=50, seed=3)
    sampler.set_epoch(1)
    batches = [list(map(int, b)) for b in sampler]
    seconds = np.array([capped[b].sum() for b in batches])
    assert abs(seconds.mean() / budget - 1) <= 0.10
    padded = sum(capped[b].max() * len(b) for b in batches)
    assert 1 - seconds.sum() / padded <= 0.10
    covered = sum(len(b) for b in batches)
    assert covered >= len(durations) - budget / capped.min()  # only a short tail dropped

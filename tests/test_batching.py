"""Duration (dynamic) batches for fine-tuning and P-TAPT phase 2."""

from __future__ import annotations

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler

from speechbrain_ptapt.vft import train_loader_options


def _dataset(durations):
    return DynamicItemDataset({f"u{i}": {"duration": d} for i, d in enumerate(durations)})


def _hparams(dynamic: bool) -> dict:
    return {
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "dynamic_batching": dynamic,
        "dynamic_batch_seconds": 12.0,
        "dynamic_batch_buckets": 4,
        "max_train_seconds": 5.0,
        "run_seed": 7,
    }


def test_fixed_batches_by_default():
    assert train_loader_options(_hparams(False), _dataset([1.0] * 8)) == {
        "batch_size": 4,
        "shuffle": True,
        "num_workers": 0,
    }


def test_duration_batches_cover_every_utterance_once_within_the_budget():
    durations = [1.0, 1.2, 2.0, 2.5, 3.0, 4.0, 7.0, 9.0, 11.0, 1.5, 2.2, 3.3]
    dataset = _dataset(durations)
    options = train_loader_options(_hparams(True), dataset)
    sampler = options["batch_sampler"]
    assert isinstance(sampler, DynamicBatchSampler) and "batch_size" not in options
    sampler.set_epoch(1)
    batches = [list(map(int, b)) for b in sampler]
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(durations)))
    for batch in batches:
        # crops of at most max_train_seconds count toward the budget
        assert sum(min(durations[i], 5.0) for i in batch) <= 12.0 + 1e-9


def test_duration_batches_are_reproducible_per_epoch():
    dataset = _dataset([1.0 + 0.3 * i for i in range(20)])

    def epoch_batches(epoch):
        sampler = train_loader_options(_hparams(True), dataset)["batch_sampler"]
        sampler.set_epoch(epoch)
        return [list(map(int, b)) for b in sampler]

    assert epoch_batches(3) == epoch_batches(3)

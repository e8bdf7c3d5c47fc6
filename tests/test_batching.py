"""Duration (dynamic) batches for fine-tuning and the step-counted stages (TAPT,
P-TAPT phases 1 and 2)."""

from __future__ import annotations

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler

from speechbrain_ptapt.dataio import DurationStepBatchSampler, duration_batch_sampler
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


def test_step_stages_stream_duration_batches_across_passes_cut_into_epochs():
    durations = [0.8 + 0.37 * i for i in range(30)]  # 0.8 .. 11.5 s
    dataset = _dataset(durations)

    def stream(total, per_epoch):
        per_pass = duration_batch_sampler(dataset, 9.0, 4.0, num_buckets=4, seed=3)
        return DurationStepBatchSampler(per_pass, total, per_epoch)

    sampler = stream(25, 10)
    assert sampler.num_epochs == 3
    epochs = []
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        epochs.append([list(map(int, b)) for b in sampler])
        assert len(epochs[-1]) == len(sampler)
    assert [len(e) for e in epochs] == [10, 10, 5]
    # the epochs are consecutive slices of one stream of whole passes
    passes = [stream(1, 1).one_pass(p) for p in range(4)]
    flat_stream = [[int(i) for i in b] for one in passes for b in one]
    assert len(flat_stream) >= 25
    assert [b for e in epochs for b in e] == flat_stream[:25]
    for one in passes:  # every pass holds every utterance once, within the budget
        assert sorted(int(i) for b in one for i in b) == list(range(len(durations)))
        for batch in one:
            assert sum(min(durations[int(i)], 4.0) for i in batch) <= 9.0 + 1e-9
    assert passes[0] != passes[1]  # a new shuffle each pass
    # rebuilt from the same seed: the same batches (what a resumed stage relies on)
    again = stream(25, 10)
    again.set_epoch(2)
    assert [list(map(int, b)) for b in again] == epochs[1]
    whole = stream(25, None)
    whole.set_epoch(1)
    assert whole.num_epochs == 1 and [list(map(int, b)) for b in whole] == flat_stream[:25]

"""SpeechBrain data pipelines shared by every stage: audio (cropped for training),
emotion labels, class priors, batches by total duration."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.protocol.errors import PtaptError


class UnknownLabelError(PtaptError, ValueError):
    """A manifest holds an emotion label outside the recipe's class list."""


def random_crop(sig: torch.Tensor, max_samples: int | None) -> tuple[torch.Tensor, int]:
    """Crops ``sig`` to at most ``max_samples`` samples at a random offset.

    Returns the crop and its start offset in samples (0 when not cropped).
    """
    if max_samples is None or sig.shape[0] <= max_samples:
        return sig, 0
    start = int(torch.randint(0, sig.shape[0] - max_samples + 1, (1,)))
    return sig[start : start + max_samples], start


def first_crop(sig: torch.Tensor, max_samples: int | None) -> tuple[torch.Tensor, int]:
    """Keeps the first ``max_samples`` samples of ``sig`` (all of it when shorter or
    when ``max_samples`` is None), as the authors' fine-tuning collate does
    (FT-w2v2-ser ``downstream/Custom/dataloader.py:28-33``). Returns the crop and its
    start offset (always 0), like :func:`random_crop`; draws no random numbers."""
    if max_samples is None:
        return sig, 0
    return sig[:max_samples], 0


#: How a training utterance longer than its crop length is cut (yaml ``train_crop``).
CROPS = {"first": first_crop, "random": random_crop}


def audio_pipeline(
    sample_rate: int = 16000, max_seconds: float | None = None, crop: str = "random"
):
    """A dynamic item reading ``wav`` into ``sig``: mono, ``sample_rate`` Hz, cut to
    ``max_seconds`` when given (training), whole otherwise.

    Arguments
    ---------
    sample_rate : int
        Sampling rate the audio is converted to, in Hz.
    max_seconds : float, optional
        Longest crop in seconds; None reads whole files.
    crop : str
        A key of :data:`CROPS`: ``"random"`` (a random window each time the file is
        read) or ``"first"`` (its first ``max_seconds``).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {sorted(CROPS)}, got {crop!r}")
    cut = CROPS[crop]
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav: str) -> torch.Tensor:
        return cut(load_audio(wav, sample_rate), max_samples)[0]

    return read


def make_label_encoder(classes: Sequence[str]) -> CategoricalEncoder:
    """A CategoricalEncoder with ``classes`` in their given order (index = position)."""
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(list(classes))
    return encoder


def label_pipeline(encoder: CategoricalEncoder):
    """A dynamic item turning ``emo`` into ``emo_encoded`` (a (1,) LongTensor);
    an unknown label raises :class:`UnknownLabelError` naming it and the utterance."""
    known = list(encoder.lab2ind)

    @sb.utils.data_pipeline.takes("id", "emo")
    @sb.utils.data_pipeline.provides("emo_encoded")
    def encode(utt_id: str, emo: str) -> torch.Tensor:
        if emo not in encoder.lab2ind:
            raise UnknownLabelError(
                f"Utterance '{utt_id}' has the label '{emo}', which is not one of the "
                f"recipe's classes {known}: fix the manifest or the 'classes' list."
            )
        return torch.LongTensor([encoder.lab2ind[emo]])

    return encode


def check_labels(manifest: str | Path, classes: Sequence[str]) -> Counter:
    """Counts the labels of a manifest, failing early on one outside ``classes``."""
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    counts: Counter = Counter()
    for utt_id, entry in data.items():
        emo = entry.get("emo")
        if emo not in classes:
            raise UnknownLabelError(
                f"{manifest}: utterance '{utt_id}' has the label '{emo}', which is not one "
                f"of the recipe's classes {list(classes)}."
            )
        counts[emo] += 1
    return counts


def inverse_prior_weights(counts: Counter, classes: Sequence[str]) -> torch.Tensor:
    """Class weights proportional to the inverse class prior of a training split.

    ``w_c = N / (C * n_c)``: 1 for every class when balanced. A class absent
    from the split gets weight 0.
    """
    total = sum(counts[c] for c in classes)
    weights = [total / (len(classes) * counts[c]) if counts[c] else 0.0 for c in classes]
    return torch.tensor(weights, dtype=torch.float32)


def emotion_dataset(
    manifest: str | Path,
    encoder: CategoricalEncoder,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    sort: bool = False,
    crop: str = "random",
) -> DynamicItemDataset:
    """A DynamicItemDataset of a manifest providing ``id``, ``sig`` and ``emo_encoded``.

    Arguments
    ---------
    manifest : str or Path
        SpeechBrain JSON manifest (``wav``, ``duration``, ``emo`` per utterance).
    encoder : CategoricalEncoder
        The class list.
    sample_rate : int
        Sampling rate the audio is converted to, in Hz.
    max_seconds : float, optional
        Crops of at most this length (training); None reads whole files.
    sort : bool
        Sort by ascending duration (efficient evaluation batches).
    crop : str
        Where a longer file is cut: ``"random"`` or ``"first"`` (see :data:`CROPS`).
    """
    dataset = DynamicItemDataset.from_json(str(manifest))
    if sort:
        dataset = dataset.filtered_sorted(sort_key="duration")
    dataset.add_dynamic_item(audio_pipeline(sample_rate, max_seconds, crop))
    dataset.add_dynamic_item(label_pipeline(encoder))
    dataset.set_output_keys(["id", "sig", "emo_encoded"])
    return dataset


#: Resolution of the duration sums of :class:`DurationBatchSampler`, in seconds:
#: exact integer sums, as the authors' code sums lengths in samples.
_DURATION_UNIT_SECONDS = 1e-6


def cropped_durations(dataset: DynamicItemDataset, max_seconds: float | None) -> list[float]:
    """Duration in seconds of each utterance as trained (at most ``max_seconds``),
    in dataset order."""
    cap = math.inf if max_seconds is None else float(max_seconds)
    return [min(float(dataset.data[i]["duration"]), cap) for i in dataset.data_ids]


class DurationBatchSampler(torch.utils.data.Sampler):
    """Batches of at least ``batch_seconds`` of audio from length buckets: the
    authors' dynamic batching (FT-w2v2-ser ``pretrain/dataloader.py:274-314``,
    ``SingleRandomBucketSampler`` with ``dynamic_batch=True``); or, with
    ``batch_size``, their bucketed batches of that many utterances
    (``dynamic_batch=False``).

    The utterances are sorted by (capped) duration once and cut into
    ``num_buckets`` buckets of ``N // num_buckets`` neighbouring lengths, plus one
    bucket of the longest ``N % num_buckets`` (``dataloader.py:290-296``). Each
    pass shuffles every bucket, keeps the buckets in ascending order and walks the
    concatenation, closing a batch as soon as its summed duration reaches
    ``batch_seconds`` (``dataloader.py:301-310``): a batch holds **at least**
    ``batch_seconds`` and less than ``batch_seconds`` plus its last utterance, and
    may span two neighbouring buckets. With ``batch_size`` each utterance counts 1
    and the order of the buckets is shuffled too (``dataloader.py:299-300``). The
    last, short batch of a pass is dropped (the authors' ``drop_last=True``,
    ``pretrain/trainer.py:305``) unless it is the pass's only batch; then the
    batches are shuffled (``dataloader.py:313``).

    SpeechBrain's :class:`~speechbrain.dataio.sampler.DynamicBatchSampler` cannot
    do this: it fills each bucket separately up to ``int(budget / upper bucket
    boundary)`` utterances (at most the budget) and never lets a batch span two
    buckets. On an IEMOCAP-like mix (5500 utterances, crops of at most 10 s) with
    boundaries at 50 quantiles, the bucket remainders become short batches (197 s
    per "250 s" batch on average) or, with ``drop_last``, a third of the data is
    never trained on; without ``bucket_boundaries`` its boundaries are spaced up
    to the budget itself, so every crop falls in its first buckets (27 utterances,
    108-116 s per "250 s" batch, 47 % padding: no length bucketing).

    An epoch is one pass. Pass ``p`` depends only on ``(seed, p)``: the sampler
    yields the batches of its current epoch (:meth:`set_epoch`, which SpeechBrain's
    Brain calls before each epoch), so a resumed stage sees the batches an
    uninterrupted one would. The number of batches of a pass by duration changes
    from pass to pass (see :func:`~speechbrain_ptapt.protocol.distributed.resize_share` for
    DDP).

    Arguments
    ---------
    durations : sequence of float
        Duration of each utterance in seconds, as trained (capped by the crop).
    batch_seconds : float, optional
        Least audio per batch, in seconds.
    num_buckets : int
        Length buckets (the authors' ``--train_bucket_size``, default 50).
    seed : int
        Seed of the shuffles.
    batch_size : int, optional
        Utterances per batch instead of ``batch_seconds`` (exactly one is given).
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_seconds: float | None = None,
        num_buckets: int = 50,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if not len(durations):
            raise ValueError("DurationBatchSampler needs at least one utterance.")
        if (batch_seconds is None) == (batch_size is None):
            raise ValueError("Give exactly one of batch_seconds and batch_size.")
        by_count = batch_size is not None
        budget = float(batch_size if by_count else batch_seconds)
        if not budget > 0 or num_buckets < 1:
            raise ValueError(
                f"need a batch budget > 0 and num_buckets >= 1; got {budget}, {num_buckets}"
            )
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_seconds = None if by_count else budget
        self.batch_size = int(batch_size) if by_count else None
        self.num_buckets = int(num_buckets)
        self.seed = int(seed)
        if by_count:
            self._units = np.ones(len(self.durations), dtype=np.int64)
            self._budget_units = self.batch_size
        else:
            self._units = np.rint(self.durations / _DURATION_UNIT_SECONDS).astype(np.int64)
            self._budget_units = max(1, int(round(budget / _DURATION_UNIT_SECONDS)))
        by_length = np.argsort(self.durations, kind="stable")
        size = len(by_length) // self.num_buckets
        self.buckets = [by_length[i * size : (i + 1) * size] for i in range(self.num_buckets)]
        if self.num_buckets * size < len(by_length):
            self.buckets.append(by_length[self.num_buckets * size :])
        self.set_epoch(0)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of pass (epoch) ``epoch``, in training order."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        buckets = self.buckets
        if self.batch_size is not None:  # the authors shuffle the buckets' order too
            buckets = [buckets[i] for i in rng.permutation(len(buckets))]
        order = np.concatenate([rng.permutation(bucket) for bucket in buckets])
        summed = np.cumsum(self._units[order])
        batches, start, before = [], 0, 0
        while start < len(order):
            # first position whose running sum reaches the budget: the batch's last
            stop = int(np.searchsorted(summed, before + self._budget_units, side="left")) + 1
            if stop > len(order) and batches:
                break  # the short last batch of the pass (kept when it is the only one)
            batches.append(order[start:stop].tolist())
            start, before = stop, int(summed[min(stop, len(order)) - 1])
        return [batches[i] for i in rng.permutation(len(batches))]

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (the pass) whose batches the sampler yields."""
        self.epoch = int(epoch)
        self.current_batches = self.epoch_batches(self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.current_batches])

    def __len__(self) -> int:
        return len(self.current_batches)


def duration_batch_sampler(
    dataset: DynamicItemDataset,
    batch_seconds: float | None,
    max_seconds: float | None = None,
    num_buckets: int = 50,
    seed: int = 42,
    batch_size: int | None = None,
) -> DurationBatchSampler:
    """The authors' bucketed batches of a dataset (:class:`DurationBatchSampler`): at
    least ``batch_seconds`` of (cropped) audio per batch, or ``batch_size`` utterances
    when ``batch_seconds`` is None, from length buckets.

    Arguments
    ---------
    dataset : DynamicItemDataset
        A dataset whose entries have ``duration`` in seconds.
    batch_seconds : float or None
        Least seconds of audio per batch (counted after cropping).
    max_seconds : float, optional
        The crop length of training utterances, in seconds (None: whole files).
    num_buckets : int
        Length buckets.
    seed : int
        Seed of the shuffles (the batches of epoch e depend on ``(seed, e)``).
    batch_size : int, optional
        Utterances per batch, when ``batch_seconds`` is None.
    """
    return DurationBatchSampler(
        cropped_durations(dataset, max_seconds),
        batch_seconds,
        num_buckets,
        seed,
        batch_size=None if batch_seconds is not None else batch_size,
    )

#!/usr/bin/env python3
"""Random fixed-size batches vs duration (dynamic) batches.

On a corpus whose durations spread like IEMOCAP's (0.6 to 30 s, mean about
4.5 s, cropped to ``--max_seconds``), prints from one run on the same machine:

- for each budget (``--batch_size`` × mean crop, and ``--budgets``, 250 s as the
  authors' TAPT and P-TAPT phase 2): batches per epoch, seconds of audio and
  utterances per batch, and the share of padded frames over a whole epoch of the
  duration batches (``speechbrain_ptapt.data.dataio.duration_batch_sampler``) and of
  random batches of as many utterances;
- at the first budget, the seconds of (valid) audio trained per second of compute
  (forward, backward and Adam step of the V-FT model) over ``--timed_batches``
  batches: the duration batches hold on average about as much audio as the fixed
  ones, so the comparison isolates padding.

    python benchmarks/bench_batching.py                 # tiny wav2vec2 (fast)
    python benchmarks/bench_batching.py --model base    # wav2vec2-base architecture
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_ptapt.data.dataio import duration_batch_sampler
from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.models.classifier import EmotionClassifier
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask

SAMPLE_RATE = 16000


def iemocap_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """Durations in seconds: log-normal, clipped to [0.6, 30] s, mean about 4.5 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=1.33, sigma=0.6, size=n), 0.6, 30.0)


def make_dataset(durations: np.ndarray) -> DynamicItemDataset:
    """Utterances of the given durations with random audio generated on the fly."""
    data = {f"u{i}": {"duration": float(d)} for i, d in enumerate(durations)}
    dataset = DynamicItemDataset(data)

    def audio(duration: float) -> torch.Tensor:
        return torch.randn(int(round(duration * SAMPLE_RATE))) * 0.1

    dataset.add_dynamic_item(audio, takes="duration", provides="sig")
    dataset.set_output_keys(["id", "sig"])
    return dataset


def padding_share(batches: list[list[int]], durations: np.ndarray) -> float:
    """Share of padded samples (equivalently frames) over all batches."""
    valid = padded = 0.0
    for batch in batches:
        lengths = durations[batch]
        valid += lengths.sum()
        padded += lengths.max() * len(batch)
    return 1.0 - valid / padded


def build_model(kind: str) -> EmotionClassifier:
    """The V-FT model on a randomly initialised tiny or base-size wav2vec2."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from speechbrain_ptapt.testing.tiny import make_tiny_wav2vec2

    folder = tempfile.mkdtemp(prefix="bench_w2v2_")
    if kind == "tiny":
        make_tiny_wav2vec2(folder)
    else:
        Wav2Vec2Model(Wav2Vec2Config(layerdrop=0.0)).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    backbone = Wav2Vec2Backbone(folder)
    return EmotionClassifier(backbone, 4, TimeMask(), ChannelMask()).train()


def throughput(model, dataset, batches, timed: int, precision: str) -> float:
    """Seconds of valid audio trained per second over the first ``timed`` batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    audio_seconds = compute_seconds = 0.0
    for i, batch_ids in enumerate(batches[: timed + 1]):
        batch = PaddedBatch([dataset[j] for j in batch_ids])
        wavs, wav_lens = batch.sig
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(wavs, wav_lens)
        loss = torch.nn.functional.cross_entropy(
            logits.float(), torch.zeros(len(batch_ids), dtype=torch.long)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i == 0:
            continue  # warm-up batch
        compute_seconds += time.perf_counter() - start
        audio_seconds += float((wav_lens * wavs.shape[1]).sum()) / SAMPLE_RATE
    return audio_seconds / compute_seconds


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of random batches of ``batch_size`` utterances."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def batch_rows(dataset, cropped: np.ndarray, budget: float, args) -> tuple[list, list]:
    """Table rows of one budget (duration batches, random ones of as many
    utterances per batch) and the duration batches of an epoch."""
    sampler = duration_batch_sampler(dataset, budget, args.max_seconds, args.num_buckets,
                                     args.seed)
    sampler.set_epoch(0)
    dynamic = [list(map(int, b)) for b in sampler]
    size = max(1, round(budget / float(cropped.mean())))
    fixed = random_batches(len(cropped), size, args.seed)
    rows = []
    for name, batches in ((f"random, {size} utterances", fixed), ("duration (dynamic)", dynamic)):
        seconds = np.array([cropped[b].sum() for b in batches])
        rows.append((f"{name}, budget {budget:.0f} s", len(batches), seconds.mean(),
                     seconds.min(), seconds.max(), np.mean([len(b) for b in batches]),
                     padding_share(batches, cropped)))
    return rows, dynamic


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=5500)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--budgets", type=float, nargs="*", default=[250.0],
                        help="further budgets (seconds per batch) for the batch table")
    parser.add_argument("--max_seconds", type=float, default=10.0, help="training crop length")
    parser.add_argument("--num_buckets", type=int, default=50)
    parser.add_argument("--timed_batches", type=int, default=20)
    parser.add_argument("--model", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    durations = iemocap_like_durations(args.utterances, args.seed)
    cropped = np.minimum(durations, args.max_seconds)
    dataset = make_dataset(cropped)
    print(f"{args.utterances} utterances, {cropped.sum() / 3600:.2f} h, crops "
          f"{cropped.min():.1f}-{cropped.max():.1f} s (mean {cropped.mean():.2f} s), "
          f"{args.num_buckets} buckets; model {args.model}, {args.precision}, "
          f"{torch.get_num_threads()} threads")

    budget = args.batch_size * float(cropped.mean())
    print("\n| batching | batches/epoch | s/batch mean (min-max) | utterances/batch | "
          "padded frames |\n|---|---|---|---|---|")
    dynamic = None
    for one in [budget, *args.budgets]:
        rows, batches = batch_rows(dataset, cropped, one, args)
        dynamic = batches if dynamic is None else dynamic
        for name, n, mean, low, high, size, pad in rows:
            print(f"| {name} | {n} | {mean:.1f} ({low:.1f}-{high:.1f}) | {size:.1f} | "
                  f"{100 * pad:.1f} % |")

    fixed = random_batches(args.utterances, args.batch_size, args.seed)
    model = build_model(args.model)
    speeds = [throughput(model, dataset, batches, args.timed_batches, args.precision)
              for batches in (fixed, dynamic)]
    print(f"\nbudget {budget:.0f} s, audio s / compute s: random {speeds[0]:.1f}, "
          f"duration {speeds[1]:.1f}; ratio {speeds[1] / speeds[0]:.2f}x; "
          f"targets: padding <= 10 %, s/batch within 10 % of the budget, ratio >= 1.5x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Random fixed-size batches vs duration (dynamic) batches for V-FT training.

On a corpus whose durations spread like IEMOCAP's (1 to 12 s, mean about 4.5 s),
prints side by side, from one run on the same machine and model:

- the share of padded frames over a whole epoch of batches;
- the seconds of (valid) audio trained per second of compute (forward,
  backward and Adam step of the V-FT model), over ``--timed_batches`` batches.

The duration batches hold on average as much audio as the fixed ones
(``--batch_size`` × mean duration), so the comparison isolates padding.

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

from speechbrain_ptapt.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.dataio import duration_batch_sampler
from speechbrain_ptapt.masking import ChannelMask, TimeMask
from speechbrain_ptapt.vft import EmotionClassifier

SAMPLE_RATE = 16000


def iemocap_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """Durations in seconds: log-normal, clipped to [1, 12] s, mean about 4.5 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=1.33, sigma=0.55, size=n), 1.0, 12.0)


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

    from speechbrain_ptapt.tiny import make_tiny_wav2vec2

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


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seconds", type=float, default=10.0, help="training crop length")
    parser.add_argument("--num_buckets", type=int, default=20)
    parser.add_argument("--timed_batches", type=int, default=20)
    parser.add_argument("--model", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    durations = iemocap_like_durations(args.utterances, args.seed)
    cropped = np.minimum(durations, args.max_seconds)
    dataset = make_dataset(cropped)
    print(f"{args.utterances} utterances, {cropped.sum() / 3600:.2f} h, durations "
          f"{cropped.min():.1f}-{cropped.max():.1f} s (mean {cropped.mean():.2f} s); "
          f"model {args.model}, {args.precision}, {torch.get_num_threads()} threads")

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(args.utterances)
    fixed = [order[i:i + args.batch_size].tolist()
             for i in range(0, len(order), args.batch_size)]
    budget = args.batch_size * float(cropped.mean())
    sampler = duration_batch_sampler(dataset, budget, args.max_seconds, args.num_buckets,
                                     args.seed)
    sampler.set_epoch(0)
    dynamic = [list(map(int, b)) for b in sampler._batches]

    model = build_model(args.model)
    rows = []
    for name, batches in (("random, fixed size", fixed), ("duration (dynamic)", dynamic)):
        rows.append((name, len(batches), np.mean([len(b) for b in batches]),
                     padding_share(batches, cropped),
                     throughput(model, dataset, batches, args.timed_batches, args.precision)))
    print("\n| batching | batches/epoch | utterances/batch | padded frames | "
          "audio s / compute s |\n|---|---|---|---|---|")
    for name, n, size, pad, speed in rows:
        print(f"| {name} (budget {budget:.0f} s) | {n} | {size:.1f} | {100 * pad:.1f} % | "
              f"{speed:.1f} |")
    print(f"\nthroughput ratio dynamic / fixed: {rows[1][4] / rows[0][4]:.2f}x; "
          f"targets: padding <= 10 %, ratio >= 1.5x")


if __name__ == "__main__":
    main()

"""Inference speed of :class:`speechbrain_ptapt.deploy.inference.EmotionRecognizer` with the
wav2vec2-base architecture.

The model is wav2vec2-base's architecture (``transformers.Wav2Vec2Config()``
defaults: 7 CNN layers, 12 transformer layers of 768 channels, 95 M parameters)
with random weights and a 4-class head, saved to a temporary folder, exported
with :func:`speechbrain_ptapt.deploy.export.write_inference_folder` and loaded with
``EmotionRecognizer.from_hparams``: the same code path as a trained model.
Random weights cost the same time as trained ones.

For each device (the CPU, and the GPU when CUDA is available), precision
(fp32, and bf16 autocast through SpeechBrain's ``precision`` run option) and
batch shape (``B x seconds`` of random 16 kHz audio, no padding), it times
``classify_batch``: one warm-up call, then ``--repeats`` timed calls; the table
shows the median. *audio s / s* is the seconds of audio classified per second
of compute (higher is faster); *RTF* (real-time factor) is its inverse,
compute time over audio duration (below 1 is faster than real time).
*CPU time* is the process's user + system time per call (all threads; about
threads x wall time when the cores are free) and *load* the 1-min load average
after the row: on shared machines wall times vary with other jobs, CPU time
much less.

Usage::

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --shapes 1x4,8x4,1x20 --repeats 5 --devices cpu
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_shapes(text: str) -> list[tuple[int, float]]:
    """``"1x4,8x4,1x20"`` -> ``[(1, 4.0), (8, 4.0), (1, 20.0)]`` (batch, seconds)."""
    shapes = []
    for item in text.split(","):
        batch, seconds = item.lower().split("x")
        shapes.append((int(batch), float(seconds)))
    return shapes


def make_base_model(folder: Path, n_classes: int = 4) -> Path:
    """Writes a random wav2vec2-base backbone and an inference folder built on it.

    Returns the inference folder (``folder / "model"``).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from speechbrain_ptapt.deploy.export import write_inference_folder
    from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
    from speechbrain_ptapt.models.classifier import EmotionClassifier

    torch.manual_seed(0)
    backbone_folder = folder / "wav2vec2-base-random"
    config = Wav2Vec2Config()
    Wav2Vec2Model(config).save_pretrained(str(backbone_folder))
    feature_extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
    feature_extractor.save_pretrained(str(backbone_folder))
    classifier = EmotionClassifier(Wav2Vec2Backbone(str(backbone_folder)), n_classes)
    classes = ["neu", "hap", "sad", "ang"][:n_classes]
    return write_inference_folder(
        folder / "model", classifier.state_dict(), config, feature_extractor, classes
    )


def time_call(fn, device: str, repeats: int) -> tuple[list[float], list[float]]:
    """Wall times and process CPU times (all threads) in seconds of ``repeats`` calls
    of ``fn`` after one warm-up call."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def run(shapes, devices, precisions, repeats: int, folder: Path) -> list[dict]:
    """Times every (device, precision, shape); returns one row per combination."""
    from speechbrain_ptapt.deploy.inference import EmotionRecognizer

    rows = []
    for device in devices:
        for precision in precisions:
            recognizer = EmotionRecognizer.from_hparams(
                source=str(folder), run_opts={"device": device, "precision": precision}
            )
            for batch, seconds in shapes:
                generator = torch.Generator().manual_seed(0)
                samples = int(round(seconds * recognizer.sample_rate))
                wavs = 0.1 * torch.randn(batch, samples, generator=generator)
                wavs = wavs.to(device)
                times, cpu_times = time_call(
                    lambda w=wavs, r=recognizer: r.classify_batch(w), device, repeats
                )
                compute = statistics.median(times)
                audio = batch * seconds
                rows.append(
                    {
                        "device": device,
                        "precision": precision,
                        "shape": f"{batch} x {seconds:g} s",
                        "audio_s": audio,
                        "compute_s": compute,
                        "cpu_s": statistics.median(cpu_times),
                        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
                        "speed": audio / compute,
                        "rtf": compute / audio,
                    }
                )
                print(
                    f"  {device} {precision} {batch} x {seconds:g} s: {compute:.3f} s",
                    flush=True,
                )
            del recognizer
    return rows


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| device | precision | batch | audio (s) | compute (s, median) | audio s / s | RTF "
        "| CPU time (s) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['precision']} | {r['shape']} | {r['audio_s']:g} | "
            f"{r['compute_s']:.3f} | {r['speed']:.1f} | {r['rtf']:.3f} | {r['cpu_s']:.2f} "
            f"| {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="1x4,8x4,1x20", help="BATCHxSECONDS, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row")
    parser.add_argument(
        "--devices", default=None, help="comma-separated (default: cpu, and cuda when available)"
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    args = parser.parse_args(argv)
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, load average {load:.1f}"
        + (f", GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        print("Building a random wav2vec2-base model ...", flush=True)
        folder = make_base_model(Path(tmp))
        rows = run(
            parse_shapes(args.shapes),
            devices,
            args.precisions.split(","),
            args.repeats,
            folder,
        )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()

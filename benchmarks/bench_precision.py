"""Training step time of the wav2vec2-base architecture in fp32 and mixed precision.

One step is what a training loop does per batch: forward, loss, backward and an
Adam step. The model is wav2vec2-base's architecture (``transformers``'
``Wav2Vec2Config()`` defaults: 7 CNN layers, 12 transformer layers of 768
channels, quantizer; 95 M parameters) with random weights, saved to a temporary
folder and loaded through the package's own classes, so each stage runs the
recipes' code:

- **V-FT**: :class:`speechbrain_ptapt.models.classifier.EmotionClassifier` on
  :class:`speechbrain_ptapt.models.backbone.Wav2Vec2Backbone` (CNN and feature
  projection frozen, the recipe's time and channel masks), class cross-entropy;
- **TAPT**: :class:`speechbrain_ptapt.models.pretraining.Wav2Vec2Pretraining` (every
  parameter trained), wav2vec2's contrastive + diversity loss;
- **P-TAPT phase 2**: :func:`speechbrain_ptapt.models.pseudo_label_heads.build_ptapt_model` with one
  pseudo-label head per K (``--ks``: 64, 512, 4096 alone and the paper's three
  together), masked-frame cross-entropy on random labels.

Precisions: fp32, and autocast to bf16 (CPU and GPU) or fp16 (GPU, with a
gradient scaler), as SpeechBrain's ``--precision`` run option does. Every row
seeds torch identically, so masks, LayerDrop and data are the same across
precisions; the precisions of a stage alternate step by step, so that changes of
machine load hit them alike. Each row times one warm-up step, then ``--repeats``
steps; the table shows medians of wall time and of the process's CPU time (user + system,
all threads: on a shared machine wall time depends on other jobs, CPU time much
less), and on a GPU the peak memory.

With a GPU, a second table projects the time of each stage for one IEMOCAP
fold at the paper's settings from the measured time per second of audio:
V-FT 15 epochs x 4400 training utterances (batch 64, mean 4.5 s), TAPT 20000
steps x 64 crops of 4.5 s on average, P-TAPT phase 2 20000 steps x 250 s. It
assumes the step time grows linearly with the seconds of audio in the batch
(padding and the quadratic part of attention ignored at these lengths) and
leaves out data loading, evaluation, checkpoints and the P-TAPT phase 1 and
k-means. A GPU is far from busy with 4 x 3 s: ``--batch 64 --seconds 4.5`` times
batches like the paper's and gives closer projections.

Usage::

    python benchmarks/bench_precision.py
    python benchmarks/bench_precision.py --repeats 2 --devices cpu --stages vft,tapt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000  # Hz

#: Audio seconds one IEMOCAP fold's stage processes at the paper's settings.
PAPER_STAGE_AUDIO = {
    "vft": ("V-FT: 15 epochs x 4400 utt. x 4.5 s", 15 * 4400 * 4.5),
    "tapt": ("TAPT: 20000 steps x 64 x 4.5 s", 20000 * 64 * 4.5),
    "ptapt": ("P-TAPT phase 2: 20000 steps x 250 s", 20000 * 250.0),
}


def make_base_folder(folder: Path) -> Path:
    """Writes a random wav2vec2-base (with quantizer) and its preprocessor config."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(Wav2Vec2Config()).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True).save_pretrained(
        str(folder)
    )
    return folder


def _quiet_load(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Builds a model with transformers' load reports silenced."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return build()
    finally:
        hf_logging.set_verbosity(level)


def build_stage(stage: str, folder: Path, ks: list[int]) -> tuple[torch.nn.Module, Callable]:
    """The model of a stage and ``loss(model, wavs, wav_lens) -> scalar``."""
    from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
    from speechbrain_ptapt.models.classifier import EmotionClassifier
    from speechbrain_ptapt.models.masking import ChannelMask, TimeMask
    from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
    from speechbrain_ptapt.models.pseudo_label_heads import build_ptapt_model

    source = str(folder)
    if stage == "vft":
        model = _quiet_load(
            lambda: EmotionClassifier(
                Wav2Vec2Backbone(source), 4, TimeMask(0.08, 15, 2), ChannelMask(0.05, 64, 1)
            )
        )

        def vft_loss(m, wavs, wav_lens):
            targets = torch.arange(wavs.shape[0], device=wavs.device) % 4
            return torch.nn.functional.cross_entropy(m(wavs, wav_lens).float(), targets)

        return model, vft_loss
    if stage == "tapt":
        model = _quiet_load(lambda: Wav2Vec2Pretraining(source))
        return model, lambda m, wavs, wav_lens: m(wavs, wav_lens).per_masked_frame
    model = _quiet_load(lambda: build_ptapt_model(source, None, ks))

    def ptapt_loss(m, wavs, wav_lens):
        frames = int(m.backbone.frame_lengths(torch.tensor(wavs.shape[1])))
        columns = [torch.randint(0, k, (wavs.shape[0], frames, 1)) for k in ks]
        labels = torch.cat(columns, dim=2).to(wavs.device)
        return m(wavs, wav_lens, labels)["loss"]

    return model, ptapt_loss


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16 / fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _seed(value: int) -> None:
    """Seeds torch and NumPy (TAPT draws its distractors with NumPy)."""
    torch.manual_seed(value)
    np.random.seed(value)


def time_stage(
    stage: str,
    ks: list[int],
    folder: Path,
    device: str,
    precisions: list[str],
    batch: int,
    seconds: float,
    repeats: int,
) -> list[dict]:
    """Median wall and CPU time of ``repeats`` training steps per precision, after one
    warm-up step each.

    One model per precision (identical initial weights); the steps of the precisions
    alternate and step ``r`` of every precision starts from the same seed (same
    masks, LayerDrop and labels), so a change of machine load affects them alike.
    """
    generator = torch.Generator().manual_seed(1)
    wavs = (0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)).to(device)
    wav_lens = torch.ones(batch, device=device)
    runs = []
    for precision in precisions:
        _seed(0)
        model, loss_fn = build_stage(stage, folder, ks)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        runs.append(
            {
                "precision": precision,
                "model": model,
                "loss_fn": loss_fn,
                "optimizer": torch.optim.Adam(params, lr=1e-5),
                "scaler": torch.amp.GradScaler(
                    torch.device(device).type,
                    enabled=precision == "fp16" and device.startswith("cuda"),
                ),
                "times": [],
                "cpu_times": [],
                "peak": 0.0,
            }
        )

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(run: dict) -> None:
        run["optimizer"].zero_grad(set_to_none=True)
        with autocast(device, run["precision"]):
            loss = run["loss_fn"](run["model"], wavs, wav_lens)
        run["scaler"].scale(loss).backward()
        run["scaler"].step(run["optimizer"])
        run["scaler"].update()

    for index in range(repeats + 1):  # step 0 warms up
        for run in runs:
            _seed(100 + index)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            step(run)
            sync()
            if index:
                run["times"].append(time.perf_counter() - start)
                run["cpu_times"].append(time.process_time() - cpu_start)
            if device.startswith("cuda"):
                run["peak"] = max(run["peak"], torch.cuda.max_memory_allocated() / 2**30)
    return [
        {
            "stage": stage,
            "label": stage_label(stage, ks),
            "device": device,
            "precision": run["precision"],
            "batch": f"{batch} x {seconds:g} s",
            "audio_s": batch * seconds,
            "step_s": statistics.median(run["times"]),
            "cpu_s": statistics.median(run["cpu_times"]),
            "peak_gib": run["peak"] if device.startswith("cuda") else None,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        }
        for run in runs
    ]


def stage_label(stage: str, ks: list[int]) -> str:
    """``V-FT``, ``TAPT`` or ``P-TAPT K=64`` ..."""
    if stage == "vft":
        return "V-FT"
    if stage == "tapt":
        return "TAPT"
    return "P-TAPT K=" + "+".join(str(k) for k in ks)


def step_table(rows: list[dict]) -> str:
    """The step times as a Markdown table, with the speed-up over fp32 of the same row."""
    fp32 = {(r["label"], r["device"]): r["step_s"] for r in rows if r["precision"] == "fp32"}
    lines = [
        "| stage | device | precision | batch | step (s, median) | vs fp32 | CPU time (s) "
        "| peak GPU mem (GiB) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = fp32.get((r["label"], r["device"]))
        ratio = f"{base / r['step_s']:.2f}x" if base else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(
            f"| {r['label']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{r['step_s']:.3f} | {ratio} | {r['cpu_s']:.2f} | {peak} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def projection_table(rows: list[dict], ptapt_label: str) -> str:
    """Projected time of each stage for one IEMOCAP fold (see the module doc)."""
    lines = [
        "| stage (one IEMOCAP fold, paper settings) | device | precision | audio (h) "
        "| projected time |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        key = r["stage"]
        if key == "ptapt" and r["label"] != ptapt_label:
            continue
        description, audio = PAPER_STAGE_AUDIO[key]
        per_audio_second = r["step_s"] / r["audio_s"]
        lines.append(
            f"| {description} ({r['label']}) | {r['device']} | {r['precision']} | "
            f"{audio / 3600:.0f} | {_hours(per_audio_second * audio)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default="vft,tapt,ptapt", help="comma-separated")
    parser.add_argument(
        "--ks",
        default="64;512;4096;64,512,4096",
        help="P-TAPT head sets, ';'-separated (each a comma-separated K list)",
    )
    parser.add_argument("--batch", type=int, default=4, help="utterances per step")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per utterance")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row")
    parser.add_argument(
        "--devices", default=None, help="comma-separated (default: cpu, and cuda when available)"
    )
    parser.add_argument(
        "--precisions",
        default=None,
        help="comma-separated (default: fp32,bf16 on CPU; fp32,fp16,bf16 on a GPU)",
    )
    args = parser.parse_args(argv)
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    head_sets = [[int(k) for k in group.split(",")] for group in args.ks.split(";")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, load average {load:.1f}"
        + (f", GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else ""),
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        print("Writing a random wav2vec2-base ...", flush=True)
        folder = make_base_folder(Path(tmp) / "wav2vec2-base-random")
        for device in devices:
            precisions = (
                args.precisions.split(",")
                if args.precisions
                else (["fp32", "fp16", "bf16"] if device.startswith("cuda") else ["fp32", "bf16"])
            )
            for stage in args.stages.split(","):
                for ks in head_sets if stage == "ptapt" else [[]]:
                    stage_rows = time_stage(
                        stage,
                        ks,
                        folder,
                        device,
                        precisions,
                        args.batch,
                        args.seconds,
                        args.repeats,
                    )
                    rows += stage_rows
                    for row in stage_rows:
                        print(
                            f"  {row['label']} {device} {row['precision']}: "
                            f"{row['step_s']:.3f} s (CPU {row['cpu_s']:.2f} s)",
                            flush=True,
                        )
    print()
    print(step_table(rows))
    gpu_rows = [r for r in rows if r["device"].startswith("cuda")]
    if gpu_rows:
        print()
        print(projection_table(gpu_rows, stage_label("ptapt", head_sets[-1])))


if __name__ == "__main__":
    main()

"""Domain-shift meter (paper Table 3): wav2vec2's own pretraining loss on a dataset.

The loss is what ``Wav2Vec2ForPreTraining`` computes (contrastive loss summed
over the masked frames + ``diversity_loss_weight`` x diversity loss), in eval
mode, averaged per utterance. Masks and distractors are drawn with a fixed seed
and depend only on the utterance lengths, so the numbers of different backbones
on the same data are comparable; a lower loss means audio closer to what the
backbone was (pre)trained on. Paper, wav2vec2-base: LibriSpeech test-clean
32.04, SAVEE 41.37, IEMOCAP 55.42.

Command line::

    python -m speechbrain_ptapt.analysis.domain_shift --wav2vec2_hub facebook/wav2vec2-base \\
        --data results/IEMOCAP/tapt/manifests/fold_1/test.json
    python -m speechbrain_ptapt.analysis.domain_shift --wav2vec2_hub results/.../adapted_wav2vec2 \\
        --data /path/to/IEMOCAP_full_release/Session5/sentences/wav --json shift.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.models.backbone import AUTHORS_WAV2VEC2_REVISION
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
from speechbrain_ptapt.protocol.errors import InputError, MissingFileError, PtaptError

logger = logging.getLogger(__name__)


def audio_files(data: str | Path) -> list[str]:
    """The audio of a dataset: the ``wav`` entries of a SpeechBrain JSON manifest
    (in manifest order), or every ``.wav`` file below a folder (sorted; macOS
    ``._*`` AppleDouble files skipped)."""
    data = Path(data)
    if data.is_file():
        try:
            with open(data, encoding="utf-8") as f:
                manifest = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{data} is not a JSON manifest ({err}).") from err
        if not isinstance(manifest, dict) or not all(
            isinstance(v, dict) and "wav" in v for v in manifest.values()
        ):
            raise InputError(
                f"{data} is not a SpeechBrain JSON manifest ({{id: {{'wav': path, ...}}}})."
            )
        return [str(v["wav"]) for v in manifest.values()]
    if data.is_dir():
        files = sorted(
            str(p) for p in data.rglob("*") if p.suffix.lower() == ".wav"
            and p.is_file() and not p.name.startswith("._")
        )
        if not files:
            raise InputError(f"No .wav file below {data}.")
        return files
    raise MissingFileError(f"{data} is neither a manifest nor a folder.")


def pretraining_loss(
    model_or_source: Wav2Vec2Pretraining | str | Path,
    wav_paths: Sequence[str | Path],
    batch_size: int = 1,
    seed: int = 0,
    max_seconds: float | None = None,
    device: str = "cpu",
    save_path: str | None = None,
    progress: bool = True,
    revision: str | None = None,
) -> dict[str, Any]:
    """wav2vec2's pretraining loss of a backbone on a list of audio files.

    Arguments
    ---------
    model_or_source : Wav2Vec2Pretraining, str or Path
        A model, or a hub id / local folder to load one from.
    wav_paths : sequence of str or Path
        Audio files, read mono at the backbone's sampling rate.
    batch_size : int
        Utterances per forward pass. 1 (the default) scores each utterance
        alone; larger batches are faster but wav2vec2-base's group-normalised
        CNN then sees padding, which shifts the numbers slightly.
    seed : int
        Seed of the masks and distractors (NumPy); the global random state is
        restored afterwards.
    max_seconds : float, optional
        Keep only the first ``max_seconds`` seconds of each file (None: whole files).
    device : str
        Torch device.
    save_path : str, optional
        Cache folder for hub downloads.
    progress : bool
        Show a progress bar.
    revision : str, optional
        Hub revision when ``model_or_source`` is a hub id (ignored for a folder).

    Returns
    -------
    dict
        ``loss`` (mean per utterance of contrastive + diversity_weight x diversity),
        ``contrastive`` and ``diversity`` (means per utterance), ``diversity_weight``,
        ``loss_per_masked_frame`` (total loss / total masked frames),
        ``utterances``, ``masked_frames``, ``seconds`` (audio scored), ``backbone``,
        ``seed``, ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    wav_paths = [str(p) for p in wav_paths]
    if not wav_paths:
        raise ValueError("No audio file to score.")
    if isinstance(model_or_source, Wav2Vec2Pretraining):
        model, backbone = model_or_source, model_or_source.source
    else:
        backbone = str(model_or_source)
        model = Wav2Vec2Pretraining(backbone, save_path=save_path, revision=revision)
    was_training = model.training
    model.eval()
    model.to(device)
    max_samples = None if max_seconds is None else int(round(max_seconds * model.sample_rate))

    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    totals = {"contrastive": 0.0, "diversity": 0.0, "masked": 0, "samples": 0}
    try:
        batches = [wav_paths[i : i + batch_size] for i in range(0, len(wav_paths), batch_size)]
        with torch.no_grad():
            for paths in tqdm(batches, desc="pretraining loss", disable=not progress):
                sigs = [load_audio(p, model.sample_rate)[:max_samples] for p in paths]
                lengths = torch.tensor([len(s) for s in sigs], dtype=torch.float64)
                wavs = torch.nn.utils.rnn.pad_sequence(sigs, batch_first=True).to(device)
                out = model(wavs, (lengths / wavs.shape[1]).to(device))
                totals["contrastive"] += float(out.contrastive)
                totals["diversity"] += float(out.diversity)
                totals["masked"] += out.num_masked
                totals["samples"] += int(lengths.sum())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        model.train(was_training)

    weight = float(model.config.diversity_loss_weight)
    count = len(wav_paths)
    total = totals["contrastive"] + weight * totals["diversity"]
    return {
        "loss": total / count,
        "contrastive": totals["contrastive"] / count,
        "diversity": totals["diversity"] / count,
        "diversity_weight": weight,
        "loss_per_masked_frame": total / max(totals["masked"], 1),
        "utterances": count,
        "masked_frames": int(totals["masked"]),
        "seconds": totals["samples"] / model.sample_rate,
        "backbone": backbone,
        "seed": int(seed),
        "batch_size": int(batch_size),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; prints one summary line (and writes JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wav2vec2_hub", required=True, help="hub id or local backbone folder")
    parser.add_argument(
        "--data", required=True, help="a SpeechBrain JSON manifest, or a folder of .wav files"
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max_seconds", type=float, default=None, help="keep the first seconds of each file"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save_path", default=None, help="cache folder for hub downloads")
    parser.add_argument(
        "--wav2vec2_revision", default=AUTHORS_WAV2VEC2_REVISION,
        help="hub revision of a hub id (default: the authors' facebook/wav2vec2-base commit; "
        "ignored for a local folder)",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE",
        help="also write the result as JSON to FILE (stdout when no FILE is given)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        files = audio_files(args.data)
        result = pretraining_loss(
            args.wav2vec2_hub, files, batch_size=args.batch_size, seed=args.seed,
            max_seconds=args.max_seconds, device=args.device, save_path=args.save_path,
            progress=not args.no_progress, revision=args.wav2vec2_revision,
        )
    except PtaptError as err:  # no audio, unreadable audio, backbone not loadable
        print(f"error: {err}", file=sys.stderr)
        return 1
    result["data"] = str(args.data)
    print(
        f"pretraining loss {result['loss']:.2f} per utterance (contrastive "
        f"{result['contrastive']:.2f} + {result['diversity_weight']:g} x diversity "
        f"{result['diversity']:.2f}; {result['loss_per_masked_frame']:.3f} per masked frame) "
        f"over {result['utterances']} utterances ({result['seconds'] / 3600:.2f} h) of "
        f"{args.data} with {args.wav2vec2_hub}"
    )
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

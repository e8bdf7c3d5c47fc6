"""Reading audio for training and inference: mono, 16 kHz, finite, never silently wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from speechbrain_ptapt.errors import PtaptError

TARGET_SAMPLE_RATE = 16000


class AudioError(PtaptError, RuntimeError):
    """An audio file that cannot be used; the message names the file and the problem."""


def to_mono_16k(
    waveform: torch.Tensor, sample_rate: int, target_sample_rate: int = TARGET_SAMPLE_RATE
) -> torch.Tensor:
    """Down-mixes and resamples a waveform.

    Arguments
    ---------
    waveform : torch.Tensor
        (samples,) or (samples, channels) float audio.
    sample_rate : int
        Its sampling rate in Hz.
    target_sample_rate : int
        The sampling rate of the result in Hz.

    Returns
    -------
    torch.Tensor
        (samples at ``target_sample_rate``,) float32.
    """
    waveform = waveform.float()
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=1)
    if sample_rate != target_sample_rate:
        waveform = AF.resample(waveform, sample_rate, target_sample_rate)
    return waveform.contiguous()


def load_audio(path: str | Path, target_sample_rate: int = TARGET_SAMPLE_RATE) -> torch.Tensor:
    """Reads an audio file as a mono float32 waveform at ``target_sample_rate``.

    Stereo files are averaged over channels and other sampling rates resampled,
    so no file is ever fed to a model in the wrong format.

    Arguments
    ---------
    path : str or Path
        The audio file (any format soundfile reads: wav, flac, ogg ...).
    target_sample_rate : int
        Sampling rate of the returned waveform, in Hz.

    Returns
    -------
    torch.Tensor
        (samples,) float32 waveform.

    Raises
    ------
    AudioError
        When the file is missing, unreadable, empty or holds non-finite samples.
    """
    path = Path(path)
    fix = "fix or replace the file, or leave it out of the data"
    if not path.is_file():
        raise AudioError(f"Audio file not found: {path}; {fix}.")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt files
        raise AudioError(
            f"Cannot read audio file {path}: {err}; expected audio soundfile reads "
            f"(wav, flac, ogg ...): {fix}."
        ) from err
    if data.shape[0] == 0:
        raise AudioError(f"Audio file {path} is empty (0 samples); {fix}.")
    if not np.isfinite(data).all():
        raise AudioError(f"Audio file {path} contains NaN or infinite samples; {fix}.")
    return to_mono_16k(torch.from_numpy(data), sample_rate, target_sample_rate)

"""Emotion recognition with an exported model: a SpeechBrain ``Pretrained`` interface,
and the model's input and pooling code that training shares.

:class:`EmotionRecognizer` loads a folder written by :mod:`speechbrain_ptapt.deploy.export`
(or its Hugging Face Hub copy) with ``EmotionRecognizer.from_hparams(source=...)``
and classifies files or waveform batches like SpeechBrain's ``EncoderClassifier``,
returning ``(out_prob, score, index, text_lab)``.

The computation is the one the recipes evaluate
(:class:`~speechbrain_ptapt.models.classifier.EmotionClassifier` in eval mode): per-utterance
zero-mean unit-variance input, wav2vec2 with a padding mask, ReLU, mean over valid
frames, ReLU, linear head, softmax. The
audio reader, the input normalisation, the receptive field and the masked mean
are defined here and imported by the training code, so both compute the same.

This module is self-contained: it imports numpy, soundfile, torch, torchaudio,
transformers and SpeechBrain only, never this package. The exporter copies it
verbatim as the folder's ``custom_interface.py``, so stock SpeechBrain's
``foreign_class`` loads an exported folder without this package installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.interfaces import Pretrained
from transformers import Wav2Vec2Model

# ----------------------------------------------------------------------------
# Audio input, normalisation and pooling (shared with training)
# ----------------------------------------------------------------------------

#: Sampling rate of the models' input, in Hz.
TARGET_SAMPLE_RATE = 16000


class PtaptError(Exception):
    """An error in the user's data, settings or files; the message says what to do.

    The base class of every such error of the package (see
    :mod:`speechbrain_ptapt.protocol.errors`, which re-exports it). It is defined here because
    this module is copied verbatim into exported models and imports nothing of the
    package, and the audio errors below must be of this class there too.
    """


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


def receptive_field_samples(model: Wav2Vec2Model) -> int:
    """Smallest input length in samples for which the CNN encoder yields one frame.

    Found with the model's own length formula (400 samples for wav2vec2-base).
    """
    length = 1
    while int(model._get_feat_extract_output_lengths(torch.tensor(length))) < 1:
        length += 1
    return length


def normalize_waveforms(wavs: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance normalisation of each waveform over its valid samples.

    Matches ``Wav2Vec2FeatureExtractor(do_normalize=True)`` applied to each
    utterance alone; padding stays 0.

    Arguments
    ---------
    wavs : torch.Tensor
        (batch, samples) padded waveforms.
    num_samples : torch.Tensor
        (batch,) valid samples of each waveform.
    """
    valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < num_samples[:, None]
    count = num_samples.clamp(min=1).to(wavs.dtype)[:, None]
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + 1e-7) * valid


def masked_mean(hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of each utterance.

    Arguments
    ---------
    hidden : torch.Tensor
        (batch, frames, dim) frame representations.
    frame_mask : torch.Tensor
        (batch, frames) bool, True on valid frames (padding excluded).

    Returns
    -------
    torch.Tensor
        (batch, dim).
    """
    weights = frame_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------

#: Defaults of the optional hyperparameters of the inference yaml.
DEFAULT_MAX_CHUNK_SECONDS = 60.0
DEFAULT_CHUNK_OVERLAP_SECONDS = 5.0


def chunk_bounds(
    num_samples: int, chunk_samples: int, overlap_samples: int
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of overlapping chunks covering a recording.

    Chunks start every ``chunk_samples - overlap_samples`` samples; each is
    ``chunk_samples`` long except the last, which ends at the recording's end.
    A recording no longer than ``chunk_samples`` is one chunk.

    Arguments
    ---------
    num_samples : int
        Length of the recording in samples.
    chunk_samples : int
        Length of a chunk in samples.
    overlap_samples : int
        Samples shared by consecutive chunks (less than ``chunk_samples``).
    """
    if chunk_samples < 1 or not 0 <= overlap_samples < chunk_samples:
        raise ValueError(
            f"Chunks of {chunk_samples} samples with an overlap of {overlap_samples} "
            "samples: the chunk must be at least 1 sample and longer than the overlap."
        )
    hop = chunk_samples - overlap_samples
    bounds = []
    start = 0
    while True:
        end = min(start + chunk_samples, num_samples)
        bounds.append((start, end))
        if end >= num_samples:
            return bounds
        start += hop


class EmotionRecognizer(Pretrained):
    """Utterance-level speech emotion recognition with a fine-tuned wav2vec2.

    Expects in the hyperparameters (``hyperparams.yaml`` of an exported folder):
    modules ``wav2vec2`` (a transformers ``Wav2Vec2Model``) and ``head`` (a
    ``torch.nn.Linear``), ``classes`` (label names in output order),
    ``sample_rate`` (Hz) and ``normalize_input`` (per-utterance zero-mean
    unit-variance input, as the backbone's preprocessor), and optionally
    ``max_chunk_seconds`` and ``chunk_overlap_seconds``.

    Any sampling rate and channel count are accepted: audio is down-mixed to
    mono and resampled to ``sample_rate``. Inputs shorter than the CNN's
    receptive field (400 samples, 25 ms for wav2vec2-base) are zero-padded to
    it and still get a prediction.

    Long recordings. A waveform longer than ``max_chunk_seconds`` (default
    60 s) is not run in one pass: it is cut into chunks of ``max_chunk_seconds``
    that overlap by ``chunk_overlap_seconds`` (default 5 s), each chunk is
    normalised and encoded alone, one at a time, and the utterance embedding
    is the mean of the chunk embeddings weighted by their numbers of frames
    (frames in an overlap count once per chunk). Memory therefore stays that of
    one ``max_chunk_seconds`` pass whatever the length. Shorter waveforms are
    encoded whole, exactly as the recipes evaluate them.

    Files are read with the package's own audio reader (soundfile), never
    fetched or copied; with the default ``savedir=None`` of ``from_hparams``,
    a local model folder is read in place and a Hub model comes from the
    Hugging Face cache, so nothing is written into the working directory.

    Example
    -------
    >>> recognizer = EmotionRecognizer.from_hparams(source="path/to/exported")  # doctest: +SKIP
    >>> out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")  # doctest: +SKIP
    >>> text_lab  # doctest: +SKIP
    ['neu']
    """

    HPARAMS_NEEDED = ["classes", "sample_rate"]
    MODULES_NEEDED = ["wav2vec2", "head"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sample_rate = int(self.hparams.sample_rate)
        self.classes = [str(c) for c in self.hparams.classes]
        self.normalize_input = bool(getattr(self.hparams, "normalize_input", True))
        self.max_chunk_seconds = getattr(
            self.hparams, "max_chunk_seconds", DEFAULT_MAX_CHUNK_SECONDS
        )
        self.chunk_overlap_seconds = float(
            getattr(self.hparams, "chunk_overlap_seconds", DEFAULT_CHUNK_OVERLAP_SECONDS)
        )
        wav2vec2: Wav2Vec2Model = self.mods.wav2vec2
        self.min_samples = receptive_field_samples(wav2vec2)
        if getattr(self.hparams, "label_encoder", None) is None:
            encoder = CategoricalEncoder()
            encoder.update_from_iterable(self.classes)
            encoder.expect_len(len(self.classes))
            self.hparams.label_encoder = encoder

    # ------------------------------------------------------------------ input

    def prepare_waveforms(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        sample_rate: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Brings a batch to the model's format: mono, ``self.sample_rate``, float32.

        Arguments
        ---------
        wavs : torch.Tensor
            (samples,), (batch, samples) or (batch, samples, channels) waveforms.
        wav_lens : torch.Tensor, optional
            (batch,) lengths relative to the longest waveform (SpeechBrain's
            convention); all 1.0 when not given.
        sample_rate : int, optional
            Sampling rate of ``wavs`` in Hz; ``self.sample_rate`` when not given.

        Returns
        -------
        wavs : torch.Tensor
            (batch, samples) float32 on ``self.device``.
        wav_lens : torch.Tensor
            (batch,) relative lengths on ``self.device``.
        """
        wavs = torch.as_tensor(wavs)
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() == 3:
            wavs = wavs.float().mean(dim=2)
        if wavs.dim() != 2:
            raise ValueError(
                "Expected waveforms shaped (samples,), (batch, samples) or "
                f"(batch, samples, channels); got {tuple(wavs.shape)}."
            )
        wavs = wavs.to(self.device, torch.float32)
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wavs = AF.resample(wavs, int(sample_rate), self.sample_rate)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        return wavs, torch.as_tensor(wav_lens).to(self.device)

    @property
    def chunk_samples(self) -> int | None:
        """Longest waveform encoded in one pass, in samples (None: no limit)."""
        if self.max_chunk_seconds is None:
            return None
        return max(int(round(float(self.max_chunk_seconds) * self.sample_rate)), 1)

    # --------------------------------------------------------------- encoding

    def encode_segments(
        self, wavs: torch.Tensor, num_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of wav2vec2 + ReLU + masked mean over a padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            (batch, samples) padded 16 kHz (``sample_rate``) waveforms.
        num_samples : torch.Tensor
            (batch,) valid samples of each waveform.

        Returns
        -------
        embeddings : torch.Tensor
            (batch, hidden) float32 mean of ReLU(transformer output) over valid frames.
        num_frames : torch.Tensor
            (batch,) valid frames (20 ms each for wav2vec2-base) of each waveform.
        """
        model: Wav2Vec2Model = self.mods.wav2vec2
        num_samples = num_samples.to(wavs.device)
        if self.normalize_input:
            wavs = normalize_waveforms(wavs, num_samples)
        if wavs.shape[1] < self.min_samples:
            wavs = torch.nn.functional.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        num_samples = num_samples.clamp(min=self.min_samples)
        with self.inference_ctx:
            cnn_features = model.feature_extractor(wavs).transpose(1, 2)
            projected, _ = model.feature_projection(cnn_features)
            total_frames = projected.shape[1]
            frame_lens = model._get_feat_extract_output_lengths(num_samples).clamp(
                min=1, max=total_frames
            )
            frame_mask = (
                torch.arange(total_frames, device=wavs.device)[None, :] < frame_lens[:, None]
            )
            hidden = model.encoder(projected, attention_mask=frame_mask)
            hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        return masked_mean(torch.relu(hidden.float()), frame_mask), frame_lens

    def encode_long(self, wav: torch.Tensor) -> torch.Tensor:
        """Embedding of one long waveform from overlapping chunks (see the class doc).

        Arguments
        ---------
        wav : torch.Tensor
            (samples,) waveform at ``sample_rate``.

        Returns
        -------
        torch.Tensor
            (1, hidden): chunk embeddings averaged with their frame counts as weights.
        """
        chunk = self.chunk_samples
        overlap = int(round(self.chunk_overlap_seconds * self.sample_rate))
        overlap = min(max(overlap, 0), chunk - 1)
        total = None
        weight = 0.0
        for start, end in chunk_bounds(wav.shape[0], chunk, overlap):
            segment = wav[start:end].unsqueeze(0)
            lengths = torch.tensor([end - start], device=wav.device)
            embedding, frames = self.encode_segments(segment, lengths)
            frames = float(frames[0])
            total = embedding * frames if total is None else total + embedding * frames
            weight += frames
        return total / weight

    def encode_batch(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """Utterance embeddings: the mean of ReLU(wav2vec2 output) over valid frames.

        Arguments
        ---------
        wavs : torch.Tensor
            (samples,), (batch, samples) or (batch, samples, channels) waveforms.
        wav_lens : torch.Tensor, optional
            (batch,) relative lengths; all 1.0 when not given.
        sample_rate : int, optional
            Sampling rate of ``wavs`` in Hz (default: the model's, 16 kHz).

        Returns
        -------
        torch.Tensor
            (batch, hidden) float32 embeddings (768 for wav2vec2-base).

        Notes
        -----
        wav2vec2-base's first CNN layer normalises over the whole padded input,
        so a waveform padded inside a batch gets slightly different scores than
        alone; batch size 1 (and :meth:`classify_file`) reproduces the recipes'
        evaluation exactly.
        """
        wavs, wav_lens = self.prepare_waveforms(wavs, wav_lens, sample_rate)
        num_samples = torch.round(wav_lens.double() * wavs.shape[1]).long().clamp(min=1)
        limit = self.chunk_samples
        with torch.no_grad():
            if limit is None or int(num_samples.max()) <= limit:
                return self.encode_segments(wavs, num_samples)[0]
            embeddings = []
            for wav, length in zip(wavs, num_samples.tolist()):
                if length <= limit:
                    lengths = num_samples.new_tensor([length])
                    embeddings.append(self.encode_segments(wav[None, :length], lengths)[0])
                else:
                    embeddings.append(self.encode_long(wav[:length]))
            return torch.cat(embeddings)

    # ---------------------------------------------------------- classification

    def classify_embeddings(self, embeddings: torch.Tensor):
        """Class posteriors from utterance embeddings.

        Arguments
        ---------
        embeddings : torch.Tensor
            (batch, hidden) output of :meth:`encode_batch`.

        Returns
        -------
        out_prob : torch.Tensor
            (batch, n_classes) posterior probabilities (softmax; rows sum to 1).
        score : torch.Tensor
            (batch,) probability of the best class.
        index : torch.Tensor
            (batch,) index of the best class.
        text_lab : list of str
            Label of the best class of each utterance.
        """
        with torch.no_grad():
            logits = self.mods.head(torch.relu(embeddings))
            out_prob = torch.softmax(logits.float(), dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index)
        return out_prob, score, index, list(text_lab)

    def classify_batch(
        self,
        wavs: torch.Tensor,
        wav_lens: torch.Tensor | None = None,
        sample_rate: int | None = None,
    ):
        """Classifies a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (samples,), (batch, samples) or (batch, samples, channels) waveforms.
        wav_lens : torch.Tensor, optional
            (batch,) relative lengths; all 1.0 when not given.
        sample_rate : int, optional
            Sampling rate of ``wavs`` in Hz (default: the model's, 16 kHz).

        Returns
        -------
        out_prob, score, index, text_lab
            See :meth:`classify_embeddings`.
        """
        return self.classify_embeddings(self.encode_batch(wavs, wav_lens, sample_rate))

    def load_audio(self, path: str | Path, savedir: str | None = None) -> torch.Tensor:
        """Reads a local audio file as a mono float32 waveform at ``sample_rate``, on
        ``self.device``. Unlike ``Pretrained.load_audio``, nothing is fetched or
        linked (``savedir`` is accepted for compatibility and unused).

        Raises
        ------
        AudioError
            The file is missing, unreadable, empty or holds non-finite samples.
        """
        del savedir
        return load_audio(path, self.sample_rate).to(self.device)

    def classify_file(self, path: str | Path):
        """Classifies an audio file (any format soundfile reads, any rate and channels).

        Arguments
        ---------
        path : str or Path
            A local audio file; it is read whole, down-mixed and resampled.

        Returns
        -------
        out_prob, score, index, text_lab
            As :meth:`classify_batch` for a batch of one.

        Raises
        ------
        AudioError
            The file is missing, unreadable, empty or holds non-finite samples.
        """
        return self.classify_batch(self.load_audio(path).unsqueeze(0))

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Runs :meth:`classify_batch`."""
        return self.classify_batch(wavs, wav_lens)


__all__ = [
    "TARGET_SAMPLE_RATE",
    "AudioError",
    "EmotionRecognizer",
    "chunk_bounds",
    "load_audio",
    "masked_mean",
    "normalize_waveforms",
    "receptive_field_samples",
    "to_mono_16k",
]

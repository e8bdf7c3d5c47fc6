"""Deterministic synthetic emotional speech written in the real IEMOCAP and SAVEE layouts.

IEMOCAP and SAVEE are licensed corpora, so the project's tests and demo run on
corpora written by this module. Folders, file names, wav formats and the
IEMOCAP annotation files follow the real releases (including the junk real
copies carry: macOS ``._*`` files, evaluator sub-folders, stray files), so a
data preparation written for the real corpora reads them unchanged.

The audio is a speech-like harmonic signal: a voice source with an f0 contour
(declination, accents, final movement, jitter), harmonics with an
emotion-dependent spectral tilt and breathiness, a syllable-rate amplitude
envelope, vowel-like formant coloring and a noise floor. Pitch level and
range, loudness, speaking rate, tilt and breathiness depend on the emotion,
the speaker (female voices are higher) and chance, so the classes overlap but
are learnable.

Command line::

    python -m speechbrain_ptapt.testing.synthetic iemocap OUT [--seed N]
        [--turns_per_dialog N] [--dialogs_per_session N] [--syllables N]
    python -m speechbrain_ptapt.testing.synthetic savee OUT [--layout original|flat]
        [--seed N] [--per_emotion N] [--neutral N]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, sosfilt

__all__ = [
    "EMOTION_OF_CODE",
    "EMOTION_PROFILES",
    "IEMOCAP_CODES",
    "IEMOCAP_HEADER",
    "IEMOCAP_SAMPLE_RATE",
    "SAVEE_CODES",
    "SAVEE_SAMPLE_RATE",
    "SAVEE_SPEAKERS",
    "EmotionProfile",
    "SpeakerVoice",
    "SyntheticCorpus",
    "SyntheticUtterance",
    "main",
    "make_iemocap",
    "make_savee",
    "make_voice",
    "spoken_seconds",
    "synthesize_utterance",
]

IEMOCAP_SAMPLE_RATE = 16000
"""Sample rate of the IEMOCAP wavs, in Hz."""

SAVEE_SAMPLE_RATE = 44100
"""Sample rate of the SAVEE wavs, in Hz."""

SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
SAVEE_CODES = ("a", "d", "f", "h", "n", "sa", "su")
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

# Share of each consensus code among generated IEMOCAP turns: the 4-class
# subset (neu, hap, exc, sad, ang) dominates, the rest is what a 4-class
# preparation drops.
_IEMOCAP_CODE_WEIGHTS = {
    "neu": 0.24,
    "hap": 0.08,
    "exc": 0.12,
    "sad": 0.14,
    "ang": 0.14,
    "fru": 0.12,
    "xxx": 0.10,
    "oth": 0.015,
    "sur": 0.015,
    "fea": 0.01,
    "dis": 0.01,
}
# Codes every session carries at least once (when it has enough turns); the
# rare codes rotate over sessions so that a five-session corpus has them all.
_IEMOCAP_GUARANTEED = ("neu", "hap", "exc", "sad", "ang", "fru", "xxx")
_IEMOCAP_RARE = ("oth", "sur", "fea", "dis")

# Category names of the IEMOCAP evaluator lines (``C-E2:<TAB>Anger;<TAB>()``).
_CATEGORY_NAME = {
    "neu": "Neutral state",
    "hap": "Happiness",
    "exc": "Excited",
    "sad": "Sadness",
    "ang": "Anger",
    "fru": "Frustration",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}
# Mean (valence, activation, dominance) on the 1-5 scale of the A- lines.
_VAD_MEAN = {
    "neu": (3.0, 2.5, 2.5),
    "hap": (4.0, 3.0, 3.0),
    "exc": (4.0, 3.6, 3.4),
    "sad": (2.0, 2.0, 2.1),
    "ang": (1.8, 4.0, 4.0),
    "fru": (2.0, 3.2, 3.3),
    "sur": (3.4, 3.6, 3.0),
    "fea": (2.0, 3.5, 2.0),
    "dis": (2.0, 3.0, 3.4),
    "oth": (2.8, 3.0, 3.0),
    "xxx": (2.7, 3.0, 3.0),
}
_WORDS = (
    "well", "I", "you", "know", "what", "just", "really", "that", "is", "not", "it",
    "okay", "yeah", "we", "can", "go", "now", "why", "so", "the", "thing", "right",
    "oh", "no", "here", "there", "think", "mean", "please", "wait",
)  # fmt: skip

# Keys that separate the random streams of the generator, so that every
# voice, plan and utterance has its own reproducible stream.
_STREAM_IEMOCAP_VOICE = 1
_STREAM_IEMOCAP_PLAN = 2
_STREAM_IEMOCAP_AUDIO = 3
_STREAM_SAVEE_VOICE = 4
_STREAM_SAVEE_AUDIO = 5

_APPLEDOUBLE_SIZE = 4096  # bytes; the usual size of a macOS ._ file


# ----------------------------------------------------------------------------
# Public records
# ----------------------------------------------------------------------------


@dataclass
class SyntheticUtterance:
    """One generated utterance.

    Attributes:
        id: utterance id; IEMOCAP the turn name (``Ses01F_impro01_M013``),
            SAVEE speaker and original file stem (``DC_a01``).
        path: absolute path of the wav written.
        code: label code as written in the corpus (IEMOCAP ``neu``, ``hap``,
            ``exc``, ``sad``, ``ang``, ``fru``, ``xxx``, ...; SAVEE ``a``,
            ``d``, ``f``, ``h``, ``n``, ``sa``, ``su``).
        speaker: speaker id; IEMOCAP session and speaking actor
            (``Ses01_F``), SAVEE the speaker (``DC``).
        duration: length of the wav, in seconds.
    """

    id: str
    path: Path
    code: str
    speaker: str
    duration: float


@dataclass
class SyntheticCorpus:
    """A generated corpus.

    Attributes:
        root: the folder a user passes as ``data_folder``: the
            ``IEMOCAP_full_release`` folder; for SAVEE the folder that holds
            ``AudioData`` (original layout) or the flat ``ALL`` folder.
        utterances: every utterance written, in generation order.
        sample_rate: sample rate of every wav, in Hz.
    """

    root: Path
    utterances: list[SyntheticUtterance]
    sample_rate: int


# ----------------------------------------------------------------------------
# Prosody: emotions and voices
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionProfile:
    """Mean prosody of one emotion, before speaker and per-utterance variation.

    Attributes:
        pitch_st: f0 level relative to the speaker's neutral f0, in semitones.
        range_st: spread of the per-syllable pitch accents, in semitones.
        rate_hz: speaking rate, in syllables per second.
        level_db: loudness relative to neutral speech, in dB.
        brightness: ratio of successive harmonic amplitudes (0-1); higher
            means a flatter spectral tilt (a tenser, brighter voice).
        breathiness: share of aspiration noise in the voice source (0-1).
        jitter: standard deviation of the fast f0 perturbation, as a fraction
            of f0.
        final_st: pitch movement over the last 30 % of the utterance, in
            semitones (positive rises).
        stress: spread of the syllable amplitudes (0: all equally loud).
        pause_prob: probability that a syllable slot is a short pause.
    """

    pitch_st: float
    range_st: float
    rate_hz: float
    level_db: float
    brightness: float
    breathiness: float
    jitter: float
    final_st: float
    stress: float
    pause_prob: float


EMOTION_PROFILES: dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(
        pitch_st=0.0, range_st=1.5, rate_hz=4.0, level_db=0.0, brightness=0.80,
        breathiness=0.10, jitter=0.010, final_st=-2.0, stress=0.25, pause_prob=0.08,
    ),
    "happy": EmotionProfile(
        pitch_st=2.5, range_st=3.5, rate_hz=4.5, level_db=3.0, brightness=0.85,
        breathiness=0.10, jitter=0.012, final_st=1.0, stress=0.35, pause_prob=0.06,
    ),
    "excited": EmotionProfile(
        pitch_st=3.5, range_st=4.5, rate_hz=5.0, level_db=5.0, brightness=0.87,
        breathiness=0.08, jitter=0.012, final_st=0.0, stress=0.40, pause_prob=0.05,
    ),
    "sad": EmotionProfile(
        pitch_st=-2.0, range_st=0.8, rate_hz=2.9, level_db=-6.0, brightness=0.72,
        breathiness=0.28, jitter=0.015, final_st=-3.0, stress=0.15, pause_prob=0.15,
    ),
    "angry": EmotionProfile(
        pitch_st=2.0, range_st=3.0, rate_hz=4.8, level_db=7.0, brightness=0.91,
        breathiness=0.05, jitter=0.020, final_st=-4.0, stress=0.50, pause_prob=0.05,
    ),
    "frustrated": EmotionProfile(
        pitch_st=1.0, range_st=2.5, rate_hz=4.3, level_db=3.0, brightness=0.85,
        breathiness=0.12, jitter=0.015, final_st=-3.0, stress=0.35, pause_prob=0.08,
    ),
    "fear": EmotionProfile(
        pitch_st=4.5, range_st=2.5, rate_hz=5.4, level_db=-1.0, brightness=0.78,
        breathiness=0.30, jitter=0.040, final_st=2.0, stress=0.30, pause_prob=0.10,
    ),
    "disgust": EmotionProfile(
        pitch_st=-1.0, range_st=2.0, rate_hz=3.2, level_db=0.0, brightness=0.82,
        breathiness=0.18, jitter=0.020, final_st=-3.0, stress=0.30, pause_prob=0.10,
    ),
    "surprise": EmotionProfile(
        pitch_st=4.5, range_st=5.0, rate_hz=4.4, level_db=4.0, brightness=0.86,
        breathiness=0.12, jitter=0.015, final_st=6.0, stress=0.35, pause_prob=0.06,
    ),
}  # fmt: skip
"""Prosody of each emotion, keyed by emotion name."""

EMOTION_OF_CODE: dict[str, str] = {
    # IEMOCAP consensus codes
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustrated",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    # SAVEE file-name codes
    "a": "angry",
    "d": "disgust",
    "f": "fear",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprise",
}
"""Emotion name of each corpus label code that has a single prosody profile."""

# Codes without a profile of their own: ``xxx`` (evaluators disagreed) blends
# two of the common emotions, ``oth`` blends two of any.
_BLEND_POOLS = {
    "xxx": ("neutral", "happy", "excited", "sad", "angry", "frustrated"),
    "oth": tuple(EMOTION_PROFILES),
}


@dataclass(frozen=True)
class SpeakerVoice:
    """Individual voice of one speaker.

    Attributes:
        name: speaker id (``Ses01_F``, ``DC``).
        gender: ``"F"`` or ``"M"``.
        f0_hz: median f0 of the speaker's neutral speech, in Hz.
        formant_scale: factor on the vowel formant frequencies (shorter vocal
            tracts, e.g. female ones, have higher formants).
        brightness: offset added to the emotion's harmonic ratio.
        breathiness: offset added to the emotion's aspiration share.
        rate_scale: factor on the emotion's speaking rate.
        level_db: recording and voice loudness offset, in dB.
        expressiveness: factor on the emotion's pitch range.
    """

    name: str
    gender: str
    f0_hz: float
    formant_scale: float
    brightness: float
    breathiness: float
    rate_scale: float
    level_db: float
    expressiveness: float


def make_voice(name: str, gender: str, rng: np.random.Generator) -> SpeakerVoice:
    """Draw a speaker's voice.

    Args:
        name: speaker id stored in the voice.
        gender: ``"F"`` (f0 around 215 Hz) or ``"M"`` (f0 around 118 Hz).
        rng: source of the individual offsets.

    Returns:
        The voice.
    """
    if gender not in ("F", "M"):
        raise ValueError(f"gender must be 'F' or 'M', got {gender!r}")
    female = gender == "F"
    return SpeakerVoice(
        name=name,
        gender=gender,
        f0_hz=float(rng.normal(215.0, 18.0) if female else rng.normal(118.0, 10.0)),
        formant_scale=float((1.16 if female else 1.0) * rng.normal(1.0, 0.04)),
        brightness=float(rng.normal(0.0, 0.025)),
        breathiness=float(rng.normal(0.04 if female else 0.0, 0.03)),
        rate_scale=float(np.exp(rng.normal(0.0, 0.08))),
        level_db=float(rng.normal(0.0, 1.5)),
        expressiveness=float(np.exp(rng.normal(0.0, 0.15))),
    )


def _profile_for(emotion: str, rng: np.random.Generator) -> EmotionProfile:
    """Prosody profile of an emotion name or a corpus label code.

    ``xxx`` and ``oth`` get a random blend of two profiles (drawn from ``rng``).
    """
    if emotion in EMOTION_PROFILES:
        return EMOTION_PROFILES[emotion]
    if emotion in EMOTION_OF_CODE:
        return EMOTION_PROFILES[EMOTION_OF_CODE[emotion]]
    if emotion in _BLEND_POOLS:
        first, second = rng.choice(_BLEND_POOLS[emotion], size=2, replace=False)
        weight = float(rng.uniform(0.3, 0.7))
        a, b = EMOTION_PROFILES[str(first)], EMOTION_PROFILES[str(second)]
        return EmotionProfile(
            **{
                f.name: weight * getattr(a, f.name) + (1.0 - weight) * getattr(b, f.name)
                for f in fields(EmotionProfile)
            }
        )
    known = sorted(set(EMOTION_PROFILES) | set(EMOTION_OF_CODE) | set(_BLEND_POOLS))
    raise ValueError(f"unknown emotion {emotion!r}; expected one of {known}")


# ----------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------

# Formants (F1, F2, F3) of three vowels of an adult male voice, in Hz, and
# their bandwidths, in Hz.
_VOWEL_FORMANTS_HZ = np.array(
    [[730.0, 1090.0, 2440.0], [270.0, 2290.0, 3010.0], [300.0, 870.0, 2240.0]]
)
_FORMANT_BANDWIDTHS_HZ = np.array([80.0, 100.0, 140.0])


def _formant_sos(
    formants_hz: np.ndarray, bandwidths_hz: np.ndarray, sample_rate: float
) -> np.ndarray:
    """Second-order sections of a cascade of unit-DC-gain resonators.

    Args:
        formants_hz: centre frequencies, in Hz.
        bandwidths_hz: bandwidths, in Hz.
        sample_rate: in Hz.

    Returns:
        Array of shape (n_formants, 6) for ``scipy.signal.sosfilt``.
    """
    radius = np.exp(-np.pi * bandwidths_hz / sample_rate)
    angle = 2.0 * np.pi * np.minimum(formants_hz, 0.45 * sample_rate) / sample_rate
    a1 = -2.0 * radius * np.cos(angle)
    a2 = radius**2
    gain = 1.0 + a1 + a2
    zeros = np.zeros_like(gain)
    return np.stack([gain, zeros, zeros, np.ones_like(gain), a1, a2], axis=1)


@dataclass(frozen=True)
class _Prosody:
    """One utterance's prosody: the emotion's mean, the speaker's offsets, chance."""

    pitch_st: float
    range_st: float
    rate_hz: float
    level_db: float
    brightness: float
    breathiness: float
    jitter: float
    final_st: float
    stress: float


def _utterance_prosody(
    profile: EmotionProfile, voice: SpeakerVoice, rng: np.random.Generator
) -> _Prosody:
    """Draws one utterance's prosody around the emotion's and the speaker's."""
    pitch_st = profile.pitch_st + rng.normal(0.0, 1.2)
    range_st = profile.range_st * voice.expressiveness * np.exp(rng.normal(0.0, 0.25))
    rate_hz = profile.rate_hz * voice.rate_scale * np.exp(rng.normal(0.0, 0.12))
    level_db = profile.level_db + voice.level_db + rng.normal(0.0, 2.0)
    brightness = np.clip(profile.brightness + voice.brightness + rng.normal(0.0, 0.03), 0.55, 0.96)
    breathiness = np.clip(profile.breathiness + voice.breathiness + rng.normal(0.0, 0.04), 0.0, 0.7)
    jitter = profile.jitter * np.exp(rng.normal(0.0, 0.3))
    final_st = profile.final_st + rng.normal(0.0, 1.0)
    stress = np.clip(profile.stress + rng.normal(0.0, 0.05), 0.0, 0.9)
    return _Prosody(
        pitch_st, range_st, rate_hz, level_db, brightness, breathiness, jitter, final_st, stress
    )


def _speech_span_seconds(total_s: float, rng: np.random.Generator) -> tuple[float, float]:
    """(start, stop) of the speech in seconds, between a short leading and trailing
    silence that together take at most 40 % of ``total_s``."""
    lead_s, trail_s = rng.uniform(0.02, 0.10, size=2)
    if lead_s + trail_s > 0.4 * total_s:
        shrink = 0.4 * total_s / (lead_s + trail_s)
        lead_s, trail_s = lead_s * shrink, trail_s * shrink
    return lead_s, total_s - trail_s


@dataclass
class _Syllables:
    """Syllable slots (some of them pauses) covering the speech: times in seconds,
    amplitudes (0 for a pause), consonant onset strengths and vowel indices."""

    starts: np.ndarray
    ends: np.ndarray
    centres: np.ndarray
    amp: np.ndarray
    onset: np.ndarray
    vowel: np.ndarray


def _syllable_slots(
    start_s: float,
    stop_s: float,
    prosody: _Prosody,
    pause_prob: float,
    rng: np.random.Generator,
) -> _Syllables:
    """Draws the syllable slots covering the speech span ``[start_s, stop_s]``."""
    active_s = stop_s - start_s
    n_slots = int(np.ceil(active_s * prosody.rate_hz * 3.0)) + 8
    slot_s = np.exp(rng.normal(0.0, 0.3, n_slots)) / prosody.rate_hz
    pause = rng.random(n_slots) < pause_prob
    pause[0] = False
    slot_s[pause] = rng.uniform(0.08, 0.25, int(pause.sum()))
    starts = start_s + np.concatenate([[0.0], np.cumsum(slot_s)[:-1]])
    count = max(1, int(np.searchsorted(starts, stop_s)))
    starts = starts[:count]
    pause = pause[:count]
    ends = np.minimum(starts + slot_s[:count], stop_s)
    ends[-1] = stop_s
    centres = 0.5 * (starts + ends)
    amp = np.clip(1.0 + prosody.stress * rng.normal(0.0, 1.0, count), 0.25, 1.6)
    amp[pause] = 0.0
    onset = rng.uniform(0.0, 1.0, count) * (rng.random(count) < 0.6)
    vowel = rng.integers(0, len(_VOWEL_FORMANTS_HZ), count)
    return _Syllables(starts, ends, centres, amp, onset, vowel)


def _syllable_envelopes(
    syllables: _Syllables, t: np.ndarray, stop_s: float, sr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample syllable slot (0 before the first), voiced envelope and consonant
    onset envelope (both float32) at the sample times ``t`` (seconds, float32)."""
    f32 = np.float32
    n = t.size
    starts, ends = syllables.starts, syllables.ends
    # Per-sample syllable slot (-1 before the first) and position in it (0-1).
    marks = np.zeros(n + 1, dtype=np.int32)
    np.add.at(marks, np.minimum(np.ceil(starts * sr).astype(np.int64), n), 1)
    slot = np.cumsum(marks[:n]) - 1
    inside = (slot >= 0) & (t < stop_s)
    slot = np.maximum(slot, 0)
    inv_length = (1.0 / np.maximum(ends - starts, 1e-6)).astype(f32)
    u = np.clip((t - starts.astype(f32)[slot]) * inv_length[slot], 0.0, 1.0)
    gain = np.where(inside, syllables.amp.astype(f32)[slot], f32(0.0))
    consonant_share = f32(0.2)
    nucleus = np.clip((u - consonant_share) / (1 - consonant_share), 0.0, 1.0)
    voiced_env = gain * np.maximum(np.sin(f32(np.pi) * nucleus), 0.0) ** f32(0.6)
    burst = np.sin(f32(np.pi) * np.minimum(u / consonant_share, 1.0)) ** 2
    onset_env = (gain * syllables.onset.astype(f32)[slot]) * burst * (u < consonant_share)
    return slot, voiced_env, onset_env


def _f0_contour_hz(
    syllables: _Syllables,
    prosody: _Prosody,
    voice: SpeakerVoice,
    span_s: tuple[float, float, float],
    t: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """f0 in Hz at the sample times ``t`` (float64) and on its 5 ms grid: accents on
    syllables (louder ones higher), declination, a final rise or fall, then jitter.
    ``span_s``: (speech start, speech duration, utterance duration) in seconds."""
    start_s, active_s, total_s = span_s
    range_st, amp = prosody.range_st, syllables.amp
    grid = np.arange(0.0, total_s + 0.01, 0.005)
    accents = range_st * (0.6 * rng.normal(0.0, 1.0, amp.size) + 0.8 * (amp - 1.0))
    progress = np.clip((grid - start_s) / active_s, 0.0, 1.0)
    contour = (
        prosody.pitch_st
        + np.interp(grid, syllables.centres, accents)
        - (0.8 + 0.3 * range_st) * progress
        + prosody.final_st * np.clip((progress - 0.7) / 0.3, 0.0, 1.0)
    )
    kernel = np.hanning(9)
    kernel /= kernel.sum()
    contour = np.convolve(np.pad(contour, 4, mode="edge"), kernel, mode="valid")
    jitter = 1.0 + prosody.jitter * rng.normal(0, 1, grid.size)
    f0_grid = np.clip(voice.f0_hz * 2.0 ** (contour / 12.0) * jitter, 55.0, 550.0)
    return np.interp(t, grid, f0_grid), f0_grid


def _glottal_excitation(
    f0: np.ndarray, f0_max_hz: float, prosody: _Prosody, sr: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 excitation: a band-limited harmonic source mixed with aspiration noise
    by the utterance's breathiness."""
    f32 = np.float32
    # Band-limited harmonic source sum_{k=1..K} a^k sin(k theta) in closed form,
    # with theta (and K theta) wrapped in float64 before the float32 sines.
    cycles = np.cumsum(f0 / sr) + rng.uniform(0.0, 1.0)
    n_harmonics = max(1, int(0.45 * sr / f0_max_hz))
    theta = (2 * np.pi * (cycles - np.floor(cycles))).astype(f32)
    cycles *= n_harmonics
    theta_k = (2 * np.pi * (cycles - np.floor(cycles))).astype(f32)
    sin1, cos1, sin_k, cos_k = np.sin(theta), np.cos(theta), np.sin(theta_k), np.cos(theta_k)
    a = float(prosody.brightness)
    sin_k1 = sin_k * cos1 + cos_k * sin1  # sin((K + 1) theta)
    source = (
        f32(a) * sin1 - f32(a ** (n_harmonics + 1)) * sin_k1 + f32(a ** (n_harmonics + 2)) * sin_k
    ) / (f32(1.0 + a * a) - f32(2.0 * a) * cos1)
    source *= f32(1.0 / np.sqrt(0.5 * a * a * (1.0 - a ** (2 * n_harmonics)) / (1.0 - a * a)))
    # Aspiration: high-passed noise, louder in the open phase of each cycle.
    aspiration = lfilter(np.array([1.0, -0.95], f32), np.ones(1, f32), _white(rng, f0.size))
    aspiration *= f32(0.3 / 1.38) * (cos1 + f32(2.3))
    breathiness = prosody.breathiness
    return f32(np.sqrt(1.0 - breathiness)) * source + f32(np.sqrt(breathiness)) * aspiration


def _vowel_colored(
    excitation: np.ndarray,
    sample_vowel: np.ndarray,
    vowels: np.ndarray,
    voice: SpeakerVoice,
    sr: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The excitation through one formant resonator cascade per vowel, switched at
    syllable boundaries (where the voiced envelope is zero), at unit RMS."""
    f32 = np.float32
    formant_scale = voice.formant_scale * rng.uniform(0.97, 1.03)
    colored = np.zeros(excitation.size, dtype=f32)
    for v in np.unique(vowels):
        formants = _VOWEL_FORMANTS_HZ[v] * formant_scale
        sos = _formant_sos(formants, _FORMANT_BANDWIDTHS_HZ, sr).astype(f32)
        colored += sosfilt(sos, excitation) * (sample_vowel == v)
    colored /= np.sqrt(np.mean(colored**2)) + f32(1e-12)
    return colored


def _mix_speech(
    colored: np.ndarray,
    voiced_env: np.ndarray,
    onset_env: np.ndarray,
    level_db: float,
    sr: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Voiced speech plus frication at the consonant onsets, set to the utterance's
    level, over a faint noise floor, through a soft limiter (float32 in [-1, 1])."""
    f32 = np.float32
    n = colored.size
    # Frication: noise high-passed (first difference) and low-passed near 6 kHz.
    pole = np.exp(-2.0 * np.pi * min(6000.0, 0.4 * sr) / sr)
    fricative = lfilter(np.array([0.7, -0.7], f32), np.array([1.0, -pole], f32), _white(rng, n))
    speech = colored * voiced_env + f32(0.5) * fricative * onset_env
    level = 10.0 ** ((-24.0 + level_db) / 20.0) / (np.sqrt(np.mean(speech**2)) + 1e-12)
    speech *= f32(level)
    floor = lfilter(np.ones(1, f32), np.array([1.0, -0.6], f32), _white(rng, n))
    speech += floor * f32(10.0 ** (rng.normal(-60.0, 3.0) / 20.0) / 1.25)
    # Soft limiter: transparent at normal levels, keeps shouts inside [-1, 1].
    return (f32(0.95) * np.tanh(speech / f32(0.95))).astype(f32)


def synthesize_utterance(
    emotion: str,
    voice: SpeakerVoice,
    duration_seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Synthesize one speech-like utterance of an emotion.

    Args:
        emotion: an emotion name of :data:`EMOTION_PROFILES` or a corpus label
            code (IEMOCAP ``neu``/``hap``/``exc``/``sad``/``ang``/``fru``/
            ``sur``/``fea``/``dis``, SAVEE ``a``/``d``/``f``/``h``/``n``/``sa``/
            ``su``; ``xxx`` and ``oth`` blend two random emotions).
        voice: the speaker's voice.
        duration_seconds: length of the result, in seconds (rounded to whole
            samples).
        sample_rate: in Hz.
        rng: the only source of randomness; the same generator state gives
            the same samples.

    Returns:
        float32 mono waveform in [-1, 1], ``round(duration_seconds *
        sample_rate)`` samples long.
    """
    n = int(round(duration_seconds * sample_rate))
    if n <= 0:
        raise ValueError(f"duration_seconds={duration_seconds} gives no samples")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    profile = _profile_for(emotion, rng)
    sr = float(sample_rate)
    prosody = _utterance_prosody(profile, voice, rng)
    total_s = n / sr
    start_s, stop_s = _speech_span_seconds(total_s, rng)
    syllables = _syllable_slots(start_s, stop_s, prosody, profile.pause_prob, rng)
    # Sample-rate signals are float32 (about 2x less memory traffic and much
    # faster trigonometry than float64); contours stay float64.
    t = np.arange(n, dtype=np.float32) / np.float32(sr)  # seconds
    slot, voiced_env, onset_env = _syllable_envelopes(syllables, t, stop_s, sr)
    span_s = (start_s, stop_s - start_s, total_s)
    f0, f0_grid = _f0_contour_hz(syllables, prosody, voice, span_s, t, rng)
    excitation = _glottal_excitation(f0, f0_grid.max(), prosody, sr, rng)
    colored = _vowel_colored(excitation, syllables.vowel[slot], syllables.vowel, voice, sr, rng)
    return _mix_speech(colored, voiced_env, onset_env, prosody.level_db, sr, rng)


def spoken_seconds(
    emotion: str, voice: SpeakerVoice, syllables: int, rng: np.random.Generator
) -> float:
    """Length of a read sentence of ``syllables`` syllables, in seconds.

    Its duration follows the speaking rate of the emotion and the speaker (with
    the per-utterance spread :func:`synthesize_utterance` draws), its pauses, and
    a short leading and trailing silence: sad speech is slower, so longer, as in
    acted corpora where every emotion reads the same sentences.

    Args:
        emotion: an emotion name or a corpus label code (see :func:`synthesize_utterance`).
        voice: the speaker's voice.
        syllables: syllables of the sentence.
        rng: source of the per-utterance spread.

    Returns:
        The duration, in seconds.
    """
    if syllables < 1:
        raise ValueError(f"syllables must be at least 1, got {syllables}")
    profile = _profile_for(emotion, rng)
    rate_hz = profile.rate_hz * voice.rate_scale * np.exp(rng.normal(0.0, 0.12))
    pauses_s = syllables * profile.pause_prob / (1.0 - profile.pause_prob) * 0.165
    return float(syllables / rate_hz + pauses_s + rng.uniform(0.04, 0.20))


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of zero-mean, unit-variance white noise (uniform), float32."""
    return (rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(np.sqrt(12.0))


# ----------------------------------------------------------------------------
# Writing helpers
# ----------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent reproducible random stream for ``seed`` and ``keys``."""
    return np.random.default_rng([seed, *keys])


def _name_keys(name: str) -> list[int]:
    """Integer keys identifying a name in a random stream."""
    return [len(name), *(ord(c) for c in name)]


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit PCM wav (mono for 1-D audio, channels last otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sample_rate, subtype="PCM_16", format="WAV")


def _write_appledouble(path: Path) -> None:
    """Write the macOS AppleDouble companion ``._<name>`` beside ``path``."""
    header = (
        b"\x00\x05\x16\x07"  # AppleDouble magic
        + b"\x00\x02\x00\x00"  # version 2
        + b"Mac OS X        "
        + b"\x00\x02"  # two entries: Finder info, resource fork
        + b"\x00\x00\x00\x09\x00\x00\x00\x32\x00\x00\x0e\xb0"
        + b"\x00\x00\x00\x02\x00\x00\x0e\xe2\x00\x00\x01\x1e"
    )
    body = header + b"\x00" * (_APPLEDOUBLE_SIZE - len(header) - 4) + b"ATTR"
    (path.parent / f"._{path.name}").write_bytes(body)


def _write_ds_store(folder: Path) -> None:
    """Write a Finder ``.DS_Store`` file into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = b"\x00\x00\x00\x01Bud1" + b"\x00" * 2040 + b"DSDB"
    (folder / ".DS_Store").write_bytes(data)


def _check_common(min_seconds: float, max_seconds: float, seed: int) -> None:
    """Validate arguments shared by the corpus writers."""
    if not 0.1 <= min_seconds <= max_seconds:
        raise ValueError(
            f"need 0.1 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}"
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


# ----------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------


@dataclass
class _Turn:
    """One planned IEMOCAP turn; times in seconds on the dialog's timeline."""

    name: str
    letter: str
    code: str
    start: float
    end: float
    audio: np.ndarray
    categories: dict[str, str]  # evaluator -> "Anger; Frustration"
    attributes: dict[str, tuple[int, int, int]]  # evaluator -> (val, act, dom)


def _dialog_names(session: int, count: int) -> list[str]:
    """Dialog names of a session, alternating improvisations and scripts.

    The letter after the session number (the actor who wore the markers)
    follows F, M, M, F, ...; script parts run ``script01_1``, ``script01_2``,
    ``script01_3``, ``script02_1``, ...
    """
    names = []
    for j in range(count):
        letter = "FM"[(j + j // 2) % 2]
        pair = j // 2
        if j % 2 == 0:
            kind = f"impro{pair + 1:02d}"
        else:
            kind = f"script{pair // 3 + 1:02d}_{pair % 3 + 1}"
        names.append(f"Ses{session:02d}{letter}_{kind}")
    return names


def _iemocap_code_deck(n_turns: int, session_index: int, rng: np.random.Generator) -> list[str]:
    """Shuffled consensus codes for the ``n_turns`` turns of one session.

    Counts follow ``_IEMOCAP_CODE_WEIGHTS``; every common code and one rare
    code (rotating with ``session_index``) appear at least once when the
    session has enough turns.
    """
    codes = list(_IEMOCAP_CODE_WEIGHTS)
    weights = np.array(list(_IEMOCAP_CODE_WEIGHTS.values()))
    weights /= weights.sum()
    guaranteed = [*_IEMOCAP_GUARANTEED, _IEMOCAP_RARE[session_index % len(_IEMOCAP_RARE)]]
    deck = list(guaranteed)
    for code, weight in zip(codes, weights):
        deck += [code] * max(0, int(weight * n_turns) - deck.count(code))
    if len(deck) < n_turns:
        deck += [str(c) for c in rng.choice(codes, size=n_turns - len(deck), p=weights)]
    deck = [deck[i] for i in rng.permutation(len(deck))]
    return deck[:n_turns]


def _evaluations(
    code: str, evaluators: list[str], attribute_evaluators: list[str], rng: np.random.Generator
) -> tuple[dict[str, str], dict[str, tuple[int, int, int]]]:
    """Per-evaluator categories and (valence, activation, dominance) of one turn.

    A consensus code gets a majority of evaluators naming its category;
    ``xxx`` gets evaluators that all disagree.
    """
    names = list(_CATEGORY_NAME.values())
    categories: dict[str, str] = {}
    if code == "xxx":
        pool = [name for c, name in _CATEGORY_NAME.items() if c not in ("fea", "dis")]
        picks = rng.choice(pool, size=len(evaluators), replace=False)
        for evaluator, pick in zip(evaluators, picks):
            categories[evaluator] = str(pick)
    else:
        target = _CATEGORY_NAME[code]
        n_agree = len(evaluators) if rng.random() < 0.5 else len(evaluators) // 2 + 1
        agree = set(rng.choice(len(evaluators), size=n_agree, replace=False).tolist())
        for i, evaluator in enumerate(evaluators):
            if i in agree:
                label = target
                if rng.random() < 0.15:
                    label += "; " + str(rng.choice([x for x in names if x != target]))
            else:
                label = str(rng.choice([x for x in names if x != target]))
            categories[evaluator] = label
    mean = np.array(_VAD_MEAN[code])
    attributes = {}
    for evaluator in attribute_evaluators:
        val, act, dom = np.clip(np.rint(rng.normal(mean, 0.7)), 1, 5).astype(int).tolist()
        attributes[evaluator] = (val, act, dom)
    return categories, attributes


def _plan_dialog(
    dialog: str,
    codes: list[str],
    voices: dict[str, SpeakerVoice],
    min_seconds: float,
    max_seconds: float,
    plan_rng: np.random.Generator,
    audio_seed: list[int],
    syllables: int | None = None,
) -> tuple[list[_Turn], list[str], list[str]]:
    """Plan and synthesize the turns of one dialog (durations: see :func:`make_iemocap`).

    Returns:
        The turns in time order, the categorical evaluators and the attribute
        evaluators of the dialog.
    """
    n = len(codes)
    sr = IEMOCAP_SAMPLE_RATE
    letters = [str(plan_rng.choice(["F", "M"]))]
    for _ in range(n - 1):
        previous = letters[-1]
        letters.append(("M" if previous == "F" else "F") if plan_rng.random() < 0.8 else previous)
    if n >= 2 and len(set(letters)) == 1:
        letters[-1] = "M" if letters[0] == "F" else "F"

    numbers = sorted(plan_rng.choice(np.arange(1, 7), size=3, replace=False).tolist())
    evaluators = [f"E{k}" for k in numbers]
    self_evaluator = [f"{dialog[5]}1"] if plan_rng.random() < 0.5 else []
    evaluators += self_evaluator
    attribute_evaluators = [f"E{k}" for k in numbers[1:]] + self_evaluator

    turns: list[_Turn] = []
    counters = {"F": 0, "M": 0}
    clock = float(plan_rng.uniform(1.0, 8.0))
    for i, (letter, code) in enumerate(zip(letters, codes)):
        if syllables is None:
            seconds = plan_rng.uniform(min_seconds, max_seconds)
        else:
            spoken = spoken_seconds(code, voices[letter], syllables, plan_rng)
            seconds = min(max(spoken, min_seconds), max_seconds)
        n_samples = int(round(seconds * sr))
        start = round(clock, 4)
        end = round(start + n_samples / sr, 4)
        clock = end + float(plan_rng.uniform(0.15, 1.5))
        name = f"{dialog}_{letter}{counters[letter]:03d}"
        counters[letter] += 1
        audio = synthesize_utterance(code, voices[letter], n_samples / sr, sr, _rng(*audio_seed, i))
        categories, attributes = _evaluations(code, evaluators, attribute_evaluators, plan_rng)
        turns.append(_Turn(name, letter, code, start, end, audio, categories, attributes))
    return turns, evaluators, attribute_evaluators


def _emo_evaluation_text(turns: list[_Turn]) -> str:
    """Text of a dialog's consensus annotation file (``EmoEvaluation/<dialog>.txt``)."""
    lines = [IEMOCAP_HEADER, ""]
    for turn in turns:
        vad = np.mean(np.array(list(turn.attributes.values()), dtype=float), axis=0)
        lines.append(
            f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.name}\t{turn.code}\t"
            f"[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]"
        )
        for evaluator, label in turn.categories.items():
            lines.append(f"C-{evaluator}:\t{label};\t()")
        for evaluator, (val, act, dom) in turn.attributes.items():
            lines.append(f"A-{evaluator}:\tval {val}; act {act}; dom  {dom};\t()")
        lines.append("")
    return "\n".join(lines) + "\n"


def _transcription_text(turns: list[_Turn], rng: np.random.Generator) -> str:
    """Text of a dialog's transcription file (``transcriptions/<dialog>.txt``)."""
    lines = []
    for turn in turns:
        words = rng.choice(_WORDS, size=int(rng.integers(2, 9))).tolist()
        sentence = " ".join(words) + str(rng.choice([".", "?", "!", "."]))
        sentence = sentence[0].upper() + sentence[1:]
        lines.append(f"{turn.name} [{turn.start:08.4f}-{turn.end:08.4f}]: {sentence}")
    return "\n".join(lines) + "\n"


def _write_iemocap_junk(
    session_dir: Path,
    dialog: str,
    turns: list[_Turn],
    evaluators: list[str],
    attribute_evaluators: list[str],
) -> None:
    """Write what real copies carry besides the data a preparation needs.

    AppleDouble ``._*`` files beside wavs, folders and annotation files,
    ``.DS_Store`` files, a ``.pk`` file in the wav folder, the
    ``Categorical``, ``Attribute`` and ``Self-evaluation`` sub-folders of
    ``EmoEvaluation`` and the two-channel full-dialog recording.
    """
    sr = IEMOCAP_SAMPLE_RATE
    wav_dir = session_dir / "sentences" / "wav" / dialog
    emo_dir = session_dir / "dialog" / "EmoEvaluation"
    for turn in turns:
        _write_appledouble(wav_dir / f"{turn.name}.wav")
    _write_appledouble(wav_dir)
    spans = {turn.name: (turn.start, turn.end) for turn in turns}
    pk_path = wav_dir / f"{dialog}.pk"
    pk_path.write_bytes(pickle.dumps(spans, protocol=2))
    _write_appledouble(pk_path)
    _write_ds_store(wav_dir)
    _write_ds_store(wav_dir.parent)
    _write_ds_store(session_dir)
    _write_ds_store(emo_dir)
    _write_appledouble(emo_dir / f"{dialog}.txt")
    _write_appledouble(session_dir / "dialog" / "transcriptions" / f"{dialog}.txt")

    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (emo_dir / sub).mkdir(parents=True, exist_ok=True)
    for evaluator in evaluators:
        tag = evaluator.lower() if evaluator.startswith("E") else evaluator
        text = "".join(f"{t.name} :{t.categories[evaluator]}; ()\n" for t in turns)
        (emo_dir / "Categorical" / f"{dialog}_{tag}_cat.txt").write_text(text)
    for evaluator in attribute_evaluators:
        tag = evaluator.lower() if evaluator.startswith("E") else evaluator
        lines = []
        for t in turns:
            val, act, dom = t.attributes[evaluator]
            lines.append(f"{t.name} :act {act}; val {val}; dom  {dom}; ()\n")
        text = "".join(lines)
        (emo_dir / "Attribute" / f"{dialog}_{tag}_atr.txt").write_text(text)
    (emo_dir / "Self-evaluation" / f"{dialog}.anvil").write_text(
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        f'<annotation>\n  <head><video src="{dialog}.avi" /></head>\n  <body />\n'
        "</annotation>\n"
    )

    # Full-dialog recording: one channel per actor, the other actor audible
    # at -20 dB (cross-talk), silence between the turns.
    length = int(round((turns[-1].end + 1.5) * sr))
    dialog_audio = np.zeros((length, 2), dtype=np.float32)
    for turn in turns:
        first = int(round(turn.start * sr))
        own = 0 if turn.letter == "F" else 1
        piece = turn.audio[: length - first]
        dialog_audio[first : first + piece.size, own] += piece
        dialog_audio[first : first + piece.size, 1 - own] += 0.1 * piece
    dialog_wav = session_dir / "dialog" / "wav" / f"{dialog}.wav"
    _write_wav(dialog_wav, np.clip(dialog_audio, -1.0, 1.0), sr)
    _write_appledouble(dialog_wav)


def make_iemocap(
    out_dir: str | Path,
    sessions: Sequence[int] = (1, 2, 3, 4, 5),
    dialogs_per_session: int = 2,
    turns_per_dialog: int = 24,
    min_seconds: float = 0.6,
    max_seconds: float = 2.0,
    seed: int = 0,
    junk: bool = True,
    syllables: int | None = None,
) -> SyntheticCorpus:
    """Write a synthetic IEMOCAP in the layout of ``IEMOCAP_full_release``.

    Writes under ``out_dir/IEMOCAP_full_release/Session<N>/``:
    ``sentences/wav/<dialog>/<turn>.wav`` (16 kHz mono 16-bit PCM),
    ``dialog/EmoEvaluation/<dialog>.txt`` (consensus annotation) and
    ``dialog/transcriptions/<dialog>.txt``; with ``junk`` also macOS ``._*``
    and ``.DS_Store`` files, a ``.pk`` file per wav folder, the
    ``Categorical``/``Attribute``/``Self-evaluation`` sub-folders of
    ``EmoEvaluation`` and the two-channel ``dialog/wav/<dialog>.wav``.
    Existing files of the same names are overwritten; nothing is deleted.

    Each session has one female and one male actor; every dialog has turns
    of both. Consensus codes are mostly the 4-class ones (``neu``, ``hap``,
    ``exc``, ``sad``, ``ang``) with ``fru``, ``xxx`` and rarer ``oth``,
    ``sur``, ``fea``, ``dis`` turns.

    Args:
        out_dir: folder that receives ``IEMOCAP_full_release``.
        sessions: session numbers (1-99) to write.
        dialogs_per_session: dialogs per session.
        turns_per_dialog: turns (utterances) per dialog.
        min_seconds: shortest turn, in seconds.
        max_seconds: longest turn, in seconds.
        seed: non-negative seed; the same arguments give identical files.
        junk: also write the junk real copies carry.
        syllables: None: turn lengths drawn uniformly in [min_seconds,
            max_seconds]. A number: every turn reads a sentence of that many
            syllables, so its length follows the emotion's and the speaker's
            speaking rate (:func:`spoken_seconds`; sad turns are the longest),
            kept within [min_seconds, max_seconds]. With 7 syllables, 1 and 3 s:
            short turns (angry about 1.7 s, neutral 2.0 s, sad 2.7 s) whose
            length tells their emotion apart, as in acted corpora; masks whose
            share grows as utterances shorten then give the model a cue that
            vanishes at test time.

    Returns:
        The corpus; ``root`` is the ``IEMOCAP_full_release`` folder.
    """
    _check_common(min_seconds, max_seconds, seed)
    sessions = [int(s) for s in sessions]
    if (
        not sessions
        or len(set(sessions)) != len(sessions)
        or not all(1 <= s <= 99 for s in sessions)
    ):
        raise ValueError(f"sessions must be distinct numbers in 1..99, got {sessions}")
    if dialogs_per_session < 1 or turns_per_dialog < 2:
        raise ValueError("need dialogs_per_session >= 1 and turns_per_dialog >= 2")

    sr = IEMOCAP_SAMPLE_RATE
    root = Path(out_dir).resolve() / "IEMOCAP_full_release"
    root.mkdir(parents=True, exist_ok=True)
    utterances: list[SyntheticUtterance] = []
    for session_index, session in enumerate(sessions):
        session_dir = root / f"Session{session}"
        voices = {
            letter: make_voice(
                f"Ses{session:02d}_{letter}",
                letter,
                _rng(seed, _STREAM_IEMOCAP_VOICE, session, k),
            )
            for k, letter in enumerate("FM")
        }
        plan_rng = _rng(seed, _STREAM_IEMOCAP_PLAN, session)
        deck = _iemocap_code_deck(dialogs_per_session * turns_per_dialog, session_index, plan_rng)
        for j, dialog in enumerate(_dialog_names(session, dialogs_per_session)):
            codes = deck[j * turns_per_dialog : (j + 1) * turns_per_dialog]
            turns, evaluators, attribute_evaluators = _plan_dialog(
                dialog,
                codes,
                voices,
                min_seconds,
                max_seconds,
                plan_rng,
                [seed, _STREAM_IEMOCAP_AUDIO, session, j],
                syllables,
            )
            for turn in turns:
                path = session_dir / "sentences" / "wav" / dialog / f"{turn.name}.wav"
                _write_wav(path, turn.audio, sr)
                utterances.append(
                    SyntheticUtterance(
                        id=turn.name,
                        path=path,
                        code=turn.code,
                        speaker=f"Ses{session:02d}_{turn.letter}",
                        duration=turn.audio.size / sr,
                    )
                )
            emo_dir = session_dir / "dialog" / "EmoEvaluation"
            emo_dir.mkdir(parents=True, exist_ok=True)
            (emo_dir / f"{dialog}.txt").write_text(_emo_evaluation_text(turns))
            transcription_dir = session_dir / "dialog" / "transcriptions"
            transcription_dir.mkdir(parents=True, exist_ok=True)
            (transcription_dir / f"{dialog}.txt").write_text(_transcription_text(turns, plan_rng))
            if junk:
                _write_iemocap_junk(session_dir, dialog, turns, evaluators, attribute_evaluators)
    if junk:
        _write_ds_store(root)
    return SyntheticCorpus(root=root, utterances=utterances, sample_rate=sr)


# ----------------------------------------------------------------------------
# SAVEE
# ----------------------------------------------------------------------------


def make_savee(
    out_dir: str | Path,
    layout: str = "original",
    speakers: Sequence[str] = SAVEE_SPEAKERS,
    per_emotion: int = 15,
    neutral: int = 30,
    min_seconds: float = 0.6,
    max_seconds: float = 2.0,
    seed: int = 0,
    sample_rate: int = SAVEE_SAMPLE_RATE,
) -> SyntheticCorpus:
    """Write a synthetic SAVEE in one of the two layouts that circulate.

    ``layout="original"`` writes ``out_dir/AudioData/<SPK>/<code><NN>.wav``
    (the release) and returns ``root = out_dir``; ``layout="flat"`` writes
    ``out_dir/ALL/<SPK>_<code><NN>.wav`` (common re-packs) and returns
    ``root = out_dir/ALL``. Codes ``a``, ``d``, ``f``, ``h``, ``sa``, ``su``
    are numbered 01..``per_emotion``, ``n`` 01..``neutral``. Wavs are mono
    16-bit PCM at ``sample_rate``. All speakers are male, as in SAVEE. An
    utterance's audio depends only on the seed, speaker, code and number, so
    both layouts hold the same audio for the same seed.

    Args:
        out_dir: output folder.
        layout: ``"original"`` or ``"flat"``.
        speakers: speaker ids (letters and digits).
        per_emotion: utterances per speaker of each non-neutral emotion (1-99).
        neutral: neutral utterances per speaker (1-99).
        min_seconds: shortest utterance, in seconds.
        max_seconds: longest utterance, in seconds.
        seed: non-negative seed; the same arguments give identical files.
        sample_rate: in Hz.

    Returns:
        The corpus.
    """
    _check_common(min_seconds, max_seconds, seed)
    if layout not in ("original", "flat"):
        raise ValueError(f"layout must be 'original' or 'flat', got {layout!r}")
    if not 1 <= per_emotion <= 99 or not 1 <= neutral <= 99:
        raise ValueError("per_emotion and neutral must be in 1..99 (two-digit numbers)")
    speakers = list(speakers)
    if (
        not speakers
        or len(set(speakers)) != len(speakers)
        or not all(s.isalnum() for s in speakers)
    ):
        raise ValueError(f"speakers must be distinct alphanumeric ids, got {speakers}")

    out = Path(out_dir).resolve()
    root = out if layout == "original" else out / "ALL"
    utterances: list[SyntheticUtterance] = []
    for speaker in speakers:
        voice = make_voice(speaker, "M", _rng(seed, _STREAM_SAVEE_VOICE, *_name_keys(speaker)))
        for code_index, code in enumerate(SAVEE_CODES):
            for number in range(1, (neutral if code == "n" else per_emotion) + 1):
                rng = _rng(seed, _STREAM_SAVEE_AUDIO, *_name_keys(speaker), code_index, number)
                n_samples = int(round(rng.uniform(min_seconds, max_seconds) * sample_rate))
                audio = synthesize_utterance(code, voice, n_samples / sample_rate, sample_rate, rng)
                stem = f"{code}{number:02d}"
                if layout == "original":
                    path = out / "AudioData" / speaker / f"{stem}.wav"
                else:
                    path = root / f"{speaker}_{stem}.wav"
                _write_wav(path, audio, sample_rate)
                utterances.append(
                    SyntheticUtterance(
                        id=f"{speaker}_{stem}",
                        path=path,
                        code=code,
                        speaker=speaker,
                        duration=audio.size / sample_rate,
                    )
                )
    return SyntheticCorpus(root=root, utterances=utterances, sample_rate=sample_rate)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _summary(corpus: SyntheticCorpus, name: str, seconds: float) -> str:
    """Human-readable account of a written corpus."""
    codes = Counter(u.code for u in corpus.utterances)
    speakers = Counter(u.speaker for u in corpus.utterances)
    audio_s = sum(u.duration for u in corpus.utterances)
    return "\n".join(
        [
            f"{name}: wrote {len(corpus.utterances)} utterances "
            f"({audio_s:.1f} s of audio, {corpus.sample_rate} Hz) in {seconds:.1f} s",
            f"data_folder: {corpus.root}",
            "per label: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())),
            "per speaker: " + ", ".join(f"{s} {n}" for s, n in sorted(speakers.items())),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ptapt.testing.synthetic",
        description="Write a synthetic emotional speech corpus in the real "
        "IEMOCAP or SAVEE layout.",
    )
    sub = parser.add_subparsers(dest="corpus", required=True)
    iemocap = sub.add_parser("iemocap", help="IEMOCAP_full_release layout (16 kHz)")
    iemocap.add_argument("out_dir", type=Path, help="receives IEMOCAP_full_release/")
    iemocap.add_argument("--seed", type=int, default=0)
    iemocap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    iemocap.add_argument("--dialogs_per_session", type=int, default=2)
    iemocap.add_argument("--turns_per_dialog", type=int, default=24)
    iemocap.add_argument("--min_seconds", type=float, default=0.6)
    iemocap.add_argument("--max_seconds", type=float, default=2.0)
    iemocap.add_argument("--no_junk", action="store_true", help="omit ._* and other junk")
    iemocap.add_argument(
        "--syllables",
        type=int,
        default=None,
        help="turns read sentences of this many syllables: lengths follow the speaking rate",
    )
    savee = sub.add_parser("savee", help="SAVEE layout (44.1 kHz)")
    savee.add_argument("out_dir", type=Path)
    savee.add_argument("--layout", choices=["original", "flat"], default="original")
    savee.add_argument("--seed", type=int, default=0)
    savee.add_argument("--per_emotion", type=int, default=15)
    savee.add_argument("--neutral", type=int, default=30)
    savee.add_argument("--min_seconds", type=float, default=0.6)
    savee.add_argument("--max_seconds", type=float, default=2.0)
    savee.add_argument("--sample_rate", type=int, default=SAVEE_SAMPLE_RATE)
    args = parser.parse_args(argv)

    began = time.perf_counter()
    try:
        if args.corpus == "iemocap":
            corpus = make_iemocap(
                args.out_dir,
                sessions=args.sessions,
                dialogs_per_session=args.dialogs_per_session,
                turns_per_dialog=args.turns_per_dialog,
                min_seconds=args.min_seconds,
                max_seconds=args.max_seconds,
                seed=args.seed,
                junk=not args.no_junk,
                syllables=args.syllables,
            )
        else:
            corpus = make_savee(
                args.out_dir,
                layout=args.layout,
                per_emotion=args.per_emotion,
                neutral=args.neutral,
                min_seconds=args.min_seconds,
                max_seconds=args.max_seconds,
                seed=args.seed,
                sample_rate=args.sample_rate,
            )
    except ValueError as error:
        parser.error(str(error))
    print(_summary(corpus, args.corpus, time.perf_counter() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""speechbrain-ptapt: wav2vec 2.0 fine-tuning strategies for speech emotion recognition.

V-FT, TAPT and P-TAPT (Chen & Rudnicky, "Exploring wav2vec 2.0 fine-tuning for
improved speech emotion recognition", ICASSP 2022) as SpeechBrain Brain classes
and recipes.
"""

__version__ = "0.1.0"

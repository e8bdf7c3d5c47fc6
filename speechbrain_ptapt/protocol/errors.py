"""The base class of every error caused by the user's data, settings or files.

Command lines (the recipes, ``classify``, ``export``, the preparation scripts,
``domain_shift``) catch :class:`PtaptError` alone and report it as one line,
``error: ...``, without a traceback: its message names the file, folder or option
at fault and says what to do. Any other exception is a bug and keeps its traceback.

Each error class derives from :class:`PtaptError` and from the built-in class it
had before (``ValueError``, ``RuntimeError``, ``FileNotFoundError`` ...), so code
catching the built-in class still catches it.
"""

from __future__ import annotations

# Defined in the self-contained inference module (copied into exported models);
# re-exported here as the one base class of the package's user errors.
from speechbrain_ptapt.deploy.inference import AudioError, PtaptError

__all__ = [
    "AudioError",
    "InputError",
    "MissingFileError",
    "PtaptError",
    "StageSettingsError",
    "UnreadableCheckpointError",
]


class MissingFileError(PtaptError, FileNotFoundError):
    """A file or folder the user named, or one a stage needs from an earlier one, does
    not exist (a plain ``FileNotFoundError`` is a bug)."""


class InputError(PtaptError, ValueError):
    """A file or value the user gave that cannot be used as it is."""


class StageSettingsError(PtaptError, RuntimeError):
    """A stage's folder holds results or checkpoints of other settings or data
    (see :mod:`speechbrain_ptapt.protocol.stage_cache`)."""


class UnreadableCheckpointError(PtaptError, RuntimeError):
    """No checkpoint of a stage can be read (truncated or corrupt files)."""

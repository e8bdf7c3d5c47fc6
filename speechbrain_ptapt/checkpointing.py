"""Checkpointable random state, so a resumed run continues with the same random
numbers (masks, crops) as an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


@register_checkpoint_hooks
class RandomState:
    """Saves and restores the Python, NumPy and torch (CPU and CUDA) generators.

    Add it to a Checkpointer's recoverables: a run recovered from a checkpoint
    then draws exactly the numbers the uninterrupted run would have drawn.
    """

    @mark_as_saver
    def _save(self, path: str) -> None:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path: str, end_of_epoch: bool = True) -> None:
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

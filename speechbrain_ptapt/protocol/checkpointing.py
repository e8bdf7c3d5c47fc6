"""Checkpointing helpers: a Checkpointer whose checkpoints are only seen when
complete and that resumes from the newest readable one, and a checkpointable random
state, so a resumed run continues with the same random numbers (masks, crops) as an
uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    METAFNAME,
    Checkpoint,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.checkpoints import Checkpointer as SpeechBrainCheckpointer
from speechbrain.utils.distributed import ddp_barrier, ddp_prevent_block, if_main_process

from speechbrain_ptapt.protocol.errors import UnreadableCheckpointError

logger = logging.getLogger(__name__)

#: Prefix of a checkpoint folder being written (never listed as a checkpoint).
STAGING_PREFIX = "partial+"

#: File of a finished checkpoint listing every file it holds, written last.
CONTENTS_FILE = "contents.json"


def checkpoint_is_complete(folder: str | Path) -> bool:
    """Whether a checkpoint folder holds its :data:`CONTENTS_FILE` and every file
    that lists (a deletion cut short, whatever order it removed files in, fails)."""
    folder = Path(folder)
    try:
        names = json.loads((folder / CONTENTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((folder / name).is_file() for name in names)


def unreadable_reason(path: str | Path) -> str | None:
    """Why a checkpoint file cannot be read, or None when it looks readable.

    Unreadable: a missing or empty file; one starting with zero bytes (written, but
    never flushed to disk before a crash); a zip archive (``torch.save``'s format)
    that is cut short (its central directory, at the end, is missing) or whose
    entries fail their CRC check (a bad copy). Reading a whole archive costs about as
    much as loading it; ``torch.load`` itself gives only "PytorchStreamReader failed
    reading zip archive", without saying which checkpoint to drop.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "is empty"
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head == b"\x00" * 4:
            return "starts with zero bytes (written but never flushed to disk)"
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"is corrupt (its entry {bad} fails its CRC check)"
    except FileNotFoundError:
        return "is missing"
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as err:
        return f"is truncated or corrupt ({err})"
    except OSError as err:
        return f"cannot be read ({err})"
    return None


def checkpoint_problem(checkpoint: Checkpoint) -> tuple[Path, str] | None:
    """The first unreadable file of a checkpoint (:func:`unreadable_reason`) and why,
    or None when every file looks readable."""
    for name in sorted(checkpoint.paramfiles):
        path = Path(checkpoint.paramfiles[name])
        reason = unreadable_reason(path)
        if reason is not None:
            return path, reason
    return None


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of a checkpoint's file (weights only), or one clear error.

    Raises
    ------
    UnreadableCheckpointError
        The file is truncated or corrupt; the message names it and the checkpoint
        folder to delete.
    """
    path = Path(path)
    reason = unreadable_reason(path)
    if reason is not None:
        raise UnreadableCheckpointError(
            f"The checkpoint file {path} {reason}. Delete the checkpoint folder "
            f"{path.parent} and run the command again (the stage then uses its other "
            "checkpoints, or starts again from its beginning)."
        )
    return torch.load(path, map_location=map_location, weights_only=True)


class Checkpointer(SpeechBrainCheckpointer):
    """SpeechBrain's Checkpointer, with checkpoints that appear only once complete.

    SpeechBrain writes a checkpoint's ``CKPT.yaml`` first and its parameter files
    after it, and deletes old checkpoints file by file; a process killed in
    between would leave a folder taken for a checkpoint but missing files. Here a
    checkpoint is written into ``partial+CKPT+...`` (never listed), ends with
    :data:`CONTENTS_FILE`, and is renamed to its ``CKPT+...`` name only then; a
    folder counts as a checkpoint only when it holds that file and every file it
    lists (:func:`checkpoint_is_complete`), so a deletion cut short is ignored too.
    Leftovers of both kinds are removed at the next save (main process).

    A checkpoint can still be unreadable later: truncated by a bad copy or a full
    disk, or never flushed before a power cut. :meth:`recover_if_possible` then
    resumes from the newest readable one, logging which file it skipped and why, and
    stops with :class:`~speechbrain_ptapt.protocol.errors.UnreadableCheckpointError` (naming
    the file and the folder to delete) when none is readable; a checkpoint whose
    ``CKPT.yaml`` cannot be parsed is not listed. Arguments and use are SpeechBrain's.
    """

    _staging = False

    def _new_checkpoint_dirpath(self) -> Path:
        path = Path(super()._new_checkpoint_dirpath())
        return path.with_name(STAGING_PREFIX + path.name) if self._staging else path

    def _custom_checkpoint_dirpath(self, name: str) -> Path:
        path = Path(super()._custom_checkpoint_dirpath(name))
        return path.with_name(STAGING_PREFIX + path.name) if self._staging else path

    def _list_checkpoint_dirs(self) -> list[Path]:
        return [d for d in super()._list_checkpoint_dirs() if checkpoint_is_complete(d)]

    def list_checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints (see SpeechBrain's ``list_checkpoints``), leaving
        out, with a warning, those whose meta file cannot be read."""
        checkpoints = []
        for folder in self._list_checkpoint_dirs():
            try:
                (checkpoint,) = self._construct_checkpoint_objects([folder])
            except (OSError, ValueError, yaml.YAMLError) as err:
                logger.warning(
                    "Ignoring the checkpoint %s: its %s is unreadable (%s).", folder, METAFNAME, err
                )
                continue
            if not isinstance(checkpoint.meta, dict) or "unixtime" not in checkpoint.meta:
                logger.warning(
                    "Ignoring the checkpoint %s: its %s is incomplete.", folder, METAFNAME
                )
                continue
            checkpoints.append(checkpoint)
        return checkpoints

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ) -> Checkpoint | None:
        """Loads the checkpoint SpeechBrain's ``recover_if_possible`` would (the most
        recent by default), or, when one of its files is unreadable
        (:func:`checkpoint_problem`), the next one in the same order, logging the file
        skipped and why. Returns None when there is no checkpoint.

        Raises
        ------
        UnreadableCheckpointError
            There are checkpoints but none is readable; the message names the newest
            one's unreadable file and the folders to delete.
        """
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        skipped: list[tuple[Path, str]] = []
        for checkpoint in candidates:
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                if skipped:
                    logger.warning("Resuming from the older checkpoint %s.", checkpoint.path)
                self.load_checkpoint(checkpoint)
                return checkpoint
            path, reason = problem
            logger.warning(
                "Skipping the checkpoint %s: its file %s %s.", checkpoint.path, path.name, reason
            )
            skipped.append(problem)
        (path, reason), others = skipped[0], len(skipped) - 1
        folders = ", ".join(str(p.parent) for p, _ in skipped)
        raise UnreadableCheckpointError(
            f"Cannot resume from the checkpoints in {self.checkpoints_dir}: {path} {reason}"
            + (f", and the {others} older checkpoint(s) are unreadable too" if others else "")
            + f". Delete {folders} and run the command again to start this stage from its "
            "beginning (or restore the file from a backup)."
        )

    def remove_leftovers(self) -> None:
        """Deletes folders of checkpoints cut short by a crash (being written, or
        partly deleted with their contents list still there). Main process only;
        folders of other origin are left alone."""
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return
        for path in self.checkpoints_dir.iterdir():
            staging = path.name.startswith(STAGING_PREFIX + CKPT_PREFIX)
            broken = (
                path.name.startswith(CKPT_PREFIX)
                and (path / CONTENTS_FILE).exists()
                and not checkpoint_is_complete(path)
            )
            if path.is_dir() and (staging or broken):
                logger.info("Removing the unfinished checkpoint folder %s.", path)
                shutil.rmtree(path, ignore_errors=True)

    def save_checkpoint(
        self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO
    ) -> Checkpoint | None:
        """Saves a checkpoint (see SpeechBrain's ``Checkpointer.save_checkpoint``);
        it is listed only once every file is written. Returns the checkpoint on the
        main process, None on the others."""
        self.remove_leftovers()
        self._staging = True
        try:
            staged = super().save_checkpoint(
                meta={} if meta is None else meta,
                end_of_epoch=end_of_epoch,
                name=name,
                verbosity=logging.DEBUG,
            )
        finally:
            self._staging = False
        ddp_barrier()  # every process has written its files
        checkpoint = None
        if staged is not None:  # main process
            staging = Path(staged.path)
            names = sorted(p.name for p in staging.iterdir() if p.is_file())
            with open(staging / CONTENTS_FILE, "w", encoding="utf-8") as f:
                json.dump(names, f)
            final = staging.with_name(staging.name[len(STAGING_PREFIX) :])
            os.rename(staging, final)
            logger.log(
                verbosity,
                "Saved an %s checkpoint in %s",
                "end-of-epoch" if end_of_epoch else "intra-epoch",
                final,
            )
            paramfiles = {key: final / Path(p).name for key, p in staged.paramfiles.items()}
            checkpoint = Checkpoint(final, staged.meta, paramfiles)
        # Every process lists the same checkpoints from here on (deleting old ones
        # makes one collective call per deletion on every process).
        ddp_barrier()
        return checkpoint


class RandomState:
    """Saves and restores the Python, NumPy and torch (CPU and CUDA) generators.

    Add it to a Checkpointer's recoverables: a run recovered from a checkpoint
    then draws exactly the numbers the uninterrupted run would have drawn. Under
    DDP every process's generators are saved (gathered into the main process's
    file) and each process gets its own back when the number of processes is the
    same; otherwise every process gets the main process's.
    """

    @staticmethod
    def _state() -> dict:
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    @mark_as_saver
    def _save(self, path: str) -> None:
        states = [self._state()]
        if not ddp_prevent_block():  # runs on every process: gather their states
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, self._state())
        if if_main_process():
            torch.save({"ranks": states}, path)

    @mark_as_loader
    def _recover(self, path: str, end_of_epoch: bool = True) -> None:
        del end_of_epoch
        saved = torch.load(path, weights_only=False)
        states = saved["ranks"] if "ranks" in saved else [saved]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        state = states[rank] if len(states) == size else states[0]
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# Every process runs the saver (it gathers the processes' states; the main one writes).
register_checkpoint_hooks(RandomState, save_on_main_only=False)

"""Runs a recipe script as ``python SCRIPT ARGS`` would, with test hooks.

Used by the distributed and fault tests (directly or under ``torchrun``)::

    python tests/recipe_driver.py [--record=DIR] [--kill=SPEC] SCRIPT ARGS...

``--record=DIR``: every process appends to ``DIR/rank<r>.jsonl`` one line per
training batch of every Brain (``{"kind": "batch", "stage", "epoch", "ids"}``) and,
when a ``fit`` returns, a digest of the trained modules' weights
(``{"kind": "weights", "stage", "sha256"}``); ``stage`` is the brain's checkpoint
folder, which names the run or adaptation stage.

``--kill=SPEC``: the process kills itself with SIGKILL (no clean-up of any kind)
at a chosen point:

- ``call:MODULE:ATTRIBUTE:N``: when ``MODULE.ATTRIBUTE`` (a function, or
  ``Class.method``) is called the N-th time, before it runs;
- ``save:REGEX:N``: in the N-th ``torch.save`` to a path matching REGEX, after
  writing only the first half of the file's bytes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import os
import re
import runpy
import signal
import sys
from pathlib import Path
from typing import Any


def die() -> None:
    """Ends this process at once, as ``kill -9`` would."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_call_kill(module_name: str, attribute: str, count: int) -> None:
    """Kills the process at the ``count``-th call of ``module_name.attribute``."""
    owner: Any = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == count:
            die()
        return original(*args, **kwargs)

    setattr(owner, name, staticmethod(wrapper) if _is_static(owner, name) else wrapper)


def _is_static(owner: Any, name: str) -> bool:
    return isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod)


def install_save_kill(pattern: str, count: int) -> None:
    """Kills the process half-way through the ``count``-th ``torch.save`` to a path
    matching ``pattern``."""
    import torch

    original = torch.save
    regex = re.compile(pattern)
    calls = {"n": 0}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)) and regex.search(str(f)):
            calls["n"] += 1
            if calls["n"] == count:
                buffer = io.BytesIO()
                original(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(f, "wb") as out:
                    out.write(data[: len(data) // 2])
                die()
        return original(obj, f, *args, **kwargs)

    torch.save = save


def install_recorder(folder: Path) -> None:
    """Records the training batches and the final weights of every Brain."""
    import speechbrain as sb

    from speechbrain_ptapt.protocol.distributed import rank, unwrap
    from speechbrain_ptapt.stages.frame_emotion import FrameEmotionBrain
    from speechbrain_ptapt.stages.ptapt import PTAPTBrain
    from speechbrain_ptapt.stages.tapt import TAPTBrain
    from speechbrain_ptapt.stages.vft import VFTBrain

    folder.mkdir(parents=True, exist_ok=True)

    def write(entry: dict[str, Any]) -> None:
        with open(folder / f"rank{rank()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def stage_name(brain: sb.Brain) -> str:
        if brain.checkpointer is None:
            return type(brain).__name__
        return str(brain.checkpointer.checkpoints_dir)

    for cls in (VFTBrain, TAPTBrain, PTAPTBrain, FrameEmotionBrain):
        if "compute_forward" not in cls.__dict__:
            continue
        original_forward = cls.__dict__["compute_forward"]

        def compute_forward(self, batch, stage, _original=original_forward):
            if stage == sb.Stage.TRAIN:
                write(
                    {
                        "kind": "batch",
                        "stage": stage_name(self),
                        "epoch": int(getattr(self, "_recorded_epoch", 0)),
                        "ids": list(batch.id),
                    }
                )
            return _original(self, batch, stage)

        cls.compute_forward = compute_forward

    original_fit_train = sb.Brain._fit_train
    original_fit = sb.Brain.fit

    def fit_train(self, train_set, epoch, enable):
        self._recorded_epoch = epoch
        return original_fit_train(self, train_set, epoch, enable)

    def fit(self, *args, **kwargs):
        result = original_fit(self, *args, **kwargs)
        digest = hashlib.sha256()
        for name in sorted(self.modules):
            state = unwrap(self.modules[name]).state_dict()
            for key in sorted(state):
                digest.update(key.encode())
                digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
        write({"kind": "weights", "stage": stage_name(self), "sha256": digest.hexdigest()})
        return result

    sb.Brain._fit_train = fit_train
    sb.Brain.fit = fit


def main(argv: list[str]) -> None:
    """Parses the driver's own options, installs the hooks and runs the script."""
    record, kill = None, None
    while argv and argv[0].startswith("--"):
        option = argv.pop(0)
        if option.startswith("--record="):
            record = Path(option.split("=", 1)[1])
        elif option.startswith("--kill="):
            kill = option.split("=", 1)[1]
        else:
            raise SystemExit(f"unknown driver option {option}")
    script, args = Path(argv[0]).resolve(), argv[1:]
    sys.path.insert(0, str(script.parent))
    if record is not None:
        install_recorder(record)
    if kill is not None:
        kind, rest = kill.split(":", 1)
        if kind == "call":
            module_name, attribute, count = rest.split(":")
            install_call_kill(module_name, attribute, int(count))
        elif kind == "save":
            pattern, count = rest.rsplit(":", 1)
            install_save_kill(pattern, int(count))
        else:
            raise SystemExit(f"unknown kill point {kill}")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Stand-ins for the corpus preparation and the fine-tuning run, so that the recipe
loop (folds, runs, outlier rule, training subsets) is tested without training."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLASSES = ("neu", "hap", "sad", "ang")


def manifest(session: int, per_class: int, seconds: float = 90.0) -> dict[str, dict]:
    """A manifest of ``per_class`` utterances of each class, all ``seconds`` long."""
    return {
        f"Ses{session:02d}_{emo}_{i:03d}": {
            "wav": f"/nowhere/Ses{session:02d}_{emo}_{i:03d}.wav",
            "duration": seconds,
            "emo": emo,
            "session": session,
        }
        for emo in CLASSES
        for i in range(per_class)
    }


def fake_prepare(per_class: int = 10, seconds: float = 90.0) -> Callable[..., dict]:
    """A ``prepare(data_folder, save_folder, folds)`` writing leave-one-session-out
    manifests of 5 sessions of ``per_class`` utterances per class each."""

    def prepare(data_folder: str, save_folder: str, folds: list[str]) -> dict:
        sessions = {s: manifest(s, per_class, seconds) for s in range(1, 6)}
        paths = {}
        for fold in folds:
            folder = Path(save_folder) / f"fold_{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            train = {k: v for s, m in sessions.items() if str(s) != fold for k, v in m.items()}
            (folder / "train.json").write_text(json.dumps(train))
            (folder / "test.json").write_text(json.dumps(sessions[int(fold)]))
            paths[fold] = {"train": folder / "train.json", "test": folder / "test.json"}
        return paths

    return prepare


class FakeFineTune:
    """Replaces :func:`speechbrain_ptapt.stages.vft.fine_tune`: returns a constructed UA per
    (fold, seed), writes ``result.json`` like a finished run and skips runs that
    have one; ``trained`` lists the (fold, seed) it actually "trained", ``manifests``
    the training manifest and ``backbones`` the ``wav2vec2_hub`` of every call."""

    def __init__(self, uas: Callable[[str, int], float]) -> None:
        self.uas = uas
        self.trained: list[tuple[str, int]] = []
        self.manifests: list[str] = []
        self.backbones: list[str] = []

    def __call__(self, hparams: dict, run_opts: Any, train: str, test: str) -> dict:
        self.manifests.append(str(train))
        self.backbones.append(str(hparams["wav2vec2_hub"]))
        folder = Path(hparams["run_folder"])
        result_file = folder / "result.json"
        if result_file.is_file():
            return json.loads(result_file.read_text())
        fold, seed = str(hparams["fold"]), int(hparams["run_seed"])
        self.trained.append((fold, seed))
        ua = self.uas(fold, seed)
        result = {
            "fold": fold,
            "seed": seed,
            "ua": ua,
            "wa": ua + 0.01,
            "macro_f1": ua - 0.01,
            "confusion": [[1, 0], [0, 1]],
        }
        folder.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result))
        return result


def run_iemocap_recipe(method: str, argv: list[str], monkeypatch, prepare: Callable) -> None:
    """Runs ``recipes/IEMOCAP/train_<method>.py ARGV`` in this process, with ``prepare``
    standing in for its corpus preparation (``prepare_iemocap``)."""
    import importlib

    from conftest import IEMOCAP_RECIPES, run_recipe_script

    monkeypatch.syspath_prepend(str(IEMOCAP_RECIPES))
    monkeypatch.setattr(importlib.import_module("iemocap_prepare"), "prepare_iemocap", prepare)
    run_recipe_script(IEMOCAP_RECIPES / f"train_{method}.py", argv, monkeypatch)

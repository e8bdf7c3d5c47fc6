"""Shared fixtures: a tiny wav2vec2 and a small synthetic IEMOCAP corpus, built once."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IEMOCAP_RECIPES = REPO / "recipes" / "IEMOCAP"

#: Overrides that make the recipes fast with the tiny model.
TINY_VFT_OVERRIDES = [
    "--device=cpu",
    "--noprogressbar",
    "--runs=1",
    "--batch_size=8",
    "--lr=0.001",
    "--channel_mask_length=8",
]


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    """A tiny random wav2vec2 folder (config.json, model.safetensors, preprocessor_config.json)."""
    from speechbrain_ptapt.testing.tiny import make_tiny_wav2vec2

    return make_tiny_wav2vec2(tmp_path_factory.mktemp("tiny_wav2vec2"), seed=0)


@pytest.fixture(scope="session")
def iemocap_corpus(tmp_path_factory):
    """The default synthetic IEMOCAP corpus (5 sessions, 240 turns, real layout and junk)."""
    from speechbrain_ptapt.testing.synthetic import make_iemocap

    return make_iemocap(tmp_path_factory.mktemp("iemocap"), seed=0)


def run_recipe_script(script: Path, args: list[str], monkeypatch, cwd: Path | None = None):
    """Runs a recipe script in this process as ``python script args`` would."""
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.syspath_prepend(str(script.parent))
    if cwd is not None:
        monkeypatch.chdir(cwd)
    runpy.run_path(str(script), run_name="__main__")

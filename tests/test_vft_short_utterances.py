"""V-FT with the default masks learns on short utterances whose length tells their emotion.

The corpus is the synthetic IEMOCAP of 1-3 s turns that read a 7-syllable sentence, so
sad turns (slow speech) are the longest and angry or happy ones the shortest, as in
acted corpora. Masks drawn per utterance with at least two 15-frame spans cover 34 %
of an angry turn and 21 % of a sad one: the share of masked frames tells the classes
apart in training, a cue that vanishes at test time, and the model answers "sad" for
every test turn (UA 0.25). The authors' rule (one span count per batch over its padded
length) masks every turn alike, and the model learns about as well as without masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import IEMOCAP_RECIPES, run_recipe_script

from speechbrain_ptapt.testing.synthetic import make_iemocap

#: A short V-FT run with the tiny model (about 25 steps per epoch).
OPTIONS = [
    "--folds=[1]",
    "--runs=1",
    "--number_of_epochs=15",
    "--batch_size=8",
    "--lr=0.003",
    "--channel_mask_length=8",  # of the tiny model's 32 channels
    "--device=cpu",
    "--noprogressbar",
]
NO_MASKS = [
    "--time_mask_prob=0",
    "--time_mask_min_masks=0",
    "--channel_mask_prob=0",
    "--channel_mask_min_masks=0",
]


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
    """244 four-class turns of 1-3 s whose length follows the emotion's speaking rate."""
    return make_iemocap(
        tmp_path_factory.mktemp("short_iemocap"),
        turns_per_dialog=32,
        min_seconds=1.0,
        max_seconds=3.0,
        syllables=7,
        junk=False,
    )


@pytest.fixture(scope="module")
def results(short_corpus, tiny_wav2vec2, tmp_path_factory) -> dict[str, dict]:
    """Fold 1 of V-FT with the recipe's default masks and with every mask off."""
    outcome = {}
    for name, extra in (("default masks", []), ("no masks", NO_MASKS)):
        out = tmp_path_factory.mktemp("short_vft")
        args = [
            "hparams/vft.yaml",
            f"--data_folder={short_corpus.root}",
            f"--output_folder={out}",
            f"--wav2vec2_hub={tiny_wav2vec2}",
            *OPTIONS,
            *extra,
        ]
        with pytest.MonkeyPatch.context() as m:
            run_recipe_script(IEMOCAP_RECIPES / "train_vft.py", args, m)
        outcome[name] = json.loads(Path(out, "fold_1", "seed_1986", "result.json").read_text())
    return outcome


def test_short_turns_differ_in_length_by_emotion(short_corpus):
    seconds = {}
    for utt in short_corpus.utterances:
        seconds.setdefault(utt.code, []).append(utt.duration)
    mean = {code: sum(d) / len(d) for code, d in seconds.items()}
    assert all(1.0 <= d <= 3.0 for durations in seconds.values() for d in durations)
    assert mean["sad"] > mean["neu"] + 0.4 > mean["ang"] + 0.6


def test_default_masks_learn_short_utterances_as_well_as_no_masks(results):
    default, unmasked = results["default masks"], results["no masks"]
    predicted = [sum(column) for column in zip(*default["confusion"])]
    assert sum(count > 0 for count in predicted) >= 3, f"predictions per class: {predicted}"
    assert default["ua"] > 0.35, f"UA {default['ua']:.3f} is not above chance (0.25)"
    assert default["ua"] > unmasked["ua"] - 0.08, (default["ua"], unmasked["ua"])

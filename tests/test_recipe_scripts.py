"""What the recipe scripts build: one P-TAPT fold, run in this process, loads its yaml
and builds wav2vec2 no more often than its stages use them."""

from __future__ import annotations

import json
from collections import Counter

import hyperpyyaml
import pytest
from conftest import IEMOCAP_RECIPES, run_recipe_script
from transformers import PreTrainedModel

from speechbrain_ptapt.models import backbone


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Five sessions of 8 turns each: enough for one quick fold of every stage."""
    from speechbrain_ptapt.testing.synthetic import make_iemocap

    return make_iemocap(
        tmp_path_factory.mktemp("small_iemocap"), dialogs_per_session=1, turns_per_dialog=8
    )


def test_one_ptapt_fold_builds_each_wav2vec2_it_uses_once(
    small_corpus, tiny_wav2vec2, tmp_path, monkeypatch
):
    """Phase 1 (``w2v2_cnn``) reads wav2vec2's CNN once, phase 2 builds one backbone, each
    fine-tuning run one; nothing else loads weights, and the yaml is read once for the
    experiment, once for the fold's adaptation stages and once per fine-tuning run."""
    weights: Counter[str] = Counter()
    backbones: list[str] = []
    yaml_loads: list[str] = []

    original_from_pretrained = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        weights[cls.__name__] += 1
        return original_from_pretrained(cls, *args, **kwargs)

    original_init = backbone.Wav2Vec2Backbone.__init__

    def backbone_init(self, source, *args, **kwargs):
        backbones.append(str(source))
        original_init(self, source, *args, **kwargs)

    original_load = hyperpyyaml.load_hyperpyyaml

    def load_hyperpyyaml(stream, overrides=None, *args, **kwargs):
        yaml_loads.append(str((overrides or {}).get("fold", "experiment")))
        return original_load(stream, overrides, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(backbone.Wav2Vec2Backbone, "__init__", backbone_init)
    import speechbrain_ptapt.protocol.experiment as experiment

    monkeypatch.setattr(experiment, "load_hyperpyyaml", load_hyperpyyaml)
    out = tmp_path / "out"
    args = [
        "hparams/ptapt.yaml",
        f"--data_folder={small_corpus.root}",
        f"--output_folder={out}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[5]",
        "--runs=2",
        "--discard_outliers=False",
        "--device=cpu",
        "--noprogressbar",
        "--number_of_epochs=1",
        "--batch_size=8",
        "--channel_mask_length=8",
        "--frame_encoder=w2v2_cnn",
        "--frame_steps=2",
        "--frame_batch_size=8",
        "--frame_valid_every=2",
        "--n_clusters=[2,4]",
        "--ptapt_steps=2",
        "--ptapt_batch_seconds=4",
        "--ptapt_max_seconds=1.0",
        "--warmup_steps=1",
    ]
    run_recipe_script(IEMOCAP_RECIPES / "train_ptapt.py", args, monkeypatch)

    adapted = str(out / "fold_5" / "ptapt" / "adapted_wav2vec2")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seed"] for r in summary["folds"]["5"]["runs"]] == [1986, 1987]
    # phase 2 adapts the base model, and each of the two runs starts from its result
    assert backbones == [str(tiny_wav2vec2), adapted, adapted]
    # the phase-1 CNN, phase 2, two runs: no backbone is built and dropped
    assert weights == Counter({"Wav2Vec2Model": 4})
    assert yaml_loads == ["experiment", "5", "5", "5"]

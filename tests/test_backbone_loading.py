"""Loading the backbone: only wav2vec2 checkpoints, every weight loaded, and the hub
revision the recipes pin (the authors' facebook/wav2vec2-base commit) reaching every
load of a hub id while local folders load as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from speechbrain_ptapt.models.backbone import (
    AUTHORS_WAV2VEC2_REVISION,
    BackboneLoadError,
    Wav2Vec2Backbone,
    hub_revision,
    load_feature_extractor,
    load_pretrained,
)
from speechbrain_ptapt.models.frame_emotion import build_frame_model
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining
from speechbrain_ptapt.models.pseudo_label_heads import build_ptapt_model
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import HparamsError, check_overrides
from speechbrain_ptapt.stages.tapt import tapt_fingerprint
from speechbrain_ptapt.testing.tiny import tiny_wav2vec2_config

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "recipes").glob("*/hparams/*.yaml"))
HUB_ID = "facebook/wav2vec2-base"

#: Tiny configs of the other speech families transformers would load into wav2vec2.
_SMALL = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(8,) * 7,
    num_conv_pos_embedding_groups=2,
)
OTHER_FAMILIES = {
    "wavlm": (WavLMConfig, WavLMModel, {"num_conv_pos_embeddings": 4}),
    "hubert": (HubertConfig, HubertModel, {"num_conv_pos_embeddings": 4}),
    "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioModel, {}),
}


def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import: without this it tries the network.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def _hub_cache(tmp_path: Path, model: Path, revision: str = AUTHORS_WAV2VEC2_REVISION) -> Path:
    """A hub cache holding ``model`` as facebook/wav2vec2-base at commit ``revision``
    only (no ``main`` branch), as ``snapshot_download(revision=...)`` leaves it."""
    cache = tmp_path / "hub_cache"
    shutil.copytree(model, cache / "models--facebook--wav2vec2-base" / "snapshots" / revision)
    return cache


# ----------------------------------------------------------------------------
# Other model families and incomplete checkpoints are refused
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(OTHER_FAMILIES))
def other_family(request, tmp_path_factory) -> tuple[str, Path]:
    model_type = request.param
    config_class, model_class, extra = OTHER_FAMILIES[model_type]
    folder = tmp_path_factory.mktemp(model_type.replace("-", "_"))
    model_class(config_class(**_SMALL, **extra)).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor().save_pretrained(str(folder))
    return model_type, folder


def test_other_model_families_are_refused_with_their_type_and_folder(other_family):
    model_type, folder = other_family
    loaders = {
        "V-FT / P-TAPT phase 2 backbone": lambda: Wav2Vec2Backbone(str(folder)),
        "TAPT model": lambda: Wav2Vec2Pretraining(str(folder)),
        "P-TAPT phase 1 w2v2_cnn": lambda: build_frame_model(
            "w2v2_cnn", 4, wav2vec2_hub=str(folder)
        ),
        "config only": lambda: load_pretrained(Wav2Vec2Config, str(folder)),
    }
    for what, load in loaders.items():
        with pytest.raises(BackboneLoadError) as err:
            load()
        message = str(err.value)
        assert f"'{model_type}'" in message and str(folder) in message, what
        assert "only wav2vec2" in message, what


@pytest.mark.parametrize("method", ["vft", "tapt", "ptapt"])
def test_recipes_stop_on_a_wavlm_folder_before_training(method, tmp_path, monkeypatch):
    from conftest import IEMOCAP_RECIPES, run_recipe_script

    folder = tmp_path / "wavlm"
    WavLMModel(WavLMConfig(**_SMALL, num_conv_pos_embeddings=4)).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor().save_pretrained(str(folder))
    out = tmp_path / "out"
    args = [
        f"hparams/{method}.yaml", f"--data_folder={tmp_path / 'no_corpus'}",
        f"--output_folder={out}", f"--wav2vec2_hub={folder}", "--device=cpu",
        "--noprogressbar", "--runs=1", "--folds=[2]",
    ]
    with pytest.raises(SystemExit) as exited:
        run_recipe_script(IEMOCAP_RECIPES / f"train_{method}.py", args, monkeypatch)
    message = exited.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "'wavlm'" in message and str(folder) in message
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("result.json"))


def _without(folder: Path, out: Path, weight: str) -> Path:
    """A copy of a save_pretrained folder whose safetensors lack ``weight``."""
    shutil.copytree(folder, out)
    state = load_file(str(out / "model.safetensors"))
    del state[weight]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_a_checkpoint_missing_an_encoder_weight_is_refused(tiny_wav2vec2, tmp_path):
    weight = "wav2vec2.encoder.layers.0.attention.k_proj.weight"
    folder = _without(tiny_wav2vec2, tmp_path / "cut", weight)
    for load in (lambda: Wav2Vec2Backbone(str(folder)), lambda: Wav2Vec2Pretraining(str(folder))):
        with pytest.raises(BackboneLoadError, match="encoder.layers.0.attention.k_proj.weight"):
            load()


def test_a_checkpoint_without_quantizer_is_refused_for_tapt(tiny_wav2vec2, tmp_path):
    """TAPT continues the quantizer's objective: a backbone-only folder (e.g. P-TAPT's)
    would start it from a random quantizer."""
    Wav2Vec2Backbone(str(tiny_wav2vec2)).save_pretrained(tmp_path / "backbone_only")
    with pytest.raises(BackboneLoadError, match="quantizer.codevectors"):
        Wav2Vec2Pretraining(str(tmp_path / "backbone_only"))


def test_unknown_weights_in_the_checkpoint_are_refused(tiny_wav2vec2, tmp_path):
    folder = tmp_path / "extra"
    shutil.copytree(tiny_wav2vec2, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["wav2vec2.adapter.proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BackboneLoadError, match="adapter.proj.weight"):
        Wav2Vec2Backbone(str(folder))


# ----------------------------------------------------------------------------
# Our own folders and the hub's checkpoint format still load
# ----------------------------------------------------------------------------


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tapt_and_ptapt_adapted_folders_load_without_error(tiny_wav2vec2, tmp_path):
    tapt = Wav2Vec2Pretraining(str(tiny_wav2vec2))
    tapt.save_pretrained(tmp_path / "tapt_adapted")  # what the TAPT stage writes
    again = Wav2Vec2Pretraining(str(tmp_path / "tapt_adapted"))
    assert _same_weights(tapt.model, again.model)
    fine_tuned = Wav2Vec2Backbone(str(tmp_path / "tapt_adapted"))
    assert _same_weights(fine_tuned.model, tapt.model.wav2vec2)

    ptapt = build_ptapt_model(str(tiny_wav2vec2), None, [4, 8])
    ptapt.save_pretrained(tmp_path / "ptapt_adapted")  # what the P-TAPT stage writes
    assert _same_weights(
        Wav2Vec2Backbone(str(tmp_path / "ptapt_adapted")).model, ptapt.backbone.model
    )


def test_a_missing_or_unused_mask_embedding_is_no_error(tiny_wav2vec2, tmp_path):
    """With every mask probability at 0 transformers builds no masked_spec_embed: a
    checkpoint may then lack it, or hold one the model does not use."""
    config = tiny_wav2vec2_config()
    config.mask_time_prob = 0.0
    Wav2Vec2ForPreTraining(config).save_pretrained(str(tmp_path / "no_masks"))
    assert Wav2Vec2Backbone(str(tmp_path / "no_masks")).model.masked_spec_embed is not None
    # the checkpoint lacks it, the model has it
    load_pretrained(Wav2Vec2Model, str(tmp_path / "no_masks"), mask_time_prob=0.05)
    # the checkpoint has it, the model has none
    load_pretrained(Wav2Vec2Model, str(tiny_wav2vec2), mask_time_prob=0.0)


def test_the_hubs_old_checkpoint_format_loads_without_error(tiny_wav2vec2, tmp_path):
    """The pinned hub revision is a pytorch_model.bin with weight-norm weight_g/weight_v."""
    reference = Wav2Vec2ForPreTraining.from_pretrained(str(tiny_wav2vec2))
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in reference.state_dict().items()
    }
    assert any(k.endswith("weight_g") for k in legacy)
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(tiny_wav2vec2 / "config.json", folder)
    torch.save(legacy, folder / "pytorch_model.bin")
    assert _same_weights(Wav2Vec2Pretraining(str(folder)).model, reference)
    assert _same_weights(Wav2Vec2Backbone(str(folder)).model, reference.wav2vec2)


# ----------------------------------------------------------------------------
# The hub revision
# ----------------------------------------------------------------------------


def test_the_revision_reaches_every_load_of_a_hub_id(tiny_wav2vec2, tmp_path, monkeypatch):
    """The cache holds facebook/wav2vec2-base at the pinned commit only: each loader
    succeeds offline with the revision and fails without it."""
    _offline(monkeypatch)
    cache = str(_hub_cache(tmp_path, tiny_wav2vec2))
    rev = AUTHORS_WAV2VEC2_REVISION
    loaders = {
        "backbone": lambda r: Wav2Vec2Backbone(HUB_ID, save_path=cache, revision=r),
        "tapt": lambda r: Wav2Vec2Pretraining(HUB_ID, save_path=cache, revision=r),
        "ptapt": lambda r: build_ptapt_model(HUB_ID, cache, [4], revision=r),
        "frame": lambda r: build_frame_model(
            "w2v2_cnn", 4, wav2vec2_hub=HUB_ID, wav2vec2_folder=cache, wav2vec2_revision=r
        ),
        "config": lambda r: load_pretrained(Wav2Vec2Config, HUB_ID, cache, r),
    }
    for what, load in loaders.items():
        assert load(rev) is not None, what
        with pytest.raises(BackboneLoadError, match=HUB_ID):
            load(None)


def test_the_revision_is_passed_to_from_pretrained(tiny_wav2vec2, monkeypatch):
    """For a hub id the revision reaches the config check and ``from_pretrained``; a
    local folder gets none."""
    seen = []
    model = Wav2Vec2Model.from_pretrained(str(tiny_wav2vec2))
    clean = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}

    def config_spy(cls, source, **kwargs):
        seen.append(("config", source, kwargs.get("revision")))
        return {"model_type": "wav2vec2"}, {}

    def model_spy(cls, source, **kwargs):
        seen.append(("model", source, kwargs.get("revision")))
        return model, clean

    monkeypatch.setattr(Wav2Vec2Config, "get_config_dict", classmethod(config_spy))
    monkeypatch.setattr(Wav2Vec2Model, "from_pretrained", classmethod(model_spy))
    load_pretrained(Wav2Vec2Model, HUB_ID, None, "abc123")
    load_pretrained(Wav2Vec2Model, str(tiny_wav2vec2), None, "abc123")
    local = str(tiny_wav2vec2)
    assert seen == [
        ("config", HUB_ID, "abc123"), ("model", HUB_ID, "abc123"),
        ("config", local, None), ("model", local, None),
    ]


def test_recipes_pin_the_authors_revision_and_use_it_for_the_hub(
    tiny_wav2vec2, tmp_path, monkeypatch
):
    """Every recipe's fine-tuning backbone and adaptation models load the hub id at
    ``wav2vec2_revision`` (the authors' commit by default)."""
    _offline(monkeypatch)
    cache = str(_hub_cache(tmp_path, tiny_wav2vec2))
    for yaml in YAMLS:
        overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                     "wav2vec2_folder": cache, "channel_mask_length": 8}
        hparams = load_hparams(str(yaml), overrides)
        assert hparams["wav2vec2_revision"] == AUTHORS_WAV2VEC2_REVISION, yaml
        assert isinstance(hparams["wav2vec2"], Wav2Vec2Backbone), yaml
        if "tapt_model" in hparams:
            assert isinstance(hparams["tapt_model"](), Wav2Vec2Pretraining), yaml
        if "ptapt_model" in hparams:
            hparams["ptapt_model"]()
            frame = hparams["frame_model"]
            assert frame(frame_encoder="w2v2_cnn") is not None, yaml
        with pytest.raises(BackboneLoadError):
            load_hparams(str(yaml), {**overrides, "wav2vec2_revision": None})


def test_a_local_folder_ignores_the_revision_and_loads_offline(tiny_wav2vec2, monkeypatch):
    _offline(monkeypatch)
    assert hub_revision(str(tiny_wav2vec2), AUTHORS_WAV2VEC2_REVISION) is None
    assert hub_revision(HUB_ID, AUTHORS_WAV2VEC2_REVISION) == AUTHORS_WAV2VEC2_REVISION
    rev = AUTHORS_WAV2VEC2_REVISION
    Wav2Vec2Backbone(str(tiny_wav2vec2), revision=rev)
    Wav2Vec2Pretraining(str(tiny_wav2vec2), revision=rev)
    build_frame_model("w2v2_cnn", 4, wav2vec2_hub=str(tiny_wav2vec2), wav2vec2_revision=rev)


def test_a_revision_without_preprocessor_config_gets_wav2vec2_base_preprocessing(
    tiny_wav2vec2, tmp_path, monkeypatch
):
    """A revision the hub reported without preprocessor_config.json (huggingface_hub's
    .no_exist marker) gets wav2vec2-base's settings; an unknown absence stays an error."""
    _offline(monkeypatch)
    rev = AUTHORS_WAV2VEC2_REVISION
    cache = _hub_cache(tmp_path, tiny_wav2vec2)
    repo = cache / "models--facebook--wav2vec2-base"
    (repo / "snapshots" / rev / "preprocessor_config.json").unlink()
    with pytest.raises(BackboneLoadError):
        load_feature_extractor(HUB_ID, str(cache), rev)
    (repo / ".no_exist" / rev).mkdir(parents=True)
    (repo / ".no_exist" / rev / "preprocessor_config.json").touch()
    extractor = load_feature_extractor(HUB_ID, str(cache), rev)
    assert extractor.do_normalize and extractor.sampling_rate == 16000


def test_the_revision_enters_the_tapt_fingerprint_for_a_hub_id_only(tmp_path):
    manifest = tmp_path / "train.json"
    manifest.write_text('{"u1": {"wav": "a.wav", "duration": 1.0, "emo": "neu"}}')
    base = {
        "sample_rate": 16000, "tapt_seed": 1, "tapt_steps": 1, "tapt_batch_size": 1,
        "warmup_steps": 0, "tapt_flat_fraction": 0.0, "tapt_lr": 1e-4,
        "tapt_max_seconds": 1.0, "tapt_num_buckets": 2, "tapt_gumbel_temperature": 2.0,
        "tapt_max_grad_norm": 1.0, "wav2vec2_revision": "abc",
        "tapt_loss_reduction": "sum", "tapt_diversity_scaling": "unscaled",
    }
    hub = tapt_fingerprint({**base, "wav2vec2_hub": HUB_ID}, manifest)
    assert hub["wav2vec2_revision"] == "abc"
    other = {**base, "wav2vec2_hub": HUB_ID, "wav2vec2_revision": "def"}
    assert tapt_fingerprint(other, manifest) != hub
    local = tapt_fingerprint({**base, "wav2vec2_hub": str(tmp_path)}, manifest)
    assert "wav2vec2_revision" not in local


@pytest.mark.parametrize("value", ["main", None, AUTHORS_WAV2VEC2_REVISION])
def test_revision_overrides_are_checked(value):
    check_overrides(YAMLS[0], {"data_folder": "/data", "wav2vec2_revision": value})


@pytest.mark.parametrize("value", ["", 3])
def test_bad_revision_overrides_are_refused(value):
    with pytest.raises(HparamsError, match="wav2vec2_revision"):
        check_overrides(YAMLS[0], {"data_folder": "/data", "wav2vec2_revision": value})

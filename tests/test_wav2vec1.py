"""Tests for the fairseq-free wav2vec 1.0 model and checkpoint loader."""

from __future__ import annotations

import argparse
import enum
import sys
import types
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from speechbrain_ptapt.models.wav2vec1 import (
    WAV2VEC1_LARGE_URL,
    Wav2Vec1,
    Wav2Vec1CheckpointError,
    Wav2Vec1Config,
    ensure_wav2vec1_checkpoint,
    freeze_feature_extractor,
    load_wav2vec1,
    parse_conv_layers,
)

# The large model's arguments as written in fairseq's wav2vec README training command.
LARGE_FEATURE_LAYERS = (
    "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1)]"
)
LARGE_AGGREGATOR_LAYERS = (
    "[(512, 2, 1), (512, 3, 1), (512, 4, 1), (512, 5, 1), (512, 6, 1), (512, 7, 1), "
    "(512, 8, 1), (512, 9, 1), (512, 10, 1), (512, 11, 1), (512, 12, 1), (512, 13, 1)]"
)

# fairseq's default when `conv_feature_layers` is absent (Wav2VecConfig, three 1x1 layers).
FAIRSEQ_DEFAULT_FEATURE_LAYERS = LARGE_FEATURE_LAYERS[:-1] + ", (512, 1, 1)]"

# The names under which checkpoints saved before fairseq's renames store these arguments.
LEGACY_NAMES = {
    "arch": "audio_cpc",
    "task": "speech_pretraining",
    "criterion": "binary_cross_entropy",
}

# Same strides and kernels as the large extractor (same frame arithmetic), few channels,
# and an aggregator that changes width so a residual projection exists.
SMALL = Wav2Vec1Config(
    conv_feature_layers=((16, 10, 5), (16, 8, 4), (16, 4, 2), (16, 4, 2), (16, 4, 2), (16, 1, 1)),
    conv_aggregator_layers=((16, 2, 1), (16, 3, 1), (24, 4, 1)),
    prediction_steps=3,
)


# --------------------------------------------------------------------------------------
# Checkpoints shaped like fairseq's, written while fake fairseq/omegaconf modules exist
# --------------------------------------------------------------------------------------


def _fake_module(name: str, **classes: type) -> types.ModuleType:
    """A module called ``name`` exposing ``classes`` (re-homed into it for pickling)."""
    module = types.ModuleType(name)
    for attr, cls in classes.items():
        cls.__module__ = name
        cls.__qualname__ = attr
        setattr(module, attr, cls)
    return module


class FakeFairseqArgs:
    """Stands for fairseq's stored arguments: a plain object with attributes."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class FakeChoice(enum.Enum):
    """Stands for fairseq's ChoiceEnum values (pickled as ``Class(value)``)."""

    CNN = "cnn"
    NONE = "none"


class FakeMeter:
    """Stands for a fairseq meter kept in ``extra_state``."""

    def __init__(self) -> None:
        self.avg = 1.5
        self.count = 3


class FakeMeterDict(dict):
    """Stands for a dict subclass of fairseq (pickled with SETITEMS)."""


class FakeNode:
    """Stands for an omegaconf value node (value kept in ``_val``)."""

    def __init__(self, value: Any) -> None:
        self.__dict__["_val"] = value


class FakeDictConfig:
    """Stands for an omegaconf DictConfig (children kept in ``_content``)."""

    def __init__(self, content: dict[str, Any]) -> None:
        self.__dict__["_content"] = {
            k: v if isinstance(v, FakeDictConfig) else FakeNode(v) for k, v in content.items()
        }
        self.__dict__["_metadata"] = None


@contextmanager
def fake_fairseq_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``fairseq.*`` and ``omegaconf.*`` importable only inside the block."""
    with monkeypatch.context() as patch:
        modules = {
            "fairseq": _fake_module("fairseq"),
            "fairseq.dataclass": _fake_module(
                "fairseq.dataclass", FairseqArgs=FakeFairseqArgs, Choice=FakeChoice
            ),
            "fairseq.meters": _fake_module(
                "fairseq.meters", AverageMeter=FakeMeter, MetersDict=FakeMeterDict
            ),
            "omegaconf": _fake_module("omegaconf"),
            "omegaconf.dictconfig": _fake_module("omegaconf.dictconfig", DictConfig=FakeDictConfig),
            "omegaconf.nodes": _fake_module("omegaconf.nodes", AnyNode=FakeNode),
        }
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        yield
    for name in modules:
        assert name not in sys.modules


def fairseq_args(config: Wav2Vec1Config, **overrides: Any) -> dict[str, Any]:
    """fairseq's model arguments for ``config``, plus unrelated training arguments."""
    args: dict[str, Any] = {
        "arch": "wav2vec",
        "task": "audio_pretraining",
        "criterion": "binary_cross_entropy",
        "lr": [1e-06],
        "max_tokens": 1500000,
        "conv_feature_layers": str(list(config.conv_feature_layers)),
        "conv_aggregator_layers": str(list(config.conv_aggregator_layers)),
        "dropout": config.dropout,
        "dropout_features": config.dropout_features,
        "dropout_agg": config.dropout_agg,
        "skip_connections_feat": config.skip_connections_feat,
        "skip_connections_agg": config.skip_connections_agg,
        "residual_scale": config.residual_scale,
        "log_compression": config.log_compression,
        "non_affine_group_norm": config.non_affine_group_norm,
        "no_conv_bias": not config.conv_bias,
        "agg_zero_pad": config.agg_zero_pad,
        "prediction_steps": config.prediction_steps,
        "num_negatives": 10,
        "offset": "auto",
        "project_features": "none",
        "aggregator": "cnn",
    }
    args.update(overrides)
    return args


def save_fairseq_checkpoint(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state_dict: dict[str, torch.Tensor],
    args: dict[str, Any] | None,
    cfg_model: dict[str, Any] | None = None,
    legacy_format: bool = False,
) -> Path:
    """Write ``path`` like fairseq does, referencing classes of fake modules."""
    with fake_fairseq_installed(monkeypatch):
        meters = FakeMeterDict()
        meters["train_loss"] = FakeMeter()
        checkpoint = {
            "args": None if args is None else FakeFairseqArgs(**args),
            "model": state_dict,
            "optimizer_history": [
                {
                    "criterion_name": "BinaryCrossEntropyCriterion",
                    "optimizer_name": "FairseqAdam",
                    "lr_scheduler_state": {"best": 2.5},
                    "num_updates": 400000,
                }
            ],
            "extra_state": {"metrics": meters, "choice": FakeChoice.CNN},
            "last_optimizer_state": {"state": {}},
        }
        if cfg_model is not None:
            checkpoint["cfg"] = FakeDictConfig({"model": FakeDictConfig(cfg_model)})
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def assert_same_weights(model: Wav2Vec1, state_dict: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``state_dict`` is in ``model`` with the same values, and vice versa."""
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for key, tensor in state_dict.items():
        torch.testing.assert_close(loaded[key], tensor.float(), rtol=0, atol=0, msg=key)


def random_state_dict(config: Wav2Vec1Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict for ``config`` whose every tensor differs from a fresh model's."""
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in Wav2Vec1(config).state_dict().items()}


@pytest.fixture
def small_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small wav2vec 1.0 checkpoint file with fairseq's structure."""
    return save_fairseq_checkpoint(
        tmp_path / "small.pt", monkeypatch, random_state_dict(SMALL), fairseq_args(SMALL)
    )


# --------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------


def test_large_defaults_are_the_released_models_arguments() -> None:
    config = Wav2Vec1Config.wav2vec_large()
    assert config == Wav2Vec1Config()
    assert config.conv_feature_layers == parse_conv_layers(LARGE_FEATURE_LAYERS)
    assert config.conv_aggregator_layers == parse_conv_layers(LARGE_AGGREGATOR_LAYERS)
    assert config.skip_connections_agg and not config.skip_connections_feat
    assert config.log_compression and config.residual_scale == 0.5 and config.conv_bias
    assert config.activation == "relu" and config.prediction_steps == 12
    assert (config.embed_dim, config.context_dim) == (512, 512)


def test_large_frames_are_10ms_with_a_465_sample_receptive_field() -> None:
    config = Wav2Vec1Config.wav2vec_large()
    assert config.hop_length == 160  # 10 ms at 16 kHz
    assert config.receptive_field == 465  # about 29 ms
    assert config.context_receptive_field == 465 + 78 * 160  # 12945 samples, about 809 ms
    for n in range(465, 465 + 5 * 160 + 3):
        assert config.output_frames(n) == (n - 465) // 160 + 1
    assert config.output_frames(16000) == 98
    assert config.output_frames(464) == 0


def test_output_frames_matches_the_model_for_odd_and_edge_lengths() -> None:
    torch.manual_seed(0)
    model = Wav2Vec1(SMALL).eval()
    rf, hop = SMALL.receptive_field, SMALL.hop_length
    lengths = sorted(
        {rf, rf + 1, rf + hop - 1, rf + hop, rf + hop + 1, 1001, 1599, 1600, 1601, 3333, 4801}
        | {rf + 2 * hop + d for d in range(-3, 4)}
    )
    for n in lengths:
        with torch.no_grad():
            features = model.extract_features(torch.randn(2, n))
            context = model(torch.randn(2, n))
        assert features.shape == (2, SMALL.embed_dim, model.output_frames(n)), n
        assert context.shape == (2, SMALL.context_dim, model.output_frames(n)), n
    as_tensor = model.output_frames(torch.tensor(lengths + [0, 1, rf - 1]))
    assert as_tensor.tolist() == [model.output_frames(n) for n in lengths] + [0, 0, 0]


def test_input_shorter_than_one_frame_is_refused() -> None:
    model = Wav2Vec1(SMALL)
    with pytest.raises(ValueError, match="receptive field"):
        model(torch.randn(1, SMALL.receptive_field - 1))
    with pytest.raises(ValueError, match="batch, samples"):
        model(torch.randn(SMALL.receptive_field))


def test_padding_changes_every_frame_because_group_norm_spans_the_utterance() -> None:
    """One-group norms pool statistics over all frames: crop batches, do not pad them."""
    torch.manual_seed(0)
    model = Wav2Vec1(SMALL).eval()
    wav = torch.randn(1, 3001)
    padded = torch.cat([wav, torch.zeros(1, 1600)], dim=1)
    with torch.no_grad():
        alone, with_padding = model(wav), model(padded)
    frames = model.output_frames(3001)
    assert not torch.allclose(alone, with_padding[..., :frames], atol=1e-4)


def test_parse_conv_layers_reads_fairseq_expressions_without_executing_them() -> None:
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3") == (
        (512, 10, 5),
        (512, 8, 4),
        (512, 4, 2),
        (512, 4, 2),
        (512, 4, 2),
    )
    with pytest.raises(ValueError):
        parse_conv_layers("__import__('os').getcwd()")
    with pytest.raises(ValueError):
        parse_conv_layers("[(512, 10)]")


# --------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------


def test_frozen_extractor_gets_no_gradients_while_the_aggregator_does() -> None:
    torch.manual_seed(0)
    model = freeze_feature_extractor(Wav2Vec1(SMALL))
    model.train()
    assert not model.feature_extractor.training  # dropout stays off
    assert model.feature_aggregator.training
    model(torch.randn(2, 2001)).pow(2).mean().backward()
    for name, parameter in model.feature_extractor.named_parameters():
        assert not parameter.requires_grad and parameter.grad is None, name
    for name, parameter in model.feature_aggregator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_constructor_flag_freezes_the_extractor() -> None:
    model = Wav2Vec1(SMALL, freeze_feature_extractor=True)
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.feature_aggregator.parameters())


# --------------------------------------------------------------------------------------
# Loading fairseq checkpoints
# --------------------------------------------------------------------------------------


def test_released_large_architecture_loads_without_fairseq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    large = Wav2Vec1Config.wav2vec_large()
    state_dict = random_state_dict(large)
    assert len(state_dict) == 71  # 7 x 3 extractor + 12 x 4 aggregator + 2 head tensors
    # Arguments as stored in 2019: pre-rename arch/task/criterion names, layer strings,
    # no `activation`, enum-valued aggregator.
    args = fairseq_args(
        large,
        conv_feature_layers=LARGE_FEATURE_LAYERS,
        conv_aggregator_layers=LARGE_AGGREGATOR_LAYERS,
        aggregator=FakeChoice.CNN,
        **LEGACY_NAMES,
    )
    path = save_fairseq_checkpoint(tmp_path / "wav2vec_large.pt", monkeypatch, state_dict, args)
    with pytest.raises(ModuleNotFoundError, match="fairseq"):
        torch.load(path, weights_only=False)  # the file really needs the missing module

    model = load_wav2vec1(path, freeze_feature_extractor=True)

    assert model.config == large
    assert_same_weights(model, state_dict)
    assert not model.training
    with torch.no_grad():
        context = model(torch.randn(2, 4001))
    assert context.shape == (2, 512, model.output_frames(4001)) == (2, 512, 23)


def test_every_weight_of_a_small_checkpoint_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dict = random_state_dict(SMALL)
    assert "feature_aggregator.residual_proj.2.weight" in state_dict  # width 16 -> 24
    path = save_fairseq_checkpoint(
        tmp_path / "small.pt", monkeypatch, state_dict, fairseq_args(SMALL)
    )
    model = load_wav2vec1(path)
    assert model.config == SMALL
    assert_same_weights(model, state_dict)


def test_legacy_serialization_format_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dict = random_state_dict(SMALL)
    path = save_fairseq_checkpoint(
        tmp_path / "legacy.pt", monkeypatch, state_dict, fairseq_args(SMALL), legacy_format=True
    )
    assert_same_weights(load_wav2vec1(path), state_dict)


def test_hydra_cfg_checkpoint_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dict = random_state_dict(SMALL)
    cfg_model = fairseq_args(SMALL, _name="wav2vec", activation="relu")
    del cfg_model["arch"]
    path = save_fairseq_checkpoint(
        tmp_path / "hydra.pt", monkeypatch, state_dict, args=None, cfg_model=cfg_model
    )
    model = load_wav2vec1(path)
    assert model.config == SMALL
    assert_same_weights(model, state_dict)


def test_fp16_weights_load_as_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dict = {k: v.half() for k, v in random_state_dict(SMALL).items()}
    path = save_fairseq_checkpoint(
        tmp_path / "fp16.pt", monkeypatch, state_dict, fairseq_args(SMALL)
    )
    model = load_wav2vec1(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_same_weights(model, state_dict)


def test_an_unused_weight_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dict = random_state_dict(SMALL)
    state_dict["feature_aggregator.extra.weight"] = torch.zeros(3)
    path = save_fairseq_checkpoint(
        tmp_path / "extra.pt", monkeypatch, state_dict, fairseq_args(SMALL)
    )
    with pytest.raises(Wav2Vec1CheckpointError, match="unexpected keys") as error:
        load_wav2vec1(path)
    assert "feature_aggregator.extra.weight" in str(error.value)
    assert str(path) in str(error.value)


def test_a_missing_weight_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dict = random_state_dict(SMALL)
    del state_dict["feature_extractor.conv_layers.3.2.bias"]
    path = save_fairseq_checkpoint(
        tmp_path / "gap.pt", monkeypatch, state_dict, fairseq_args(SMALL)
    )
    with pytest.raises(Wav2Vec1CheckpointError, match="missing keys") as error:
        load_wav2vec1(path)
    assert "feature_extractor.conv_layers.3.2.bias" in str(error.value)


def test_a_wrongly_shaped_weight_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dict = random_state_dict(SMALL)
    state_dict["wav2vec_predictions.project_to_steps.bias"] = torch.zeros(7)
    path = save_fairseq_checkpoint(
        tmp_path / "shape.pt", monkeypatch, state_dict, fairseq_args(SMALL)
    )
    with pytest.raises(Wav2Vec1CheckpointError, match="wav2vec_predictions.project_to_steps.bias"):
        load_wav2vec1(path)


def test_pre_rename_checkpoint_loads_like_the_same_weights_under_current_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fairseq renames arch audio_cpc, task speech_pretraining, criterion
    binary_cross_entropy on load (checkpoint_utils._upgrade_state_dict); so must we."""
    state_dict = random_state_dict(SMALL)
    old_path = tmp_path / "old_names.pt"
    old_args = argparse.Namespace(**fairseq_args(SMALL, **LEGACY_NAMES))
    torch.save({"args": old_args, "model": state_dict}, old_path)
    new_path = save_fairseq_checkpoint(
        tmp_path / "new_names.pt",
        monkeypatch,
        state_dict,
        fairseq_args(SMALL, arch="wav2vec", task="audio_pretraining", criterion="wav2vec"),
    )

    old_model, new_model = load_wav2vec1(old_path), load_wav2vec1(new_path)

    assert old_model.config == new_model.config == SMALL
    assert_same_weights(old_model, state_dict)
    wav = torch.randn(2, 3000)
    with torch.no_grad():
        torch.testing.assert_close(old_model(wav), new_model(wav), rtol=0, atol=0)


def test_absent_feature_layers_take_fairseqs_default_not_the_large_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fairseq fills an absent argument from Wav2VecConfig, whose extractor has 8 layers."""
    fairseq_default = Wav2Vec1Config(
        conv_feature_layers=FAIRSEQ_DEFAULT_FEATURE_LAYERS,
        conv_aggregator_layers=((16, 2, 1), (16, 3, 1)),
    )
    assert len(fairseq_default.conv_feature_layers) == 8
    state_dict = random_state_dict(fairseq_default)
    args = fairseq_args(fairseq_default, **LEGACY_NAMES)
    del args["conv_feature_layers"]
    path = save_fairseq_checkpoint(tmp_path / "no_layers.pt", monkeypatch, state_dict, args)
    model = load_wav2vec1(path)
    assert model.config == fairseq_default
    assert_same_weights(model, state_dict)


@pytest.mark.parametrize("arch", ["wav2vec2", "transformer_lm"])
def test_a_checkpoint_of_another_architecture_is_refused_naming_file_and_arch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    """A wav2vec 2.0 file (no aggregator weights) and one with wav2vec 1.0-like weights."""
    state_dict = (
        {
            "feature_extractor.conv_layers.0.0.weight": torch.zeros(512, 1, 10),
            "encoder.layers.0.fc1.weight": torch.zeros(3072, 768),
        }
        if arch == "wav2vec2"
        else random_state_dict(SMALL)
    )
    path = save_fairseq_checkpoint(tmp_path / "other.pt", monkeypatch, state_dict, {"arch": arch})
    with pytest.raises(Wav2Vec1CheckpointError, match="not a supported wav2vec 1.0") as error:
        load_wav2vec1(path)
    assert str(path) in str(error.value)
    assert repr(arch) in str(error.value)


def test_a_vq_wav2vec_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_fairseq_checkpoint(
        tmp_path / "vq.pt",
        monkeypatch,
        random_state_dict(SMALL),
        fairseq_args(SMALL, vq_type="gumbel"),
    )
    with pytest.raises(Wav2Vec1CheckpointError, match="vq_type"):
        load_wav2vec1(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(Wav2Vec1CheckpointError, match="not a fairseq checkpoint") as error:
        load_wav2vec1(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_a_truncated_file_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy_format: bool
) -> None:
    path = save_fairseq_checkpoint(
        tmp_path / "full.pt",
        monkeypatch,
        random_state_dict(SMALL),
        fairseq_args(SMALL),
        legacy_format=legacy_format,
    )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Wav2Vec1CheckpointError, match="truncated") as error:
        load_wav2vec1(truncated)
    assert str(truncated) in str(error.value)


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "wav2vec_large.pt"
    with pytest.raises(FileNotFoundError, match="wav2vec 1.0 checkpoint not found") as error:
        load_wav2vec1(path)
    assert str(path) in str(error.value)
    assert WAV2VEC1_LARGE_URL in str(error.value)


# --------------------------------------------------------------------------------------
# Getting the checkpoint
# --------------------------------------------------------------------------------------


def test_an_existing_checkpoint_is_used_as_is(small_checkpoint: Path, tmp_path: Path) -> None:
    assert ensure_wav2vec1_checkpoint(str(small_checkpoint), tmp_path / "save") == small_checkpoint
    cached = tmp_path / "save" / "wav2vec_large.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert ensure_wav2vec1_checkpoint(None, tmp_path / "save") == cached


def test_the_download_lands_in_the_save_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        calls.append(url)
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = ensure_wav2vec1_checkpoint(None, tmp_path / "save")
    assert path == tmp_path / "save" / "wav2vec_large.pt"
    assert path.read_bytes() == b"weights"
    assert calls == [WAV2VEC1_LARGE_URL]
    assert sorted(p.name for p in path.parent.iterdir()) == ["wav2vec_large.pt"]


def test_no_checkpoint_and_no_network_says_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_download(url: str, dst: str, progress: bool = True) -> None:
        Path(dst).write_bytes(b"half a file")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    missing = tmp_path / "mine.pt"
    with pytest.raises(FileNotFoundError) as error:
        ensure_wav2vec1_checkpoint(str(missing), tmp_path / "save")
    message = str(error.value)
    assert WAV2VEC1_LARGE_URL in message
    assert str(tmp_path / "save" / "wav2vec_large.pt") in message
    assert str(missing) in message
    assert "wav2vec1_checkpoint: /path/to/wav2vec_large.pt" in message
    assert list((tmp_path / "save").iterdir()) == []  # no partial download left behind


def test_namespace_args_are_read(tmp_path: Path) -> None:
    """Checkpoints saved by fairseq's argparse era store an ``argparse.Namespace``."""
    state_dict = random_state_dict(SMALL)
    path = tmp_path / "namespace.pt"
    torch.save({"args": argparse.Namespace(**fairseq_args(SMALL)), "model": state_dict}, path)
    model = load_wav2vec1(path)
    assert model.config == SMALL
    assert_same_weights(model, state_dict)

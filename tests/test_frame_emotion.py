"""Tests for P-TAPT phase 1: the frame-level emotion model, its training stage and files."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import Checkpoint
from transformers import Wav2Vec2Config

from speechbrain_ptapt.data.dataio import emotion_dataset, make_label_encoder
from speechbrain_ptapt.data.iemocap import prepare_iemocap
from speechbrain_ptapt.models import frame_emotion as frame_models
from speechbrain_ptapt.models.backbone import wav2vec2_frame_lengths
from speechbrain_ptapt.models.frame_emotion import (
    FrameEmotionModel,
    build_frame_model,
    crop_to_shortest,
    frame_emotion_losses,
)
from speechbrain_ptapt.models.masking import ChannelMask, TimeMask
from speechbrain_ptapt.models.wav2vec1 import Wav2Vec1, Wav2Vec1Config
from speechbrain_ptapt.protocol.checkpointing import Checkpointer
from speechbrain_ptapt.protocol.errors import StageSettingsError
from speechbrain_ptapt.protocol.experiment import load_hparams, read_json, write_json
from speechbrain_ptapt.stages import frame_emotion
from speechbrain_ptapt.stages.frame_emotion import (
    FrameEmotionBrain,
    load_frame_model,
    run_frame_stage,
    save_frame_model,
    split_validation,
)
from speechbrain_ptapt.testing.synthetic import make_iemocap
from speechbrain_ptapt.testing.tiny import make_tiny_wav2vec2

HPARAMS = Path(__file__).parent / "hparams" / "frame_emotion.yaml"
CLASSES = ["neu", "hap", "sad", "ang"]
RUN_OPTS = {"device": "cpu", "noprogressbar": True}
FOLD = "3"  # sessions 1 and 2 train, session 3 is held out

# wav2vec 1.0 with the large model's extractor strides and kernels (10 ms frames, 465-sample
# receptive field) but 16 channels and a three-layer aggregator.
SMALL_WAV2VEC1 = Wav2Vec1Config(
    conv_feature_layers=((16, 10, 5), (16, 8, 4), (16, 4, 2), (16, 4, 2), (16, 4, 2), (16, 1, 1)),
    conv_aggregator_layers=((16, 2, 1), (16, 3, 1), (16, 4, 1)),
    prediction_steps=3,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tensors here are tiny: one intra-op thread is as fast, and on a busy machine
    it avoids threads spinning against each other (a tenfold slowdown)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Workspace:
    """Shared inputs: pretrained models and a synthetic IEMOCAP with fold-3 manifests."""

    root: Path
    wav2vec1_checkpoint: Path
    wav2vec2_hub: Path
    manifests: dict[str, Path]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("frame_emotion")
    torch.manual_seed(0)
    checkpoint = root / "wav2vec_small.pt"
    args = {
        "arch": "wav2vec",
        "conv_feature_layers": str(list(SMALL_WAV2VEC1.conv_feature_layers)),
        "conv_aggregator_layers": str(list(SMALL_WAV2VEC1.conv_aggregator_layers)),
        "prediction_steps": SMALL_WAV2VEC1.prediction_steps,
        "aggregator": "cnn",
    }
    # fairseq's (argparse era) layout: the model arguments and the state dict.
    torch.save(
        {"args": argparse.Namespace(**args), "model": Wav2Vec1(SMALL_WAV2VEC1).state_dict()},
        checkpoint,
    )
    hub = make_tiny_wav2vec2(root / "tiny_wav2vec2")
    corpus = make_iemocap(
        root / "corpus", sessions=(1, 2, 3), dialogs_per_session=1, turns_per_dialog=16, junk=False
    )
    manifests = prepare_iemocap(corpus.root, root / "manifests", folds=[FOLD])[FOLD]
    return Workspace(root, checkpoint, hub, manifests)


def make_model(ws: Workspace, encoder: str, **kwargs: Any) -> FrameEmotionModel:
    """A phase-1 model with the workspace's pretrained encoder and the paper's masks."""
    return build_frame_model(
        encoder,
        len(CLASSES),
        wav2vec1_checkpoint=ws.wav2vec1_checkpoint,
        wav2vec2_hub=str(ws.wav2vec2_hub),
        time_mask=TimeMask(0.08, 15, 2),
        channel_mask=ChannelMask(0.05, 64, 1),
        **kwargs,
    )


def stage_overrides(ws: Workspace, output_folder: Path, **extra: Any) -> dict[str, Any]:
    """A few steps of a narrow model: 8 steps of 4 utterances, validation every 4."""
    return {
        "output_folder": str(output_folder),
        "wav2vec1_checkpoint": str(ws.wav2vec1_checkpoint),
        "wav2vec2_hub": str(ws.wav2vec2_hub),
        "frame_steps": 8,
        "frame_batch_size": 4,
        "frame_valid_every": 4,
        "frame_feature_dim": 32,
        "frame_lstm_dim": 32,
        "frame_head_dim": 16,
        "frame_channel_mask_length": 4,
        **extra,
    }


def frame_stage(overrides: dict[str, Any], manifests: dict[str, Any]) -> Path:
    """Phase 1 of ``FOLD`` on the fold's training manifest, as the P-TAPT recipe runs it."""
    hparams = load_hparams(str(HPARAMS), {**overrides, "fold": FOLD}, run_objects=False)
    return run_frame_stage(hparams, RUN_OPTS, manifests["train"])


@dataclass
class FinishedStage:
    """A phase-1 stage run to the end, with the utterance ids each stage saw."""

    final: Path
    frame_folder: Path
    overrides: dict[str, Any]
    seen: dict[str, set[str]]


@pytest.fixture(scope="module")
def finished_stage(workspace: Workspace) -> Iterator[FinishedStage]:
    seen: dict[str, set[str]] = {"train": set(), "valid": set()}
    original = FrameEmotionBrain.compute_forward

    def recording(self, batch, stage):
        seen["train" if stage == sb.Stage.TRAIN else "valid"].update(batch.id)
        return original(self, batch, stage)

    overrides = stage_overrides(workspace, workspace.root / "finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrameEmotionBrain, "compute_forward", recording)
        final = frame_stage(overrides, workspace.manifests)
    yield FinishedStage(final, final.parent, overrides, seen)


def manifest_ids(path: Path) -> set[str]:
    """Utterance ids of a manifest."""
    return set(read_json(path))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


ODD_LENGTHS = [945, 946, 1105, 1264, 1265, 4801, 16001, 12345]


def padded_batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random waveforms of ``lengths`` samples, zero-padded, and their relative lengths."""
    torch.manual_seed(1)
    wavs = torch.randn(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, n:] = 0.0
    return wavs, torch.tensor(lengths, dtype=torch.float64) / max(lengths)


def test_wav2vec1_frames_are_a_stride_2_conv_over_wav2vec1_frames(workspace: Workspace) -> None:
    model = make_model(workspace, "wav2vec1")
    wavs, wav_lens = padded_batch(ODD_LENGTHS)
    features, frame_mask = model.frame_features(wavs, wav_lens)
    expected = [(SMALL_WAV2VEC1.output_frames(n) - 4) // 2 + 1 for n in ODD_LENGTHS]
    # 945 samples (4 wav2vec 1.0 frames) give the first frame, 1265 (6) the second.
    assert expected[:5] == [1, 1, 1, 1, 2]
    assert model.num_frames(944) == 1  # shorter: zero-padded to one frame
    assert features.shape == (len(ODD_LENGTHS), max(expected), 512)
    assert model.feature_dim == 512
    assert frame_mask.sum(dim=1).tolist() == expected
    assert [model.num_frames(n) for n in ODD_LENGTHS] == expected
    assert model.num_frames(torch.tensor(ODD_LENGTHS)).tolist() == expected
    assert not features[~frame_mask].any()  # padding frames are 0
    assert (features[frame_mask] >= 0).all()  # the stride-2 convolution's ReLU


def test_w2v2_cnn_frames_are_exactly_wav2vec2s_frames(workspace: Workspace) -> None:
    model = make_model(workspace, "w2v2_cnn")
    config = Wav2Vec2Config.from_pretrained(workspace.wav2vec2_hub)
    lengths = [400, 401, 719, 720, 1599, 4801, 16001]
    wavs, wav_lens = padded_batch(lengths)
    features, frame_mask = model.frame_features(wavs, wav_lens)
    expected = wav2vec2_frame_lengths(config, torch.tensor(lengths)).tolist()
    assert expected == [(n - 400) // 320 + 1 for n in lengths]
    assert features.shape == (len(lengths), max(expected), 512)
    assert frame_mask.sum(dim=1).tolist() == expected
    assert model.num_frames(torch.tensor(lengths)).tolist() == expected
    assert model.num_frames(399) == 1  # shorter than the receptive field: padded to one frame


@pytest.mark.parametrize("encoder", ["wav2vec1", "w2v2_cnn"])
def test_frame_features_do_not_depend_on_padding_or_batch(
    workspace: Workspace, encoder: str
) -> None:
    model = make_model(workspace, encoder)
    wavs, wav_lens = padded_batch([8001, 12001, 8001])
    batched, frame_mask = model.frame_features(wavs, wav_lens)
    for i, n in enumerate([8001, 12001, 8001]):
        alone, _ = model.frame_features(wavs[i : i + 1, :n])
        torch.testing.assert_close(batched[i, : alone.shape[1]], alone[0])
        assert int(frame_mask[i].sum()) == alone.shape[1]


@pytest.mark.parametrize("encoder", ["wav2vec1", "w2v2_cnn"])
def test_spec_augment_masks_training_only(workspace: Workspace, encoder: str) -> None:
    model = make_model(workspace, encoder)
    torch.manual_seed(2)
    wavs = torch.randn(2, 16000)
    first, _ = model.frame_features(wavs)
    assert torch.equal(first, model.frame_features(wavs)[0])
    model.train()
    trained, _ = model.encode(wavs)
    assert model.training  # frame_features restores the mode
    assert not torch.allclose(trained, first)


@pytest.mark.parametrize("encoder", ["wav2vec1", "w2v2_cnn"])
def test_frozen_parts_get_no_gradient(workspace: Workspace, encoder: str) -> None:
    model = make_model(workspace, encoder).train()
    frozen = (
        model.encoder.wav2vec1.feature_extractor if encoder == "wav2vec1" else model.encoder.cnn
    )
    assert not frozen.training  # stays in eval mode under model.train()
    torch.manual_seed(3)
    output = model(torch.randn(2, 8000))
    frame_loss, utterance_loss = frame_emotion_losses(output, torch.tensor([0, 2]))
    (frame_loss + utterance_loss).backward()
    for name, parameter in frozen.named_parameters():
        assert not parameter.requires_grad and parameter.grad is None, name
    trainable = dict(model.named_parameters())
    frozen_ids = {id(p) for p in frozen.parameters()}
    trained = {n: p for n, p in trainable.items() if id(p) not in frozen_ids}
    assert trained and all(p.requires_grad for p in trained.values())
    for name, parameter in trained.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    aggregator = (
        "encoder.wav2vec1.feature_aggregator" if encoder == "wav2vec1" else "encoder.aggregator"
    )
    assert any(name.startswith(aggregator) for name in trained)


def test_crop_to_shortest_takes_a_window_of_every_utterance() -> None:
    torch.manual_seed(4)
    lengths = [1000, 1400, 1200]
    wavs = torch.zeros(3, 1400)
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.arange(1, n + 1)
    crops, crop_lens = crop_to_shortest(wavs, torch.tensor(lengths) / 1400)
    assert crops.shape == (3, 1000) and crop_lens.tolist() == [1.0, 1.0, 1.0]
    offsets = []
    for i, n in enumerate(lengths):
        start = int(crops[i, 0]) - 1
        assert torch.equal(crops[i], torch.arange(start + 1, start + 1001, dtype=crops.dtype))
        assert 0 <= start <= n - 1000  # never padding
        offsets.append(start)
    assert offsets[0] == 0


def test_loss_falls_on_a_synthetic_corpus(workspace: Workspace) -> None:
    torch.manual_seed(5)
    model = build_frame_model(
        "w2v2_cnn",
        len(CLASSES),
        wav2vec2_hub=str(workspace.wav2vec2_hub),
        time_mask=TimeMask(0.08, 5, 2),  # spans scaled to 0.6 s crops and 32 channels
        channel_mask=ChannelMask(0.05, 4, 1),
        feature_dim=64,
        lstm_dim=64,
        head_dim=32,
    ).train()
    dataset = emotion_dataset(workspace.manifests["train"], make_label_encoder(CLASSES))
    batch = sb.dataio.batch.PaddedBatch([dataset[i] for i in range(8)])
    wavs, wav_lens = crop_to_shortest(*batch.sig)
    targets = batch.emo_encoded.data[:, 0]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = sum(frame_emotion_losses(model(wavs, wav_lens), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


def test_validation_split_is_seeded_and_comes_from_the_training_manifest(
    workspace: Workspace, tmp_path: Path
) -> None:
    train_ids = manifest_ids(workspace.manifests["train"])
    part, valid = split_validation(workspace.manifests["train"], 0.1, 7, tmp_path / "a")
    again = split_validation(workspace.manifests["train"], 0.1, 7, tmp_path / "b")
    other = split_validation(workspace.manifests["train"], 0.1, 8, tmp_path / "c")
    assert manifest_ids(valid) == manifest_ids(again[1])
    assert manifest_ids(valid) != manifest_ids(other[1])
    assert manifest_ids(part) | manifest_ids(valid) == train_ids
    assert not manifest_ids(part) & manifest_ids(valid)
    assert len(manifest_ids(valid)) == round(0.1 * len(train_ids))


def test_test_session_never_reaches_phase_1(
    workspace: Workspace, finished_stage: FinishedStage
) -> None:
    train_ids = manifest_ids(workspace.manifests["train"])
    test_ids = manifest_ids(workspace.manifests["test"])
    seen = finished_stage.seen
    valid_ids = manifest_ids(finished_stage.frame_folder / "valid_split.json")
    assert test_ids and all(i.startswith("Ses03") for i in test_ids)
    assert seen["valid"] == valid_ids and valid_ids <= train_ids
    assert seen["train"] <= train_ids - valid_ids
    assert not (seen["train"] | seen["valid"]) & test_ids


def test_final_model_is_the_best_validated_step(finished_stage: FinishedStage) -> None:
    record = read_json(finished_stage.final / "frame_model.json")
    log = (finished_stage.frame_folder / "train_log.txt").read_text()
    logged = {
        int(step): float(loss)
        for step, loss in re.findall(r"optimizer_step: (\d+), .*valid loss: ([0-9.e+-]+)", log)
    }
    assert sorted(logged) == [4, 8]
    selected = record["selected"]
    assert record["select_by"] == "valid_loss"
    assert selected["loss"] == pytest.approx(min(logged.values()), rel=1e-2)
    assert logged[selected["optimizer_step"]] == pytest.approx(min(logged.values()), rel=1e-2)
    assert record["optimizer_steps"] == 8
    assert record["architecture"]["frame_encoder"] == "wav2vec1"
    model = load_frame_model(finished_stage.final)
    assert model.feature_dim == 32 and model.n_classes == len(CLASSES)


def test_by_default_the_lowest_loss_of_one_validation_per_epoch_is_kept(
    workspace: Workspace, tmp_path: Path
) -> None:
    # 18 training utterances of 4 per step: an epoch is 4 steps; 6 utterances validate.
    overrides = stage_overrides(workspace, tmp_path, frame_steps=10, frame_valid_ratio=0.25)
    del overrides["frame_valid_every"]  # the yaml's default
    validations: list[tuple[int, dict[str, float]]] = []
    valid_batches: list[tuple[list[str], list[int], int, list[float]]] = []
    pending = {"loss": 0.0, "utterances": 0}
    forward, objectives = FrameEmotionBrain.compute_forward, FrameEmotionBrain.compute_objectives
    stage_end, model_forward = FrameEmotionBrain.on_stage_end, FrameEmotionModel.forward
    saved: list[int] = []
    save = Checkpointer.save_and_keep_only

    def recording_save(self, *args, **kwargs):
        if "ua" in kwargs.get("meta", {}):
            saved.append(kwargs["meta"]["optimizer_step"])
        return save(self, *args, **kwargs)

    def recording_forward(self, batch, stage):
        if stage != sb.Stage.TRAIN:
            wavs, wav_lens = batch.sig
            lengths = torch.round(wav_lens * wavs.shape[1]).long().tolist()
            valid_batches.append((list(batch.id), lengths, -1, []))
        return forward(self, batch, stage)

    def recording_model(self, wavs, wav_lens=None):
        if not self.training:  # what a validation batch feeds the model
            ids, lengths, _, _ = valid_batches[-1]
            valid_batches[-1] = (ids, lengths, wavs.shape[1], wav_lens.tolist())
        return model_forward(self, wavs, wav_lens)

    def recording_objectives(self, predictions, batch, stage):
        loss = objectives(self, predictions, batch, stage)
        if stage != sb.Stage.TRAIN:
            pending["loss"] += float(loss) * len(batch.id)
            pending["utterances"] += len(batch.id)
        return loss

    def ua_rising_with_the_loss(targets, predictions, n_classes):
        # The validation UA made to grow with the loss: the best UA is the worst loss.
        ua = pending["loss"] / pending["utterances"]
        pending.update(loss=0.0, utterances=0)
        return {"ua": ua, "wa": ua}

    def recording_end(self, stage, stage_loss, epoch=None):
        stage_end(self, stage, stage_loss, epoch)
        if stage == sb.Stage.VALID:
            validations.append((int(self.optimizer_step), dict(self.valid_stats)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrameEmotionBrain, "compute_forward", recording_forward)
        patch.setattr(FrameEmotionBrain, "compute_objectives", recording_objectives)
        patch.setattr(FrameEmotionBrain, "on_stage_end", recording_end)
        patch.setattr(FrameEmotionModel, "forward", recording_model)
        patch.setattr(Checkpointer, "save_and_keep_only", recording_save)
        patch.setattr(frame_emotion, "classification_metrics", ua_rising_with_the_loss)
        final = frame_stage(overrides, workspace.manifests)

    train_part = final.parent / "train_split.json"
    epoch_steps = len(manifest_ids(train_part)) // overrides["frame_batch_size"]
    assert epoch_steps == 4
    # Once per epoch (a pass over the training part), and after the last, partial one.
    assert [step for step, _ in validations] == [4, 8, 10]
    # Validation batches of frame_valid_batch_size utterances in the same order every
    # epoch, cropped to the shortest like training batches.
    per_epoch = len(valid_batches) // len(validations)
    assert [len(ids) for ids, *_ in valid_batches[:per_epoch]] == [4, 2]
    assert all(
        ids == valid_batches[i % per_epoch][0] for i, (ids, *_) in enumerate(valid_batches)
    )
    for ids, lengths, samples, wav_lens in valid_batches:
        assert samples == min(lengths) and wav_lens == [1.0] * len(ids)
    # The kept checkpoint has the lowest validation loss (averaged over utterances),
    # here also the lowest UA.
    losses = {step: stats["loss"] for step, stats in validations}
    for _, stats in validations:
        assert stats["loss"] == pytest.approx(stats["ua"], rel=1e-6)
    assert len(set(losses.values())) == len(losses)
    record = read_json(final / "frame_model.json")
    assert record["select_by"] == "valid_loss"
    assert record["selected"]["optimizer_step"] == min(losses, key=losses.get)
    assert record["selected"]["loss"] == pytest.approx(min(losses.values()))
    assert record["settings"]["frame_valid_every"] == "epoch"
    # As the authors' ModelCheckpoint(save_top_k=1), a validation is saved only when it
    # improves on the saved ones, plus the last one (the finished stage).
    improving = [s for s in losses if all(losses[s] < losses[t] for t in losses if t < s)]
    assert saved == sorted({*improving, 10})


def test_frame_select_by_valid_ua_keeps_the_best_ua() -> None:
    checkpoints = [
        Checkpoint(Path(f"ckpt{i}"), {"optimizer_step": step, "loss": loss, "ua": ua}, {})
        for i, (step, loss, ua) in enumerate([(4, 0.9, 0.7), (8, 0.5, 0.4), (12, 0.7, 0.7)])
    ]
    by_loss = max(checkpoints, key=frame_emotion.selection_rank("valid_loss"))
    by_ua = max(checkpoints, key=frame_emotion.selection_rank("valid_ua"))
    assert by_loss.meta["optimizer_step"] == 8
    assert by_ua.meta["optimizer_step"] == 4  # the earlier of equal UA
    with pytest.raises(ValueError, match="frame_select_by"):
        frame_emotion.selection_rank("valid_wa")


def test_validation_is_after_every_epoch_or_every_number_of_steps() -> None:
    every = frame_emotion.validation_every_steps
    assert every("epoch") is None  # SpeechBrain's validation after every epoch (a pass)
    assert every(100) == 100
    for wrong in ("step", 0, 2.5, True):
        with pytest.raises(ValueError, match="frame_valid_every"):
            every(wrong)


def test_finished_stage_is_skipped_on_rerun(
    workspace: Workspace, finished_stage: FinishedStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(FrameEmotionBrain, "fit", no_training)
    before = (finished_stage.final / "frame_model.ckpt").stat().st_mtime_ns
    final = frame_stage(finished_stage.overrides, workspace.manifests)
    assert final == finished_stage.final
    assert (final / "frame_model.ckpt").stat().st_mtime_ns == before


def test_a_stage_of_another_training_manifest_is_refused_then_recomputed_once_deleted(
    workspace: Workspace, finished_stage: FinishedStage, tmp_path: Path
) -> None:
    output = tmp_path / "changed"
    shutil.copytree(finished_stage.frame_folder.parent.parent, output)
    frame_folder = output / finished_stage.frame_folder.relative_to(
        finished_stage.frame_folder.parent.parent
    )
    old = read_json(finished_stage.final / "frame_model.json")["settings"]
    train = read_json(workspace.manifests["train"])
    del train[sorted(train)[0]]
    changed = {"train": tmp_path / "train.json", "test": workspace.manifests["test"]}
    write_json(changed["train"], train)
    overrides = {**finished_stage.overrides, "output_folder": str(output)}
    # A trained stage is never retrained over, nor deleted, behind the user's back.
    before = {p: p.stat().st_mtime_ns for p in frame_folder.rglob("*") if p.is_file()}
    with pytest.raises(StageSettingsError) as refused:
        frame_stage(overrides, changed)
    message = str(refused.value)
    assert "train_manifest" in message and f"delete {frame_folder} " in message
    assert {p: p.stat().st_mtime_ns for p in frame_folder.rglob("*") if p.is_file()} == before
    # Deleted as the message says: trained again, on the new manifest.
    shutil.rmtree(frame_folder)
    final = frame_stage(overrides, changed)
    new = read_json(final / "frame_model.json")["settings"]
    assert new["train_manifest"] != old["train_manifest"]
    assert {k: v for k, v in new.items() if k != "train_manifest"} == {
        k: v for k, v in old.items() if k != "train_manifest"
    }
    assert sorted(train) == sorted(
        manifest_ids(final.parent / "train_split.json")
        | manifest_ids(final.parent / "valid_split.json")
    )


def test_phase_1_batches_by_duration_when_frame_batch_seconds_is_set(
    workspace: Workspace, finished_stage: FinishedStage, tmp_path: Path
) -> None:
    budget, crop, num_buckets = 3.0, 1.0, 2
    batches: list[tuple[list[str], int]] = []
    original = FrameEmotionBrain.compute_forward

    def recording(self, batch, stage):
        if stage == sb.Stage.TRAIN:
            batches.append((list(batch.id), int(batch.sig[0].shape[1])))
        return original(self, batch, stage)

    overrides = stage_overrides(
        workspace, tmp_path, frame_batch_seconds=budget, frame_max_seconds=crop,
        frame_num_buckets=num_buckets,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrameEmotionBrain, "compute_forward", recording)
        final = frame_stage(overrides, workspace.manifests)
    assert len(batches) == overrides["frame_steps"]
    train = read_json(workspace.manifests["train"])
    durations = {key: float(item["duration"]) for key, item in train.items()}
    for ids, samples in batches:
        # crops of at most frame_max_seconds, counted toward the budget: at least
        # the budget, reached with the batch's last utterance
        assert samples <= crop * 16000
        crops = [min(durations[i], crop) for i in ids]
        assert sum(crops) >= budget - 1e-9 and sum(crops[:-1]) < budget
    settings = read_json(final / "frame_model.json")["settings"]
    assert (settings["frame_batch_seconds"], settings["frame_max_seconds"]) == (budget, crop)
    assert settings["frame_num_buckets"] == num_buckets
    # unset (null) in the default stage's fingerprint: every setting is recorded
    default = read_json(finished_stage.final / "frame_model.json")["settings"]
    assert (default["frame_batch_seconds"], default["frame_max_seconds"]) == (None, None)


class Interrupted(Exception):
    """Stands for a crash or a killed job in the middle of the stage."""


def test_interrupted_stage_resumes_at_the_step_reached(
    workspace: Workspace,
    finished_stage: FinishedStage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overrides = {
        **finished_stage.overrides,
        "output_folder": str(tmp_path / "interrupted"),
        "frame_ckpt_interval_steps": 1,
    }
    original = FrameEmotionBrain.on_fit_batch_start
    started: list[int] = []

    def crash_at_step_6(self, batch, should_step):
        if self.optimizer_step == 6 and not started:
            raise Interrupted
        original(self, batch, should_step)

    monkeypatch.setattr(FrameEmotionBrain, "on_fit_batch_start", crash_at_step_6)
    with pytest.raises(Interrupted):
        frame_stage(overrides, workspace.manifests)
    frame_folder = tmp_path / "interrupted" / f"fold_{FOLD}" / "frame_emotion"
    assert not (frame_folder / "final").exists()

    def recording(self, batch, should_step):
        started.append(self.optimizer_step)
        original(self, batch, should_step)

    monkeypatch.setattr(FrameEmotionBrain, "on_fit_batch_start", recording)
    final = frame_stage(overrides, workspace.manifests)
    assert started == [6, 7]
    assert read_json(final / "frame_model.json")["optimizer_steps"] == 8
    # Same crops, masks and batches as the uninterrupted stage: the same model.
    resumed = torch.load(final / "frame_model.ckpt", weights_only=True)
    uninterrupted = torch.load(finished_stage.final / "frame_model.ckpt", weights_only=True)
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("encoder", ["wav2vec1", "w2v2_cnn"])
def test_load_frame_model_round_trip_gives_identical_frame_features(
    workspace: Workspace, encoder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(6)
    model = make_model(workspace, encoder)
    for parameter in model.parameters():  # not the initial values
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    final = save_frame_model(model, tmp_path / "final", {"note": "test"})

    def no_hub(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_frame_model must not need the hub or the checkpoint")

    monkeypatch.setattr(frame_models, "load_pretrained", no_hub)
    monkeypatch.setattr(frame_models, "load_wav2vec1", no_hub)
    loaded = load_frame_model(final)
    assert not loaded.training and loaded.frame_encoder == encoder
    wavs, wav_lens = padded_batch([7001, 9999, 16000])
    expected, expected_mask = model.frame_features(wavs, wav_lens)
    actual, actual_mask = loaded.frame_features(wavs, wav_lens)
    assert torch.equal(actual, expected) and torch.equal(actual_mask, expected_mask)
    assert json.loads((final / "frame_model.json").read_text())["note"] == "test"


def test_yaml_defaults_follow_the_paper(tmp_path: Path) -> None:
    hparams = load_hparams(
        str(HPARAMS), {"output_folder": str(tmp_path), "wav2vec2_hub": str(tmp_path)}
    )
    assert hparams["frame_encoder"] == "wav2vec1"
    assert (hparams["frame_steps"], hparams["frame_batch_size"]) == (10000, 64)
    assert hparams["frame_lr"] == 1e-4 and hparams["frame_warmup_steps"] == 500
    assert hparams["frame_flat_fraction"] == 0.05 and hparams["frame_valid_ratio"] == 0.1
    assert (hparams["frame_valid_every"], hparams["frame_select_by"]) == ("epoch", "valid_loss")
    assert (hparams["frame_valid_crop"], hparams["frame_valid_batch_size"]) == ("shortest", 64)
    time_mask, channel_mask = hparams["frame_time_mask"], hparams["frame_channel_mask"]
    assert (time_mask.prob, time_mask.length, time_mask.min_masks) == (0.08, 15, 2)
    assert (channel_mask.prob, channel_mask.length, channel_mask.min_masks) == (0.05, 64, 1)
    assert (hparams["frame_feature_dim"], hparams["frame_lstm_dim"]) == (512, 512)
    assert hparams["frame_head_dim"] == 128
    assert Path(hparams["frame_folder"]) == tmp_path / "fold_1" / "frame_emotion"


@pytest.mark.parametrize("dataset", ["IEMOCAP", "SAVEE"])
def test_recipe_options_of_validation_selection_and_kmeans_fitting_are_checked(
    dataset: str,
) -> None:
    from speechbrain_ptapt.protocol.hparams_check import (
        HparamsError,
        check_overrides,
        yaml_defaults,
    )

    yaml = Path(__file__).parents[1] / "recipes" / dataset / "hparams" / "ptapt.yaml"
    good = {"frame_valid_every": 100, "frame_select_by": "valid_ua", "frame_valid_crop": "none"}
    check_overrides(yaml, {"data_folder": "/data", **good, "kmeans_fit_set": "per_k"})
    check_overrides(yaml, {"data_folder": "/data", "frame_valid_every": "epoch"})
    bad = [
        ("frame_valid_every", "pass", "epoch or an integer"),
        ("frame_valid_every", 0, "epoch or an integer"),
        ("frame_select_by", "valid_wa", "valid_loss, valid_ua"),
        ("frame_valid_crop", "longest", "shortest, none"),
        ("kmeans_fit_set", "each", "shared, per_k"),
    ]
    for key, value, expected in bad:
        with pytest.raises(HparamsError, match=expected):
            check_overrides(yaml, {"data_folder": "/data", key: value})
    defaults = yaml_defaults(yaml)
    assert (defaults["frame_valid_every"], defaults["frame_select_by"]) == ("epoch", "valid_loss")
    assert (defaults["frame_valid_crop"], defaults["kmeans_fit_set"]) == ("shortest", "shared")

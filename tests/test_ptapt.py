"""P-TAPT phase 2 and the P-TAPT recipe end to end (phase 1, pseudo-labels, phase 2,
fine-tuning) on a synthetic IEMOCAP corpus with a tiny wav2vec2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from transformers import Wav2Vec2Model

from speechbrain_ptapt.models.pseudo_label_heads import (
    IGNORE_INDEX,
    align_labels,
    build_ptapt_model,
    masked_prediction_loss,
)


def test_loss_counts_only_masked_frames():
    torch.manual_seed(0)
    logits = [torch.randn(2, 6, 4), torch.randn(2, 6, 8)]
    labels = torch.randint(0, 4, (2, 6, 2))
    predict = torch.zeros(2, 6, dtype=torch.bool)
    predict[0, 1:3] = True
    predict[1, 4] = True
    base, _ = masked_prediction_loss(logits, labels, predict)
    changed = labels.clone()
    changed[~predict] = (changed[~predict] + 1) % 4  # every unmasked label changes
    same, _ = masked_prediction_loss(logits, changed, predict)
    assert torch.equal(base, same)
    changed_masked = labels.clone()
    changed_masked[0, 1, 0] = (changed_masked[0, 1, 0] + 1) % 4
    different, _ = masked_prediction_loss(logits, changed_masked, predict)
    assert not torch.equal(base, different)


def test_loss_is_the_sum_of_per_k_masked_cross_entropies():
    torch.manual_seed(1)
    logits = [torch.randn(1, 5, 3), torch.randn(1, 5, 7)]
    labels = torch.tensor([[[0, 6], [1, 2], [2, 3], [IGNORE_INDEX, 1], [0, 0]]])
    predict = torch.tensor([[True, False, True, True, False]])
    total, per_k = masked_prediction_loss(logits, labels, predict)
    ce0 = torch.nn.functional.cross_entropy(logits[0][0, [0, 2]], labels[0, [0, 2], 0])
    ce1 = torch.nn.functional.cross_entropy(logits[1][0, [0, 2, 3]], labels[0, [0, 2, 3], 1])
    assert torch.allclose(per_k[0], ce0) and torch.allclose(per_k[1], ce1)
    assert torch.allclose(total, ce0 + ce1)


def test_model_loss_ignores_labels_of_unmasked_and_padded_frames(tiny_wav2vec2):
    model = build_ptapt_model(str(tiny_wav2vec2), None, n_clusters=[4, 8]).eval()
    wavs, wav_lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    fixed = torch.zeros(2, 49, dtype=torch.bool)
    fixed[0, 5:20] = True
    fixed[1, 3:18] = True
    fixed[1, 40:] = True  # beyond utterance 2's 29 frames: padding is never predicted
    model.time_mask = lambda lengths, frames: fixed
    labels = torch.randint(0, 4, (2, 49, 2))
    with torch.no_grad():
        base = model(wavs, wav_lens, labels)["loss"]
        other = labels.clone()
        other[0, :5] = 3 - other[0, :5]
        other[1, 18:] = 3 - other[1, 18:]
        assert torch.equal(model(wavs, wav_lens, other)["loss"], base)
        other[0, 10] = 3 - other[0, 10]
        assert not torch.equal(model(wavs, wav_lens, other)["loss"], base)


def test_labels_are_aligned_to_the_backbone_frame_count():
    labels = torch.zeros(2, 5, 3, dtype=torch.long)
    assert align_labels(labels, 7).shape == (2, 7, 3)
    assert (align_labels(labels, 7)[:, 5:] == IGNORE_INDEX).all()
    assert align_labels(labels, 4).shape == (2, 4, 3)


def ptapt_command(data_folder, model, out) -> list[str]:
    """The target command, run from the repository root, with tiny-model overrides."""
    return [
        sys.executable, "recipes/IEMOCAP/train_ptapt.py", "hparams/ptapt.yaml",
        f"--data_folder={data_folder}", f"--output_folder={out}",
        f"--wav2vec2_hub={model}", "--folds=[1]", "--runs=1", "--device=cpu",
        "--noprogressbar", "--number_of_epochs=2", "--batch_size=8", "--lr=0.003",
        "--channel_mask_length=8", "--frame_encoder=w2v2_cnn", "--frame_steps=20",
        "--frame_batch_size=8", "--frame_valid_every=10", "--n_clusters=[8,16]",
        "--ptapt_steps=60", "--ptapt_batch_seconds=12", "--warmup_steps=5",
        "--ptapt_lr=0.003", "--ptapt_log_interval_steps=10", "--ptapt_max_seconds=2.0",
    ]


@pytest.fixture(scope="module")
def ptapt_run(iemocap_corpus, tiny_wav2vec2, tmp_path_factory):
    """The target command, from the repository root, with tiny-model overrides."""
    out = tmp_path_factory.mktemp("ptapt_out")
    cmd = ptapt_command(iemocap_corpus.root, tiny_wav2vec2, out)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_ptapt_recipe_writes_summary_and_adapted_backbone(ptapt_run, tiny_wav2vec2):
    summary = json.loads((ptapt_run / "summary.json").read_text())
    assert summary["method"] == "ptapt" and list(summary["folds"]) == ["1"]
    adapted = ptapt_run / "fold_1" / "ptapt" / "adapted_wav2vec2"
    result = json.loads((ptapt_run / "fold_1" / "seed_1986" / "result.json").read_text())
    assert result["backbone"] == str(adapted)
    original = Wav2Vec2Model.from_pretrained(str(tiny_wav2vec2)).state_dict()
    tuned = Wav2Vec2Model.from_pretrained(str(adapted)).state_dict()
    encoder_keys = [k for k in original if k.startswith("encoder.layers.")]
    assert any(not torch.equal(original[k], tuned[k]) for k in encoder_keys)
    cnn_keys = [k for k in original if k.startswith("feature_extractor.")]
    assert all(torch.equal(original[k], tuned[k]) for k in cnn_keys)  # CNN frozen


def test_ptapt_loss_falls(ptapt_run):
    log = (ptapt_run / "fold_1" / "ptapt" / "train_log.txt").read_text()
    losses = [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log)]
    assert len(losses) == 6
    assert losses[-1] < losses[0]


def test_no_test_session_utterance_reaches_any_adaptation_stage(ptapt_run):
    fold = ptapt_run / "fold_1"
    for split in ("train_split.json", "valid_split.json"):
        ids = json.loads((fold / "frame_emotion" / split).read_text())
        assert ids and not any(u.startswith("Ses01") for u in ids)
    labelled = json.loads((fold / "pseudo_labels" / "index.json").read_text())["utterances"]
    train = json.loads((ptapt_run / "manifests" / "fold_1" / "train.json").read_text())
    assert set(labelled) == set(train)
    assert not any(u.startswith("Ses01") for u in labelled)


def test_pseudo_labels_have_one_column_per_k(ptapt_run):
    folder = ptapt_run / "fold_1" / "pseudo_labels"
    labels = np.load(folder / "labels.npy", mmap_mode="r")
    assert labels.shape[1] == 2
    assert labels[:, 0].max() < 8 and labels[:, 1].max() < 16
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    assert diagnostics


def test_rerun_skips_every_finished_stage(ptapt_run, iemocap_corpus, tiny_wav2vec2):
    fold = ptapt_run / "fold_1"
    stamps = {
        p: p.stat().st_mtime
        for p in [
            fold / "frame_emotion" / "final",
            fold / "pseudo_labels" / "labels.npy",
            fold / "ptapt" / "adapted_wav2vec2" / "model.safetensors",
            fold / "seed_1986" / "result.json",
        ]
    }
    cmd = ptapt_command(iemocap_corpus.root, tiny_wav2vec2, ptapt_run)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(p.stat().st_mtime == t for p, t in stamps.items())


def test_a_finished_phase_2_needs_no_pseudo_labels(ptapt_run, iemocap_corpus, tiny_wav2vec2):
    """Its fingerprint holds the labels' fingerprint, computed from their inputs: labels
    deleted to save space are not computed again for a stage that is done."""
    fold = ptapt_run / "fold_1"
    labels = fold / "pseudo_labels"
    kept = labels.with_name("pseudo_labels.kept")
    adapted = fold / "ptapt" / "adapted_wav2vec2" / "model.safetensors"
    stamp = adapted.stat().st_mtime_ns
    labels.rename(kept)
    try:
        cmd = ptapt_command(iemocap_corpus.root, tiny_wav2vec2, ptapt_run)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not labels.exists() and adapted.stat().st_mtime_ns == stamp
    finally:
        if labels.exists():
            shutil.rmtree(labels)
        kept.rename(labels)

"""Tests of TAPT (task-adaptive pretraining) and of the domain-shift meter.

A tiny random wav2vec2 (:func:`speechbrain_ptapt.testing.tiny.make_tiny_wav2vec2`) is
adapted on the training sessions of a generated five-session IEMOCAP
(:func:`speechbrain_ptapt.testing.synthetic.make_iemocap`, fold 1 = Session1 held out).
One uninterrupted TAPT stage is shared by most tests; the resume test reruns
the same stage with an interruption and must end with identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from speechbrain.dataio.dataset import DynamicItemDataset
from transformers import Wav2Vec2ForPreTraining

from speechbrain_ptapt.analysis.domain_shift import audio_files, main, pretraining_loss
from speechbrain_ptapt.data.dataio import duration_batch_sampler
from speechbrain_ptapt.data.iemocap import prepare_iemocap
from speechbrain_ptapt.models.pretraining import Wav2Vec2Pretraining, gumbel_temperature_schedule
from speechbrain_ptapt.protocol.checkpointing import Checkpointer
from speechbrain_ptapt.protocol.errors import UnreadableCheckpointError
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import HparamsError, check_overrides
from speechbrain_ptapt.stages import tapt
from speechbrain_ptapt.stages.tapt import (
    MARKER_FILE,
    TAPTBrain,
    TAPTSettingsError,
    run_tapt_stage,
    tapt_fingerprint,
)
from speechbrain_ptapt.stages.training import WarmupFlatLinearDecay
from speechbrain_ptapt.testing.synthetic import make_iemocap
from speechbrain_ptapt.testing.tiny import make_tiny_wav2vec2

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "IEMOCAP"
TAPT_YAML = RECIPE / "hparams" / "tapt.yaml"
VFT_YAML = RECIPE / "hparams" / "vft.yaml"
RUN_OPTS = {"device": "cpu", "noprogressbar": True}

# A short stage the tiny model visibly learns in: 20 steps of 4 s of half-second
# crops (8 crops), batched by duration as by default.
STEPS = 20
CKPT_INTERVAL = 10
STAGE_OVERRIDES = {
    "tapt_steps": STEPS,
    "tapt_batch_seconds": 4.0,
    "tapt_batch_size": 8,
    "warmup_steps": 3,
    "tapt_lr": 0.003,
    "tapt_max_seconds": 0.5,
    "tapt_num_buckets": 4,
    "tapt_ckpt_interval_steps": CKPT_INTERVAL,
    "tapt_log_interval_steps": 5,
}


class Interrupted(RuntimeError):
    """Stands for a killed job."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    """A tiny wav2vec2 and a prepared synthetic IEMOCAP (fold 1)."""
    root = tmp_path_factory.mktemp("tapt_corpus")
    synthetic = make_iemocap(root, dialogs_per_session=1, turns_per_dialog=24, seed=0)
    manifests = prepare_iemocap(synthetic.root, root / "manifests", folds=[1])["1"]
    return {
        "root": synthetic.root,
        "manifests": manifests,
        "tiny": make_tiny_wav2vec2(root / "tiny_wav2vec2"),
        "train": json.loads(Path(manifests["train"]).read_text()),
        "test": json.loads(Path(manifests["test"]).read_text()),
    }


def _overrides(corpus: dict[str, Any], output_folder: Path, **extra: Any) -> dict[str, Any]:
    return {
        "data_folder": str(corpus["root"]),
        "output_folder": str(output_folder),
        "wav2vec2_hub": str(corpus["tiny"]),
        **STAGE_OVERRIDES,
        **extra,
    }


def _recording(records: list[dict[str, Any]]):
    """A TAPTBrain.compute_objectives that also records each batch's ids, loss
    and the number of optimizer steps done before it."""
    original = TAPTBrain.compute_objectives

    def compute_objectives(self, predictions, batch, stage):
        loss = original(self, predictions, batch, stage)
        records.append(
            {
                "done": self.optimizer_step,
                "ids": list(batch.id),
                "loss": float(loss.detach()),
                "per_frame": float(predictions.per_masked_frame.detach()),
                "masked": predictions.num_masked,
            }
        )
        return loss

    return compute_objectives


def tapt_stage(corpus: dict[str, Any], overrides: dict[str, Any]) -> str:
    """TAPT of fold 1 on its training manifest, as the TAPT recipe runs it."""
    hparams = load_hparams(str(TAPT_YAML), {**overrides, "fold": "1"}, run_objects=False)
    return run_tapt_stage(hparams, RUN_OPTS, corpus["manifests"]["train"])


def _run_stage(corpus, output_folder: Path, records: list, **extra: Any) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TAPTBrain, "compute_objectives", _recording(records))
        folder = tapt_stage(corpus, _overrides(corpus, output_folder, **extra))
    return Path(folder)


@pytest.fixture(scope="module")
def stage(corpus, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted TAPT stage on fold 1."""
    output = tmp_path_factory.mktemp("tapt_run")
    records: list[dict[str, Any]] = []
    folder = _run_stage(corpus, output, records)
    return {"folder": folder, "output": output, "records": records}


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------


def test_schedule_warms_up_stays_flat_then_decays_to_zero(tmp_path):
    schedule = WarmupFlatLinearDecay(1e-4, total_steps=20000, warmup_steps=100)
    lrs = np.array([schedule.lr_at(s) for s in range(1, 20001)])
    assert lrs[0] == pytest.approx(1e-6)
    assert np.all(np.diff(lrs[:100]) > 0) and lrs[99] == pytest.approx(1e-4)
    assert np.all(lrs[99:1100] == pytest.approx(1e-4))  # 5 % of 20 000 steps flat
    assert np.all(np.diff(lrs[1100:]) < 0)
    assert 0 < lrs[-1] < 1e-8  # reaches 0 after the last step

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for _ in range(150):
        schedule(optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lr_at(150))
    schedule._save(tmp_path / "schedule.ckpt")
    resumed = WarmupFlatLinearDecay(1e-4, total_steps=20000, warmup_steps=100)
    resumed._recover(tmp_path / "schedule.ckpt")
    assert resumed(optimizer) == schedule(optimizer)


def test_batches_of_a_fixed_size_group_similar_lengths_as_the_authors_sampler():
    """tapt_batch_seconds null: tapt_batch_size utterances per batch from length
    buckets visited in a random order (the authors' dynamic_batch=False,
    pretrain/dataloader.py:298-314), one pass per epoch."""
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 10.0, size=200)
    dataset = DynamicItemDataset({f"u{i}": {"duration": float(d)} for i, d in enumerate(durations)})
    sampler = duration_batch_sampler(dataset, None, None, num_buckets=10, seed=3, batch_size=8)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25 and all(len(b) == 8 for b in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(200))  # one pass
    bucket_of = np.empty(200, dtype=int)
    for k, bucket in enumerate(sampler.buckets):
        bucket_of[bucket] = k
    assert all(len(set(bucket_of[b])) <= 2 for b in batches)  # a bucket, or the seam of two
    spread = np.median([np.ptp(durations[b]) for b in batches])
    random_spread = np.median([np.ptp(durations[rng.choice(200, 8)]) for _ in range(60)])
    assert spread < 0.3 * random_spread
    assert list(sampler) == batches  # reproducible, so a resumed stage can skip batches
    sampler.set_epoch(2)
    assert list(sampler) != batches


def test_masks_and_distractors_stay_on_valid_frames_even_for_short_inputs(corpus):
    model = Wav2Vec2Pretraining(str(corpus["tiny"]))
    lengths = torch.tensor([300, 720, 16000])  # samples: < receptive field, 2 frames, 1 s
    wavs = torch.randn(3, 16000) * (torch.arange(16000)[None] < lengths[:, None])
    wav_lens = lengths / 16000
    np.random.seed(0)
    _, attention_mask, frame_mask = model.prepare_inputs(wavs, wav_lens)
    assert attention_mask.sum(1).tolist() == [400, 720, 16000]
    assert frame_mask.sum(1).tolist() == [1, 2, 49]
    for _ in range(20):
        masked, negatives = model.sample_masks(frame_mask)
        assert not (masked & ~frame_mask).any()
        assert not masked[0].any()  # one frame: nothing to contrast
        frames = frame_mask.shape[1]
        for b in (1, 2):
            rows = negatives[b][masked[b]]
            assert ((rows // frames) == b).all()  # same utterance
            assert frame_mask[b, rows % frames].all()  # valid frames only
            own = torch.nonzero(masked[b]).flatten()[:, None]
            assert (rows % frames != own).all()  # never the frame itself
    out = model(wavs, wav_lens)
    assert out.num_masked > 0 and torch.isfinite(out.total)
    assert model(wavs[:1, :300], torch.ones(1)).num_masked == 0  # no crash, zero loss


# ----------------------------------------------------------------------------
# The objective (transformers 4.10's, as the authors ran it)
# ----------------------------------------------------------------------------

SR = 16000


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight padded utterances of 0.5 to 1 s (seeded noise)."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16000, 12000, 8000, 16000, 9000, 14000, 11000, 16000])
    wavs = torch.randn(8, SR, generator=generator) * (torch.arange(SR)[None] < lengths[:, None])
    return wavs, lengths / SR


def _fixed_loss(model: Wav2Vec2Pretraining) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """The model's loss on :func:`_fixed_batch` with masks and distractors drawn
    once (seed 0) and then fixed, the raw ``Wav2Vec2ForPreTraining`` output, the
    masks and the distractors."""
    wavs, wav_lens = _fixed_batch()
    _, _, frame_mask = model.prepare_inputs(wavs, wav_lens)
    np.random.seed(0)
    masked, negatives = model.sample_masks(frame_mask)
    assert negatives.shape[-1] == model.config.num_negatives  # the config's distractor count
    model.sample_masks = lambda frame_mask: (masked, negatives)
    outputs: list[Any] = []
    hook = model.model.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        torch.manual_seed(0)
        loss = model.train()(wavs, wav_lens)
    finally:
        hook.remove()
    assert loss.num_masked == int(masked.sum()) > 0
    return loss, outputs[0], masked, negatives


def _contrastive_sum_by_hand(out: Any, masked: torch.Tensor, negatives: torch.Tensor,
                             kappa: float) -> torch.Tensor:
    """Sum over masked frames of -log softmax(cos(c_t, [q_t, distractors]) / kappa)[0],
    distractors equal to q_t left out (transformers 4.10, modeling_wav2vec2.py:1283-1302)."""
    c = out.projected_states.detach()
    q = out.projected_quantized_states.detach()
    flat = q.reshape(-1, q.shape[-1])
    total = torch.zeros((), dtype=torch.float64)
    for b, t in torch.nonzero(masked).tolist():
        candidates = torch.cat([q[b, t][None], flat[negatives[b, t]]])
        logits = torch.cosine_similarity(c[b, t][None], candidates, dim=-1).double() / kappa
        same = (candidates[1:] == q[b, t]).all(-1)
        logits[1:][same] = -torch.inf
        total -= torch.log_softmax(logits, dim=0)[0]
    return total


def test_default_tapt_loss_is_transformers_4_10s_sum_with_unscaled_diversity(corpus):
    """4.10: loss = sum of contrastive CE over masked frames + 0.1 (G*V - ppl) / (G*V),
    and the brain optimises exactly that (not a mean per masked frame)."""
    model = Wav2Vec2Pretraining(str(corpus["tiny"]))
    loss, out, masked, negatives = _fixed_loss(model)
    config = model.config
    assert config.contrastive_logits_temperature == 0.1 and config.diversity_loss_weight == 0.1
    contrastive = _contrastive_sum_by_hand(out, masked, negatives, 0.1)
    num_codevectors = config.num_codevectors_per_group * config.num_codevector_groups
    diversity = (num_codevectors - float(out.codevector_perplexity.detach())) / num_codevectors
    by_hand = float(contrastive) + 0.1 * diversity

    assert float(loss.contrastive.detach()) == pytest.approx(float(contrastive), rel=1e-5)
    assert float(loss.total.detach()) == pytest.approx(by_hand, rel=1e-5)
    brain = TAPTBrain(modules={"wav2vec2": model}, hparams={}, run_opts=RUN_OPTS)
    optimised = brain.compute_objectives(loss, None, None)
    assert float(optimised.detach()) == pytest.approx(by_hand, rel=1e-5)
    # the diversity term is counted once, not once per masked frame (transformers 5)
    extra = float(out.loss.detach()) - float(optimised.detach())
    assert extra == pytest.approx(0.1 * diversity * (loss.num_masked - 1), rel=1e-3)


def test_mean_per_masked_frame_variant_is_the_previous_objective(corpus):
    """loss_reduction=mean with diversity per masked frame: transformers 5's loss
    (contrastive sum + 0.1 x diversity x masked frames) over the masked frames."""
    model = Wav2Vec2Pretraining(
        str(corpus["tiny"]), loss_reduction="mean", diversity_scaling="per_masked_frame"
    )
    loss, out, _, _ = _fixed_loss(model)
    masked = loss.num_masked
    config = model.config
    num_codevectors = config.num_codevectors_per_group * config.num_codevector_groups
    diversity = (num_codevectors - float(out.codevector_perplexity.detach())) / num_codevectors
    by_hand = (float(out.contrastive_loss.detach()) + 0.1 * diversity * masked) / masked
    assert float(out.loss.detach()) / masked == pytest.approx(by_hand, rel=1e-6)
    brain = TAPTBrain(modules={"wav2vec2": model}, hparams={}, run_opts=RUN_OPTS)
    optimised = brain.compute_objectives(loss, None, None).detach()
    assert float(optimised) == pytest.approx(by_hand, rel=1e-6)
    # sum with per-frame diversity is transformers 5's loss itself
    assert float(loss.total.detach()) == pytest.approx(float(out.loss.detach()), rel=1e-6)


def test_gumbel_temperature_is_1_in_the_quantizer_by_default(corpus, tmp_path, monkeypatch):
    """The recipe's TAPT model runs the quantizer's Gumbel-softmax at tau = 1 (4.10's
    default, never changed by the authors' code)."""
    hparams = load_hparams(str(TAPT_YAML), _overrides(corpus, tmp_path))
    assert hparams["tapt_loss_reduction"] == "sum"
    assert hparams["tapt_diversity_scaling"] == "unscaled"
    model = hparams["tapt_model"]()
    assert (model.loss_reduction, model.diversity_scaling) == ("sum", "unscaled")
    assert Wav2Vec2Pretraining(str(corpus["tiny"])).model.quantizer.temperature == 1.0

    taus: list[float] = []
    gumbel_softmax = torch.nn.functional.gumbel_softmax

    def recording(logits, tau=1.0, **kwargs):
        taus.append(float(tau))
        return gumbel_softmax(logits, tau=tau, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", recording)
    np.random.seed(0)
    model.train()(*_fixed_batch())
    assert taus == [1.0]


def test_gumbel_temperature_can_follow_fairseqs_anneal_per_optimizer_step(corpus):
    model = Wav2Vec2Pretraining(str(corpus["tiny"]), gumbel_temperature=[2.0, 0.5, 0.9])
    assert model.gumbel_temperature_annealed
    assert model.model.quantizer.temperature == 2.0
    assert model.set_num_updates(3) == pytest.approx(2.0 * 0.9**3)
    assert model.set_num_updates(100) == 0.5  # max(start * decay^n, end)
    brain = TAPTBrain(modules={"wav2vec2": model}, hparams={}, run_opts=RUN_OPTS)
    brain.optimizer_step = 2
    brain.on_fit_batch_start(None, should_step=False)
    assert model.model.quantizer.temperature == pytest.approx(2.0 * 0.9**2)
    for bad in ([0.5, 2.0, 0.9], [2.0, 0.5, 1.5], 0.0, "hot"):
        with pytest.raises(ValueError, match="gumbel_temperature"):
            gumbel_temperature_schedule(bad)
    with pytest.raises(ValueError, match="loss_reduction"):
        Wav2Vec2Pretraining(str(corpus["tiny"]), loss_reduction="average")


def test_loss_options_are_checked_before_anything_runs():
    good = {
        "data_folder": "/data",
        "tapt_loss_reduction": "mean",
        "tapt_diversity_scaling": "per_masked_frame",
        "tapt_gumbel_temperature": [2.0, 0.5, 0.999995],
    }
    check_overrides(TAPT_YAML, good)
    check_overrides(TAPT_YAML, {"data_folder": "/data", "tapt_gumbel_temperature": 2})
    bad = [
        ("tapt_loss_reduction", "average", "one of sum, mean"),
        ("tapt_diversity_scaling", "scaled", "one of unscaled, per_masked_frame"),
        ("tapt_gumbel_temperature", 0, "greater than 0"),
        ("tapt_gumbel_temperature", [0.5, 2.0, 0.999995], "start >= end"),
        ("tapt_gumbel_temperature", [2.0, 0.5], "start >= end"),
    ]
    for key, value, expected in bad:
        with pytest.raises(HparamsError, match=expected):
            check_overrides(TAPT_YAML, {"data_folder": "/data", key: value})


def test_tapt_fingerprint_changes_with_every_loss_setting(corpus, tmp_path):
    hparams = load_hparams(str(TAPT_YAML), _overrides(corpus, tmp_path))
    manifest = corpus["manifests"]["train"]
    reference = tapt_fingerprint(hparams, manifest)
    changes = {
        "tapt_loss_reduction": "mean",
        "tapt_diversity_scaling": "per_masked_frame",
        "tapt_gumbel_temperature": [2.0, 0.5, 0.999995],
    }
    for key, value in changes.items():
        assert tapt_fingerprint({**hparams, key: value}, manifest) != reference, key
    assert tapt_fingerprint({**hparams, "tapt_gumbel_temperature": 2.0}, manifest) != reference


def test_tapt_yaml_has_every_vft_setting_with_its_default():
    class AnyTagLoader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return ("!" + suffix, value)

    AnyTagLoader.add_multi_constructor("!", tagged)
    vft = yaml.load(VFT_YAML.read_text(), Loader=AnyTagLoader)
    tapt_settings = yaml.load(TAPT_YAML.read_text(), Loader=AnyTagLoader)
    assert tapt_settings["method"] == "tapt"
    assert tapt_settings["output_folder"] == ("!ref", "results/IEMOCAP/tapt")
    for key, value in vft.items():
        if key not in ("method", "output_folder"):
            assert tapt_settings.get(key) == value, key
    assert tapt_settings["tapt_steps"] == 20000
    # the authors' TAPT: batches of at least 250 s from 50 buckets
    assert (tapt_settings["tapt_batch_seconds"], tapt_settings["tapt_num_buckets"]) == (250.0, 50)
    assert tapt_settings["warmup_steps"] == 100
    assert tapt_settings["tapt_flat_fraction"] == 0.05
    assert tapt_settings["tapt_lr"] == 0.0001
    assert tapt_settings["tapt_max_seconds"] == 10.0


# ----------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------


def test_tapt_loss_falls_on_the_training_audio(stage):
    records = stage["records"]
    assert [r["done"] for r in records] == list(range(STEPS))
    # the optimised loss is the sum over the batch's masked frames (authors' 4.10)
    for record in records:
        assert record["loss"] == pytest.approx(record["per_frame"] * record["masked"], rel=1e-5)
    losses = [r["per_frame"] for r in records]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.03
    log = (stage["output"] / "fold_1" / "tapt" / "train_log.txt").read_text().splitlines()
    assert len(log) == STEPS // 5
    assert log[-1].startswith(f"step: {STEPS} - ")
    terms = ("loss", "loss_per_masked_frame", "contrastive", "diversity", "masked_frames", "lr")
    stats = dict(item.split(": ") for item in log[-1].split(" - ", 1)[1].split(", "))
    assert set(stats) == {f"train {term}" for term in terms}
    window = records[-5:]
    # logged with 3 significant digits
    assert float(stats["train loss"]) == pytest.approx(np.mean([r["loss"] for r in window]), 1e-2)
    assert float(stats["train loss_per_masked_frame"]) == pytest.approx(
        np.mean([r["per_frame"] for r in window]), 1e-2
    )


def test_held_out_session_never_reaches_tapt(stage, corpus):
    seen = {utt for record in stage["records"] for utt in record["ids"]}
    assert seen == set(corpus["train"])  # every training utterance, nothing else
    assert not seen & set(corpus["test"])
    assert not any(utt.startswith("Ses01") for utt in seen)


def test_adapted_folder_holds_the_adapted_weights_and_loads_everywhere(stage, corpus, tmp_path):
    folder = stage["folder"]
    assert folder == stage["output"] / "fold_1" / "tapt" / "adapted_wav2vec2"
    assert not folder.with_name(folder.name + ".partial").exists()
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["optimizer_steps"] == STEPS and marker["settings"]["tapt_steps"] == STEPS

    adapted = Wav2Vec2ForPreTraining.from_pretrained(str(folder)).state_dict()
    original = Wav2Vec2ForPreTraining.from_pretrained(str(corpus["tiny"])).state_dict()
    assert adapted.keys() == original.keys()
    changed = [k for k in adapted if not torch.equal(adapted[k], original[k])]
    assert "wav2vec2.feature_extractor.conv_layers.0.conv.weight" in changed  # all trained
    assert "quantizer.codevectors" in changed
    assert len(changed) > 0.9 * len(adapted)

    (checkpoint,) = (stage["output"] / "fold_1" / "tapt" / "save").glob("CKPT*")
    trained = torch.load(checkpoint / "wav2vec2.ckpt")
    for key, value in adapted.items():
        assert torch.equal(value, trained["model." + key]), key

    from speechbrain.integrations.huggingface.wav2vec2 import Wav2Vec2

    wrapper = Wav2Vec2(source=str(folder), save_path=str(tmp_path / "sb_cache"))
    for key, value in wrapper.model.state_dict().items():
        assert torch.equal(value, adapted["wav2vec2." + key]), key


@pytest.mark.parametrize("hparams_file", [VFT_YAML, TAPT_YAML], ids=["vft.yaml", "tapt.yaml"])
def test_fine_tuning_starts_from_the_adapted_weights(stage, corpus, tmp_path, hparams_file):
    hparams = load_hparams(
        str(hparams_file),
        {
            "data_folder": str(corpus["root"]),
            "output_folder": str(tmp_path),
            "wav2vec2_hub": str(stage["folder"]),
        },
    )
    backbone = hparams["model"].backbone.model.state_dict()
    adapted = _state(stage["folder"])
    assert backbone.keys() == {k[len("wav2vec2.") :] for k in adapted if k.startswith("wav2vec2.")}
    for key, value in backbone.items():
        assert torch.equal(value, adapted["wav2vec2." + key]), key


def test_finished_stage_is_skipped_and_changed_settings_are_refused(stage, corpus):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished TAPT stage was trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tapt, "train_tapt", no_training)
        again = tapt_stage(corpus, _overrides(corpus, stage["output"]))
        assert Path(again) == stage["folder"]
        with pytest.raises(TAPTSettingsError, match="tapt_steps"):
            tapt_stage(corpus, _overrides(corpus, stage["output"], tapt_steps=STEPS + 1))
        with pytest.raises(TAPTSettingsError, match="tapt_loss_reduction"):
            tapt_stage(corpus, _overrides(corpus, stage["output"], tapt_loss_reduction="mean"))


def test_interrupted_tapt_resumes_at_the_step_it_reached(stage, corpus, tmp_path):
    interrupt_after = CKPT_INTERVAL + 2
    original_end = TAPTBrain.on_fit_batch_end

    def crash(self, batch, outputs, loss, should_step):
        original_end(self, batch, outputs, loss, should_step)
        if self.optimizer_step == interrupt_after:
            raise Interrupted

    first: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TAPTBrain, "on_fit_batch_end", crash)
        with pytest.raises(Interrupted):
            _run_stage(corpus, tmp_path, first)
    assert first[-1]["done"] == interrupt_after - 1
    assert not (tmp_path / "fold_1" / "tapt" / "adapted_wav2vec2").exists()

    second: list[dict[str, Any]] = []
    folder = _run_stage(corpus, tmp_path, second)
    # Resumed from the last checkpoint (step 10), not from zero, and ran to the end.
    assert [r["done"] for r in second] == list(range(CKPT_INTERVAL, STEPS))
    # Same batches and losses as the uninterrupted stage, and the same final weights.
    reference = stage["records"][CKPT_INTERVAL:]
    assert [r["ids"] for r in second] == [r["ids"] for r in reference]
    assert [r["loss"] for r in second] == [r["loss"] for r in reference]
    resumed, uninterrupted = _state(folder), _state(stage["folder"])
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def _truncate(path: Path) -> None:
    """Cuts a file to half its bytes, as a full disk or a bad copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_last_checkpoint_resumes_from_the_previous_readable_one(
    stage, corpus, tmp_path, caplog
):
    """The newest checkpoint's weights cut short: the stage says which file it skipped
    and why, resumes from the checkpoint before, and ends with the uninterrupted
    weights; with no readable checkpoint it stops with one message naming the file."""
    interval, interrupt_after = 5, 17  # checkpoints after steps 5, 10 and 15
    original_end = TAPTBrain.on_fit_batch_end

    def crash(self, batch, outputs, loss, should_step):
        original_end(self, batch, outputs, loss, should_step)
        if self.optimizer_step == interrupt_after:
            raise Interrupted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TAPTBrain, "on_fit_batch_end", crash)
        # Every checkpoint kept, as a crash between saving one and deleting the
        # previous one (or a backup copy) leaves them.
        mp.setattr(Checkpointer, "delete_checkpoints", lambda self, *args, **kwargs: None)
        with pytest.raises(Interrupted):
            _run_stage(corpus, tmp_path, [], tapt_ckpt_interval_steps=interval)
    save = tmp_path / "fold_1" / "tapt" / "save"
    newest, previous, oldest = Checkpointer(save).find_checkpoints()  # most recent first

    # None readable: one message naming the newest's file and what to do.
    weights = [c.path / "wav2vec2.ckpt" for c in (newest, previous, oldest)]
    saved = {path: path.read_bytes() for path in weights}
    for path in weights:
        _truncate(path)
    with pytest.raises(UnreadableCheckpointError) as unreadable:
        _run_stage(corpus, tmp_path, [], tapt_ckpt_interval_steps=interval)
    message = str(unreadable.value)
    assert str(weights[0]) in message and "truncated" in message
    assert f"Delete {newest.path}, {previous.path}, {oldest.path} " in message
    assert all(c.path.is_dir() for c in (newest, previous, oldest))  # nothing deleted

    for path in weights[1:]:
        path.write_bytes(saved[path])
    records: list[dict[str, Any]] = []
    caplog.clear()
    with caplog.at_level("WARNING", logger="speechbrain_ptapt.protocol.checkpointing"):
        folder = _run_stage(corpus, tmp_path, records, tapt_ckpt_interval_steps=interval)
    skipped = [m for m in caplog.messages if "Skipping the checkpoint" in m]
    assert len(skipped) == 1 and str(newest.path) in skipped[0]
    assert "wav2vec2.ckpt is truncated" in skipped[0]
    assert [r["done"] for r in records] == list(range(10, STEPS))  # from step 10, not 0
    resumed, uninterrupted = _state(folder), _state(stage["folder"])
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def test_tapt_batches_by_duration_unless_tapt_batch_seconds_is_null(stage, corpus, tmp_path):
    budget, crop, steps = 2.0, 0.5, 6
    durations = {key: float(item["duration"]) for key, item in corpus["train"].items()}
    records: list[dict[str, Any]] = []
    folder = _run_stage(
        corpus, tmp_path / "seconds", records, tapt_batch_seconds=budget, tapt_steps=steps,
        tapt_ckpt_interval_steps=0,
    )
    assert [r["done"] for r in records] == list(range(steps))
    for record in records:
        # at least the budget of crops of at most tapt_max_seconds, closed by the last one
        crops = [min(durations[i], crop) for i in record["ids"]]
        assert sum(crops) >= budget - 1e-9 and sum(crops[:-1]) < budget
    assert "tapt_batch_seconds" in (folder / MARKER_FILE).read_text()
    assert "tapt_batch_seconds" in (stage["folder"] / MARKER_FILE).read_text()

    records = []
    folder = _run_stage(
        corpus, tmp_path / "count", records, tapt_batch_seconds=None, tapt_batch_size=3,
        tapt_steps=steps, tapt_ckpt_interval_steps=0,
    )
    assert [len(r["ids"]) for r in records] == [3] * steps
    # null is recorded as null: every setting of the stage is in its fingerprint
    assert json.loads((folder / MARKER_FILE).read_text())["settings"]["tapt_batch_seconds"] is None


# ----------------------------------------------------------------------------
# Domain-shift meter
# ----------------------------------------------------------------------------


def test_domain_shift_loss_is_lower_after_tapt_on_the_corpus(stage, corpus):
    wavs = [entry["wav"] for entry in corpus["train"].values()][:32]
    options = {"batch_size": 8, "max_seconds": 0.5, "progress": False}
    before = pretraining_loss(str(corpus["tiny"]), wavs, **options)
    after = pretraining_loss(str(stage["folder"]), wavs, **options)
    assert after["loss"] < before["loss"]
    assert before["utterances"] == after["utterances"] == len(wavs)
    assert before["masked_frames"] == after["masked_frames"]  # same masks for both
    assert before["loss"] == pytest.approx(
        before["contrastive"] + before["diversity_weight"] * before["diversity"]
    )
    again = pretraining_loss(str(corpus["tiny"]), wavs, **options)
    assert again["loss"] == before["loss"]  # fixed seed: reproducible


def test_domain_shift_command_line_on_an_audio_folder(stage, corpus, tmp_path, capsys):
    folder = tmp_path / "audio" / "nested"
    folder.mkdir(parents=True)
    wavs = [Path(entry["wav"]) for entry in list(corpus["train"].values())[:3]]
    for wav in wavs:
        shutil.copy(wav, folder / wav.name)
    (folder / f"._{wavs[0].name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert len(audio_files(tmp_path / "audio")) == 3

    out_json = tmp_path / "shift.json"
    code = main(
        [
            "--wav2vec2_hub", str(stage["folder"]), "--data", str(tmp_path / "audio"),
            "--json", str(out_json), "--no_progress", "--seed", "1",
        ]
    )
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pretraining loss ") and "over 3 utterances" in line
    result = json.loads(out_json.read_text())
    assert result["utterances"] == 3 and result["seed"] == 1
    assert f"{result['loss']:.2f}" in line


# ----------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------


def test_tapt_recipe_runs_end_to_end_from_the_repository_root(corpus, tmp_path):
    output = tmp_path / "results"
    command = [
        sys.executable, "recipes/IEMOCAP/train_tapt.py", "hparams/tapt.yaml",
        f"--data_folder={corpus['root']}", f"--output_folder={output}",
        f"--wav2vec2_hub={corpus['tiny']}", "--folds=[1]", "--runs=1",
        "--number_of_epochs=1", "--batch_size=8", "--tapt_steps=10",
        "--tapt_batch_seconds=8", "--device=cpu", "--noprogressbar",
        # Shorter crops than the paper's 10 s keep the test fast.
        "--tapt_max_seconds=1.0", "--max_train_seconds=1.0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["method"] == "tapt" and list(summary["folds"]) == ["1"]
    adapted = output / "fold_1" / "tapt" / "adapted_wav2vec2"
    assert json.loads((adapted / MARKER_FILE).read_text())["optimizer_steps"] == 10
    result = json.loads((output / "fold_1" / "seed_1986" / "result.json").read_text())
    assert result["backbone"] == str(adapted)

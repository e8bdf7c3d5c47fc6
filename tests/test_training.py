"""The shared training loop (``speechbrain_ptapt.stages.training``) on a toy stage: SpeechBrain's
``fit`` over passes of the stage's sampler up to ``optimizer_step_limit``, checkpoints
every N optimizer steps over the whole stage, exact resume in the middle of a pass,
``set_epoch`` on a sampler given to ``fit``, and the run options a stage's yaml mapping
gives its Brain."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import ReproducibleRandomSampler
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_ptapt.data.dataio import DurationBatchSampler
from speechbrain_ptapt.protocol.checkpointing import Checkpointer
from speechbrain_ptapt.stages.training import StepStageBrain, WarmupFlatLinearDecay

RUN_OPTS = {"device": "cpu", "noprogressbar": True}
DURATIONS = [1.0 + 0.25 * (i % 7) for i in range(30)]  # 30 utterances, 1 to 2.5 s


class Interrupted(RuntimeError):
    """Stands for a killed job."""


class ToyBrain(StepStageBrain):
    """A linear model on scalar inputs; records (epoch, optimizer steps done, ids)."""

    def compute_forward(self, batch, stage):
        self.seen.append((self.epoch, self.optimizer_step, [int(i) for i in batch.id]))
        noise = torch.randn(len(batch.id), 1)  # draws from the global random state
        return self.modules.model(batch.x.data + noise)

    def compute_objectives(self, predictions, batch, stage):
        loss = (predictions - 1.0).pow(2).mean()
        self.add_to_log(loss=loss.detach())
        return loss

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.epoch = epoch


def toy_dataset() -> DynamicItemDataset:
    data = {str(i): {"duration": d} for i, d in enumerate(DURATIONS)}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("x")
    def scalar(utt_id: str) -> torch.Tensor:
        return torch.tensor([float(utt_id)])

    dataset.add_dynamic_item(scalar)
    dataset.set_output_keys(["id", "x"])
    return dataset


def toy_stage(
    folder: Path | None, steps: int, brain_class: type = ToyBrain, **settings: Any
) -> ToyBrain:
    torch.manual_seed(0)
    hparams = {
        "optimizer_step_limit": steps,
        "lr_scheduler": WarmupFlatLinearDecay(0.05, steps, warmup_steps=2),
        "epoch_counter": EpochCounter(steps),
        **settings,
    }
    brain = brain_class(
        modules={"model": torch.nn.Linear(1, 1)},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.05),
        hparams=hparams,
        run_opts=RUN_OPTS,
        checkpointer=None if folder is None else Checkpointer(folder),
    )
    brain.seen = []
    return brain


def duration_batches() -> DurationBatchSampler:
    return DurationBatchSampler(DURATIONS, batch_seconds=6.0, num_buckets=3, seed=4)


def test_a_step_stage_trains_whole_passes_up_to_its_step_limit():
    steps = 25
    brain = toy_stage(None, steps)
    brain.fit_steps(toy_dataset(), {"batch_sampler": duration_batches()})
    assert brain.optimizer_step == steps
    passes = duration_batches()
    expected = [(epoch, b) for epoch in range(1, 10) for b in passes.epoch_batches(epoch)]
    assert [(epoch, ids) for epoch, _, ids in brain.seen] == expected[:steps]
    assert len({epoch for epoch, _, _ in brain.seen}) > 2  # several passes, new batches each
    assert [done for _, done, _ in brain.seen] == list(range(steps))
    assert brain.hparams.lr_scheduler.steps_done == steps


def test_checkpoints_every_n_optimizer_steps_across_passes_and_resume_mid_pass(tmp_path):
    steps, every, crash_at = 25, 4, 14
    reference = toy_stage(None, steps)
    reference.fit_steps(toy_dataset(), {"batch_sampler": duration_batches()})

    class Crashing(ToyBrain):
        def on_fit_batch_end(self, batch, outputs, loss, should_step):
            super().on_fit_batch_end(batch, outputs, loss, should_step)
            if self.optimizer_step == crash_at:
                raise Interrupted

    saved: list[int] = []
    save = Checkpointer.save_and_keep_only

    def recording(self, *args, **kwargs):
        saved.append(int(kwargs["meta"]["optimizer_step"]))
        return save(self, *args, **kwargs)

    first = toy_stage(tmp_path, steps, Crashing, ckpt_interval_optimizer_steps=every)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Checkpointer, "save_and_keep_only", recording)
        with pytest.raises(Interrupted):
            first.fit_steps(toy_dataset(), {"batch_sampler": duration_batches()})
    # every 4 optimizer steps of the stage, whatever pass they fall in (a pass holds
    # 7 batches here: SpeechBrain's ckpt_interval_steps restarts its count each epoch)
    assert [len(duration_batches().epoch_batches(epoch)) for epoch in (1, 2)] == [7, 7]
    assert saved == [4, 8, 12]
    assert {epoch for epoch, done, _ in first.seen if done == 12} == {2}  # mid-pass

    resumed = toy_stage(tmp_path, steps, ckpt_interval_optimizer_steps=every)
    resumed.fit_steps(toy_dataset(), {"batch_sampler": duration_batches()})
    assert [done for _, done, _ in resumed.seen] == list(range(12, steps))
    assert resumed.seen == reference.seen[12:]  # same passes, batches and positions
    for key, value in reference.modules.model.state_dict().items():
        assert torch.equal(resumed.modules.model.state_dict()[key], value), key
    # the finished stage keeps one checkpoint, its last step
    (checkpoint,) = Checkpointer(tmp_path).list_checkpoints()
    assert checkpoint.meta["optimizer_step"] == steps


def test_a_sampler_given_to_fit_gets_a_new_epoch_without_ddp():
    """SpeechBrain calls set_epoch only on samplers it makes or wraps for DDP."""
    dataset = toy_dataset()
    brain = toy_stage(None, 10)
    sampler = ReproducibleRandomSampler(dataset, seed=3)
    brain.fit_steps(dataset, {"sampler": sampler, "batch_size": 6, "drop_last": True})
    by_epoch = [[ids for epoch, _, ids in brain.seen if epoch == e] for e in (1, 2)]
    assert [len(b) for b in by_epoch] == [5, 5]  # 30 utterances: 5 batches of 6 per pass
    assert by_epoch[0] != by_epoch[1]
    for batches in by_epoch:
        assert sorted(i for b in batches for i in b) == list(range(30))


def test_the_stage_mapping_gives_the_brain_its_run_options_unless_the_command_line_does():
    brain = toy_stage(None, 7, max_grad_norm=0.0)
    assert (brain.optimizer_step_limit, brain.max_grad_norm) == (7, math.inf)  # 0: no clipping
    _, run_opts, _ = sb.parse_arguments(["x.yaml", "--device=cpu", "--max_grad_norm=2.5"])
    brain = ToyBrain(
        modules={"model": torch.nn.Linear(1, 1)},
        hparams={"optimizer_step_limit": 7, "max_grad_norm": 0.0},
        run_opts=run_opts,
    )
    assert (brain.optimizer_step_limit, brain.max_grad_norm) == (7, 2.5)


def test_a_stage_whose_epoch_counter_runs_out_first_fails():
    brain = toy_stage(None, 25, epoch_counter=EpochCounter(2))
    two_passes = sum(len(duration_batches().epoch_batches(epoch)) for epoch in (1, 2))
    with pytest.raises(RuntimeError, match=f"after {two_passes} of 25 optimizer steps"):
        brain.fit_steps(toy_dataset(), {"batch_sampler": duration_batches()})


def test_stage_mappings_hold_only_references_to_the_stages_flat_keys():
    """A stage's Brain settings (``*_brain_hparams``) hold objects, so they stay out of
    the stage's fingerprint: each value must refer (``!ref``) to a flat key, which
    enters it, and which the command line overrides (``--tapt_steps=...``)."""
    repo = Path(__file__).resolve().parents[1]
    files = [
        *sorted((repo / "recipes").glob("*/hparams/*tapt.yaml")),
        repo / "tests" / "hparams" / "frame_emotion.yaml",
    ]
    mappings = 0
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not re.match(r"^\w+_brain_hparams:\s*$", line):
                continue
            mappings += 1
            for entry in lines[number + 1 :]:
                entry = re.sub(r"(^|\s)#.*$", "", entry).rstrip()
                if not entry:
                    continue
                if not entry.startswith(" "):
                    break
                value = entry.split(":", 1)[1].strip()
                constructor = re.fullmatch(r"!(new|name):[\w.]+", value)
                assert constructor or "!ref <" in value, f"{path.name}: {entry.strip()}"
    assert mappings == 2 * 3 + 1  # TAPT; P-TAPT phases 1 and 2 (IEMOCAP, SAVEE); the test yaml

"""The recipes under ``torchrun`` (DDP, two CPU processes, gloo): preparation,
pseudo-labels and summaries on the main process only, a disjoint share of every
epoch per process with the same number of steps, identical weights at the end.

The recipes run through ``tests/recipe_driver.py --record=DIR``, which records the
ids of every training batch and a digest of the weights after each ``fit``, per
process. V-FT runs a tiny wav2vec2 with LayerDrop, which fails under DDP unless
unused-parameter detection is on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from speechbrain.dataio.sampler import DistributedSamplerWrapper

from speechbrain_ptapt.data.dataio import DurationBatchSampler
from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.protocol.distributed import needs_unused_parameter_search, resize_share
from speechbrain_ptapt.stages.training import StageBrain

DRIVER = REPO / "tests" / "recipe_driver.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TINY = [
    "--folds=[1]", "--runs=1", "--device=cpu", "--noprogressbar", "--batch_size=8",
    "--lr=0.003", "--channel_mask_length=8", "--max_train_seconds=2.0",
]


def torchrun(
    method: str,
    corpus,
    model: Path,
    out: Path,
    record: Path,
    extra: list[str],
    kill: str | None = None,
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2`` on a recipe, from the repository
    root; it must succeed unless a kill point is given."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(DRIVER), f"--record={record}", *([f"--kill={kill}"] if kill else []),
        f"recipes/IEMOCAP/train_{method}.py", f"hparams/{method}.yaml",
        f"--data_folder={corpus.root}", f"--output_folder={out}", f"--wav2vec2_hub={model}",
        *TINY, *extra, "--distributed_backend=gloo",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    if kill is None:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def records(folder: Path) -> dict[int, list[dict]]:
    """Each process's records."""
    ranks = sorted(int(p.stem[4:]) for p in folder.glob("rank*.jsonl"))
    assert ranks == [0, 1]
    return {
        r: [json.loads(line) for line in (folder / f"rank{r}.jsonl").read_text().splitlines()]
        for r in ranks
    }


def batches(recs: dict[int, list[dict]], stage_suffix: str) -> dict[tuple[int, int], list[list]]:
    """``{(rank, epoch): [batch ids, ...]}`` of the stage whose checkpoint folder ends
    with ``stage_suffix``."""
    found: dict[tuple[int, int], list[list]] = defaultdict(list)
    for r, entries in recs.items():
        for e in entries:
            if e["kind"] == "batch" and e["stage"].endswith(stage_suffix):
                found[(r, e["epoch"])].append(e["ids"])
    assert found, f"no training batch of {stage_suffix}"
    return found


def final_weights(recs: dict[int, list[dict]], stage_suffix: str) -> list[str]:
    """The weight digest each process had when the stage's ``fit`` returned."""
    return [
        next(
            e["sha256"]
            for e in recs[r]
            if e["kind"] == "weights" and e["stage"].endswith(stage_suffix)
        )
        for r in sorted(recs)
    ]


@pytest.fixture(scope="module")
def layerdrop_wav2vec2(tiny_wav2vec2, tmp_path_factory) -> Path:
    """The tiny wav2vec2 with LayerDrop 0.5 (wav2vec2-base has 0.1): layers skipped
    on one process get no gradient there, DDP's unused-parameter trap."""
    folder = tmp_path_factory.mktemp("layerdrop_wav2vec2")
    for item in tiny_wav2vec2.iterdir():
        shutil.copy(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text())
    config["layerdrop"] = 0.5
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def vft_ddp(iemocap_corpus, layerdrop_wav2vec2, tmp_path_factory):
    out = tmp_path_factory.mktemp("vft_ddp")
    record = out.parent / (out.name + "_record")
    proc = torchrun(
        "vft", iemocap_corpus, layerdrop_wav2vec2, out, record, ["--number_of_epochs=2"]
    )
    return out, records(record), proc


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def test_shares_of_batches_by_duration_follow_each_epochs_number_of_batches():
    """SpeechBrain's DistributedSamplerWrapper sizes the shares from the first epoch's
    number of batches; batches by duration have another number in other epochs."""
    durations = np.random.default_rng(1).uniform(0.5, 3.0, size=60)
    sampler = DurationBatchSampler(durations, batch_seconds=4.0, num_buckets=4, seed=1)
    lengths = {epoch: len(sampler.epoch_batches(epoch)) for epoch in range(1, 8)}
    assert lengths[1] == len(sampler) + 1 and lengths[6] == len(sampler) - 1  # 22 at epoch 0
    longer = 1
    shares = [DistributedSamplerWrapper(sampler, num_replicas=2, rank=r) for r in (0, 1)]
    shares[0].set_epoch(longer)
    with pytest.raises(AssertionError):
        list(shares[0])  # SpeechBrain's wrapper alone
    for epoch in (longer, next(e for e, n in lengths.items() if n < lengths[longer])):
        for share in shares:
            resize_share(share, epoch)
        got = [[tuple(b) for b in share] for share in shares]
        batches = {tuple(b) for b in sampler.epoch_batches(epoch)}
        assert len(got[0]) == len(got[1]) == math.ceil(len(batches) / 2)  # same steps
        assert set(got[0]) | set(got[1]) == batches  # every batch of the epoch
        assert len(set(got[0]) & set(got[1])) == len(batches) % 2  # padding only


def test_unused_parameter_search_is_asked_for_wav2vec2_stages_only(
    tiny_wav2vec2, layerdrop_wav2vec2
):
    masked = Wav2Vec2Backbone(str(tiny_wav2vec2), freeze_mask_embedding=False)
    assert needs_unused_parameter_search(masked)
    brain = StageBrain(modules={"model": masked}, run_opts={"device": "cpu"})
    assert brain.find_unused_parameters is True
    frozen = Wav2Vec2Backbone(str(tiny_wav2vec2))  # fine-tuning: mask embedding frozen
    assert not needs_unused_parameter_search(frozen)
    layerdrop = Wav2Vec2Backbone(str(layerdrop_wav2vec2))
    assert needs_unused_parameter_search(layerdrop)
    assert not needs_unused_parameter_search(torch.nn.LSTM(4, 4))
    brain = StageBrain(modules={"model": torch.nn.Linear(2, 2)}, run_opts={"device": "cpu"})
    assert brain.find_unused_parameters is False


# ----------------------------------------------------------------------------
# Recipes under torchrun
# ----------------------------------------------------------------------------


def test_vft_finishes_with_one_summary_written_once(vft_ddp):
    out, _, proc = vft_ddp
    assert [p.relative_to(out) for p in out.rglob("summary.json")] == [Path("summary.json")]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["folds"]) == ["1"] and len(summary["folds"]["1"]["runs"]) == 1
    assert (out / "fold_1" / "seed_1986" / "result.json").is_file()
    logs = proc.stdout + proc.stderr
    assert logs.count("| UA (%) |") == 1, "the summary table is printed by the main process only"
    assert logs.count("Preparing IEMOCAP from") == 1, "the corpus is prepared once"


def test_vft_processes_share_every_epoch_disjointly(vft_ddp):
    out, recs, _ = vft_ddp
    train_ids = set(json.loads((out / "manifests" / "fold_1" / "train.json").read_text()))
    found = batches(recs, "seed_1986/save")
    padding = math.ceil(len(train_ids) / 2) * 2 - len(train_ids)
    for epoch in (1, 2):
        seen = {r: [i for b in found[(r, epoch)] for i in b] for r in (0, 1)}
        assert len(found[(0, epoch)]) == len(found[(1, epoch)]), "same number of steps"
        assert len(seen[0]) == len(seen[1]) == math.ceil(len(train_ids) / 2)
        assert set(seen[0]) | set(seen[1]) == train_ids, "every utterance is trained on"
        assert len(set(seen[0]) & set(seen[1])) == padding, "shares overlap only by padding"
    # a new epoch is a new permutation
    assert found[(0, 1)] != found[(0, 2)]


def test_vft_processes_end_with_identical_weights(vft_ddp):
    # with LayerDrop: unused-parameter detection is on, or DDP would have failed
    _, recs, _ = vft_ddp
    first, second = final_weights(recs, "seed_1986/save")
    assert first == second


def test_vft_killed_under_ddp_resumes_to_the_uninterrupted_result(
    vft_ddp, iemocap_corpus, layerdrop_wav2vec2, tmp_path
):
    reference, _, _ = vft_ddp
    out = tmp_path / "vft"
    # the main process dies half-way through writing epoch 2's checkpoint; torchrun
    # then stops the other one
    proc = torchrun(
        "vft", iemocap_corpus, layerdrop_wav2vec2, out, tmp_path / "killed",
        ["--number_of_epochs=2"], kill=r"save:seed_1986/save/.*model\.ckpt$:2",
    )
    assert proc.returncode != 0 and not (out / "summary.json").exists()
    save = out / "fold_1" / "seed_1986" / "save"
    # killed where intended: epoch 1's checkpoint and epoch 2's half-written one
    assert len(list(save.glob("CKPT+*"))) == 1 and list(save.glob("partial+CKPT*"))
    rerun = tmp_path / "rerun"
    torchrun("vft", iemocap_corpus, layerdrop_wav2vec2, out, rerun, ["--number_of_epochs=2"])
    recs = records(rerun)
    # resumed from epoch 1's checkpoint: only epoch 2 is trained again
    assert {e["epoch"] for r in recs for e in recs[r] if e["kind"] == "batch"} == {2}
    for name in ("result.json", "predictions.csv"):
        a = (reference / "fold_1" / "seed_1986" / name).read_text()
        b = (out / "fold_1" / "seed_1986" / name).read_text()
        assert a.replace(str(reference), "") == b.replace(str(out), ""), name


def test_ptapt_adaptation_stages_run_under_ddp(iemocap_corpus, tiny_wav2vec2, tmp_path):
    out, record = tmp_path / "ptapt", tmp_path / "record"
    frame_steps, ptapt_steps = 8, 8
    proc = torchrun(
        "ptapt", iemocap_corpus, tiny_wav2vec2, out, record,
        [
            "--number_of_epochs=1", "--frame_encoder=w2v2_cnn", f"--frame_steps={frame_steps}",
            "--frame_batch_size=8", "--frame_valid_every=4", "--n_clusters=[4,8]",
            f"--ptapt_steps={ptapt_steps}", "--ptapt_batch_seconds=8",
            "--ptapt_max_seconds=2.0", "--warmup_steps=2",
        ],
    )
    recs = records(record)
    for stage, steps in (("frame_emotion/save", frame_steps), ("ptapt/save", ptapt_steps)):
        found = batches(recs, stage)
        epochs = sorted({epoch for _, epoch in found})
        # epoch by epoch (phase 1: between validations) the same number of steps
        for epoch in epochs:
            assert len(found[(0, epoch)]) == len(found[(1, epoch)])
        per_rank = {r: [b for e in epochs for b in found[(r, e)]] for r in (0, 1)}
        # every process makes all the stage's steps, on batches of its own
        assert len(per_rank[0]) == len(per_rank[1]) == steps
        assert not {tuple(b) for b in per_rank[0]} & {tuple(b) for b in per_rank[1]}
        first, second = final_weights(recs, stage)
        assert first == second, f"{stage}: the processes' weights differ"
    adapted = out / "fold_1" / "ptapt" / "adapted_wav2vec2"
    assert json.loads((adapted / "tapt_stage.json").read_text())["optimizer_steps"] == ptapt_steps
    logs = proc.stdout + proc.stderr
    assert logs.count("missing or stale: computing them") == 1, "pseudo-labels made once"
    assert (out / "summary.json").is_file()
    first, second = final_weights(recs, "seed_1986/save")
    assert first == second

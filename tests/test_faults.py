"""A recipe killed (SIGKILL) in the middle of any stage and run again with the same
command ends with the summary and predictions of an uninterrupted run, and
half-written outputs are never taken for finished ones.

Each killed run goes through ``tests/recipe_driver.py``, which kills the process
at a chosen point (half-way through writing a checkpoint file, or in the middle
of the pseudo-label preparation); the rerun is the plain recipe command. Every
process runs with one torch thread, so runs are bit-for-bit reproducible on the
CPU and results are compared exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_recipe_script

from speechbrain_ptapt.protocol.checkpointing import CONTENTS_FILE, Checkpointer
from speechbrain_ptapt.protocol.errors import UnreadableCheckpointError
from speechbrain_ptapt.stages.vft import VFTBrain
from speechbrain_ptapt.testing.synthetic import make_iemocap

DRIVER = REPO / "tests" / "recipe_driver.py"

#: One torch thread: the same command gives the same bits, run after run.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

#: Shared tiny-model settings.
COMMON = [
    "--folds=[1]", "--runs=1", "--device=cpu", "--noprogressbar", "--batch_size=8",
    "--lr=0.003", "--channel_mask_length=8", "--max_train_seconds=2.0",
]

METHODS = {
    # a checkpoint after every batch: kills land in the middle of an epoch
    "vft": ["--number_of_epochs=2", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1"],
    "tapt": [
        "--number_of_epochs=1", "--tapt_steps=12", "--tapt_batch_seconds=8",
        "--tapt_ckpt_interval_steps=3", "--tapt_max_seconds=1.0", "--warmup_steps=2",
    ],
    "ptapt": [
        "--number_of_epochs=1", "--frame_encoder=w2v2_cnn", "--frame_steps=12",
        "--frame_batch_size=8", "--frame_valid_every=4", "--n_clusters=[4,8]",
        "--ptapt_steps=12", "--ptapt_batch_seconds=8", "--ptapt_ckpt_interval_steps=3",
        "--ptapt_max_seconds=2.0", "--warmup_steps=2",
    ],
}


def recipe_args(method: str, corpus, model: Path, out: Path) -> list[str]:
    """The recipe script and its arguments (from the repository root)."""
    return [
        f"recipes/IEMOCAP/train_{method}.py", f"hparams/{method}.yaml",
        f"--data_folder={corpus.root}", f"--output_folder={out}", f"--wav2vec2_hub={model}",
        *COMMON, *METHODS[method],
    ]


def run(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    """Runs the recipe (through the driver when a kill point is given)."""
    prefix = [str(DRIVER), f"--kill={kill}"] if kill else []
    return subprocess.run(
        [sys.executable, *prefix, *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900,
    )


def finished(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL, got status {proc.returncode}:\n" + proc.stderr[-3000:]
    )


def outcome(out: Path) -> dict:
    """What must not depend on interruptions: per-run metrics and predictions."""
    summary = json.loads((out / "summary.json").read_text())
    keys = ("seed", "ua", "wa", "macro_f1", "confusion")
    folds = {
        fold: {
            "ua": entry["ua"],
            "wa": entry["wa"],
            "runs": [{k: r[k] for k in keys} for r in entry["runs"]],
        }
        for fold, entry in summary["folds"].items()
    }
    predictions = {
        p.relative_to(out).as_posix(): p.read_text()
        for p in sorted(out.glob("fold_*/seed_*/predictions.csv"))
    }
    assert predictions, f"no predictions in {out}"
    return {"folds": folds, "mean": summary["mean"], "predictions": predictions}


def no_leftovers(out: Path) -> None:
    """A finished experiment keeps no unfinished checkpoint or temporary file."""
    left = [p for p in out.rglob("*") if p.name.startswith("partial+") or p.suffix == ".tmp"]
    assert not left, left


def staged_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("partial+CKPT*"))


@pytest.fixture(scope="module")
def reference(iemocap_corpus, tiny_wav2vec2, tmp_path_factory):
    """``reference(method)``: the outcome of one uninterrupted run per method. The
    runs are made one after the other in a background thread while the tests run
    their killed commands, so both CPU cores work."""
    outs = {method: tmp_path_factory.mktemp(f"reference_{method}") for method in METHODS}
    procs: dict[str, subprocess.CompletedProcess] = {}
    ready = {method: threading.Event() for method in METHODS}

    def work() -> None:
        for method, out in outs.items():
            try:
                procs[method] = run(recipe_args(method, iemocap_corpus, tiny_wav2vec2, out))
            finally:
                ready[method].set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    def get(method: str) -> dict:
        ready[method].wait()
        finished(procs[method])
        return outcome(outs[method])

    yield get
    thread.join()


# ----------------------------------------------------------------------------
# Checkpoints are atomic
# ----------------------------------------------------------------------------


def test_unfinished_checkpoint_folders_are_ignored_and_cleaned(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, {"model": model})
    good = checkpointer.save_checkpoint(meta={"n": 1})
    assert good is not None and (good.path / CONTENTS_FILE).is_file()
    # a checkpoint being written when the process died, as SpeechBrain lays it out
    staging = tmp_path / "partial+CKPT+2099-01-01+00-00-00+00"
    staging.mkdir()
    (staging / "CKPT.yaml").write_text("end-of-epoch: true\nn: 2\nunixtime: 4.0e+9\n")
    (staging / "model.ckpt").write_bytes(b"\x80\x02trunc")
    # a CKPT folder without its meta file
    (tmp_path / "CKPT+2099-01-01+00-00-01+00").mkdir()
    # a checkpoint whose deletion was cut short: meta and list left, a file gone
    half_deleted = tmp_path / "CKPT+2099-01-01+00-00-02+00"
    half_deleted.mkdir()
    (half_deleted / "CKPT.yaml").write_text("end-of-epoch: true\nn: 3\nunixtime: 4.0e+9\n")
    (half_deleted / CONTENTS_FILE).write_text(json.dumps(["CKPT.yaml", "model.ckpt"]))
    # a checkpoint with a meta file but no contents list (its list went first)
    no_list = tmp_path / "CKPT+2099-01-01+00-00-03+00"
    no_list.mkdir()
    (no_list / "CKPT.yaml").write_text("end-of-epoch: true\nn: 4\nunixtime: 4.0e+9\n")

    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]
    assert checkpointer.find_checkpoint().meta["n"] == 1
    with torch.no_grad():
        model.weight.fill_(7.0)
    checkpointer.recover_if_possible()
    assert not torch.all(model.weight == 7.0)

    newer = checkpointer.save_checkpoint(meta={"n": 5})
    assert not staging.exists() and not half_deleted.exists()
    assert checkpointer.find_checkpoint().path == newer.path
    assert not staged_checkpoints(tmp_path)


def _truncate(path: Path) -> None:
    """Cuts a file to half its bytes, as a full disk or a bad copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_unreadable_checkpoint_files_are_skipped_for_the_newest_readable_one(tmp_path, caplog):
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, {"model": model})
    with torch.no_grad():
        model.weight.fill_(1.0)
    older = checkpointer.save_checkpoint(meta={"n": 1})
    with torch.no_grad():
        model.weight.fill_(2.0)
    newer = checkpointer.save_checkpoint(meta={"n": 2})
    saved = (newer.path / "model.ckpt").read_bytes()

    for damage, reason in [
        (_truncate, "is truncated or corrupt"),
        (lambda p: p.write_bytes(b"\x00" * len(saved)), "starts with zero bytes"),
        (lambda p: p.write_bytes(b""), "is empty"),
    ]:
        (newer.path / "model.ckpt").write_bytes(saved)
        damage(newer.path / "model.ckpt")
        caplog.clear()
        with caplog.at_level("WARNING", logger="speechbrain_ptapt.protocol.checkpointing"):
            recovered = checkpointer.recover_if_possible()
        assert recovered.path == older.path and torch.all(model.weight == 1.0)
        assert f"Skipping the checkpoint {newer.path}: its file model.ckpt {reason}" in (
            caplog.text
        )

    # A bad copy: same size, one flipped byte in the weights (six float32 2.0).
    flipped = bytearray(saved)
    flipped[saved.index(struct.pack("<6f", *[2.0] * 6)) + 1] ^= 0xFF
    (newer.path / "model.ckpt").write_bytes(bytes(flipped))
    assert checkpointer.recover_if_possible().path == older.path

    # None readable: one message naming the newest's file and the folders to delete.
    _truncate(older.path / "model.ckpt")
    with pytest.raises(UnreadableCheckpointError) as error:
        checkpointer.recover_if_possible()
    message = str(error.value)
    assert "\n" not in message and str(newer.path / "model.ckpt") in message
    assert f"Delete {newer.path}, {older.path} and run the command again" in message
    assert older.path.is_dir() and newer.path.is_dir()

    # A checkpoint whose meta file is cut short is not listed at all.
    (older.path / "model.ckpt").unlink()
    (newer.path / "model.ckpt").write_bytes(saved)
    (older.path / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: [1")
    assert [c.path for c in checkpointer.list_checkpoints()] == [newer.path]


class Interrupted(RuntimeError):
    """Stands for a job killed in the middle of a run."""


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Two sessions of a few short turns: fold 1 trains on a handful of utterances."""
    return make_iemocap(
        tmp_path_factory.mktemp("small_iemocap"), sessions=(1, 2), dialogs_per_session=2,
        turns_per_dialog=4, min_seconds=0.4, max_seconds=0.8, junk=False,
    ).root


def _vft(corpus: Path, model: Path, out: Path, monkeypatch) -> None:
    """A two-epoch V-FT run of fold 1, in this process, a checkpoint after every batch."""
    args = [
        "hparams/vft.yaml", f"--data_folder={corpus}", f"--output_folder={out}",
        f"--wav2vec2_hub={model}", "--folds=[1]", "--runs=1", "--number_of_epochs=2",
        "--batch_size=2", "--lr=0.003", "--channel_mask_length=8", "--device=cpu",
        "--noprogressbar", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1",
    ]
    with monkeypatch.context() as m:
        run_recipe_script(REPO / "recipes" / "IEMOCAP" / "train_vft.py", args, m)


def test_vft_with_a_truncated_last_checkpoint_resumes_from_the_previous_one(
    small_corpus, tiny_wav2vec2, tmp_path, monkeypatch
):
    reference = tmp_path / "reference"
    _vft(small_corpus, tiny_wav2vec2, reference, monkeypatch)

    out = tmp_path / "out"
    original_end = VFTBrain.on_fit_batch_end

    def crash(self, batch, outputs, loss, should_step):
        original_end(self, batch, outputs, loss, should_step)
        if self.hparams.epoch_counter.current == 2 and self.step == 2:
            raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(VFTBrain, "on_fit_batch_end", crash)
        with pytest.raises(Interrupted):
            _vft(small_corpus, tiny_wav2vec2, out, monkeypatch)
    run = out / "fold_1" / "seed_1986"
    # The end of epoch 1 and a checkpoint in epoch 2.
    newest, previous = Checkpointer(run / "save").find_checkpoints()
    assert previous.meta["epoch"] == 1 and "epoch" not in newest.meta

    # Every checkpoint unreadable: one line, exit status 1, nothing deleted.
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for checkpoint in (newest, previous):
        _truncate(bad / checkpoint.path.relative_to(out) / "model.ckpt")
    with pytest.raises(SystemExit) as exited:
        _vft(small_corpus, tiny_wav2vec2, bad, monkeypatch)
    message = exited.value.code
    assert message.startswith("error: Cannot resume from the checkpoints in ")
    assert str(bad / newest.path.relative_to(out) / "model.ckpt") in message
    assert len(list((bad / "fold_1" / "seed_1986" / "save").glob("CKPT+*"))) == 2

    _truncate(newest.path / "model.ckpt")
    _vft(small_corpus, tiny_wav2vec2, out, monkeypatch)
    skipped = f"Skipping the checkpoint {newest.path}: its file model.ckpt is truncated"
    assert skipped in (out / "log.txt").read_text()  # the experiment's log
    # Resumed after epoch 1 (logged once), and the run's predictions are the
    # uninterrupted run's.
    log = (run / "train_log.txt").read_text().splitlines()
    assert [line.split(" - ")[0] for line in log] == ["epoch: 1", "epoch: 2", "test: last model"]
    predictions = (run / "predictions.csv").read_text()
    assert predictions == (reference / "fold_1" / "seed_1986" / "predictions.csv").read_text()


# ----------------------------------------------------------------------------
# Killed in the middle of a stage, rerun: the uninterrupted result
# ----------------------------------------------------------------------------


def test_vft_killed_while_writing_a_checkpoint(reference, iemocap_corpus, tiny_wav2vec2, tmp_path):
    out = tmp_path / "vft"
    args = recipe_args("vft", iemocap_corpus, tiny_wav2vec2, out)
    save = out / "fold_1" / "seed_1986" / "save"
    # the 25th checkpoint of the run (in epoch 2 of 2), cut half-way through its weights
    killed(run(args, kill=r"save:seed_1986/save/.*model\.ckpt$:25"))
    assert staged_checkpoints(save), "the kill must leave a half-written checkpoint"
    assert any(save.glob("CKPT+*")) and not (out / "summary.json").exists()
    finished(run(args))
    assert outcome(out) == reference("vft")
    no_leftovers(out)


def test_tapt_killed_in_the_middle_of_the_adaptation(
    reference, iemocap_corpus, tiny_wav2vec2, tmp_path
):
    out = tmp_path / "tapt"
    args = recipe_args("tapt", iemocap_corpus, tiny_wav2vec2, out)
    tapt = out / "fold_1" / "tapt"
    # the checkpoint of step 9 of 12, half written: the rerun resumes at step 6
    killed(run(args, kill=r"save:tapt/save/.*wav2vec2\.ckpt$:3"))
    assert staged_checkpoints(tapt / "save") and not (tapt / "adapted_wav2vec2").exists()
    finished(run(args))
    assert outcome(out) == reference("tapt")
    no_leftovers(out)


def test_ptapt_killed_in_every_stage(reference, iemocap_corpus, tiny_wav2vec2, tmp_path):
    """The same command, killed in phase 1, in each step of the pseudo-label
    preparation and in phase 2, each time run again; the last run completes."""
    out = tmp_path / "ptapt"
    args = recipe_args("ptapt", iemocap_corpus, tiny_wav2vec2, out)
    fold = out / "fold_1"
    labels = fold / "pseudo_labels"
    package = "speechbrain_ptapt.pseudo_labels"

    # phase 1: the second validation's checkpoint (step 8 of 12), half written
    killed(run(args, kill=r"save:frame_emotion/save/.*model\.ckpt$:2"))
    assert staged_checkpoints(fold / "frame_emotion" / "save")
    assert not (fold / "frame_emotion" / "final").exists()

    # feature dump: killed after 120 of 145 utterances (progress recorded at 100)
    killed(run(args, kill=f"call:{package}.features:_AppendableNpy.append:121"))
    assert (fold / "frame_emotion" / "final").is_dir()
    assert (labels / "features" / "features.npy.partial").is_file()
    assert not (labels / "features" / "features.npy").exists()

    # k-means: killed as the second K starts (the first codebook is saved)
    killed(run(args, kill=f"call:{package}.codebooks:fit_kmeans:2"))
    assert (labels / "features" / "features.npy").is_file()
    assert (labels / "kmeans_4.npy").is_file() and not (labels / "kmeans_8.npy").exists()

    # labels: killed with the label array half written
    killed(run(args, kill=f"call:{package}.labels:assign_clusters:2"))
    assert (labels / "labels.npy.partial.npy").is_file()
    assert not (labels / "fingerprint.json").exists() and not (labels / "labels.npy").exists()

    # phase 2: the checkpoint of step 9 of 12, half written (resumed at step 6)
    killed(run(args, kill=r"save:ptapt/save/.*wav2vec2\.ckpt$:3"))
    assert (labels / "fingerprint.json").is_file()
    assert staged_checkpoints(fold / "ptapt" / "save")
    assert not (fold / "ptapt" / "adapted_wav2vec2").exists()

    finished(run(args))
    assert outcome(out) == reference("ptapt")
    no_leftovers(out)

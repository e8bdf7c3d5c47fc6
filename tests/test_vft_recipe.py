"""The V-FT recipe end to end on a synthetic IEMOCAP-layout corpus with a tiny wav2vec2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import IEMOCAP_RECIPES, REPO, TINY_VFT_OVERRIDES, run_recipe_script

from speechbrain_ptapt.stages import vft


@pytest.fixture(scope="module")
def vft_run(iemocap_corpus, tiny_wav2vec2, tmp_path_factory):
    """One V-FT run of fold 1 launched exactly as a user would, from the repository root."""
    out = tmp_path_factory.mktemp("vft_out")
    cmd = [
        sys.executable,
        "recipes/IEMOCAP/train_vft.py",
        "hparams/vft.yaml",
        f"--data_folder={iemocap_corpus.root}",
        f"--output_folder={out}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[1]",
        "--number_of_epochs=8",
        *TINY_VFT_OVERRIDES,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_recipe_writes_summary_predictions_and_metrics(vft_run, iemocap_corpus):
    out, stdout = vft_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "vft" and summary["dataset"] == "IEMOCAP"
    assert list(summary["folds"]) == ["1"]
    fold = summary["folds"]["1"]
    assert [r["seed"] for r in fold["runs"]] == [1986]
    for key in ("ua", "wa", "macro_f1"):
        assert 0.0 <= fold[key] <= 1.0
        assert summary["mean"][key] == pytest.approx(fold[key])
    run = out / "fold_1" / "seed_1986"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["neu", "hap", "sad", "ang"]
    # every 4-class turn of session 1 is scored, whole
    expected = sum(
        1
        for u in iemocap_corpus.utterances
        if u.speaker.startswith("Ses01") and u.code in {"neu", "hap", "exc", "sad", "ang"}
    )
    assert metrics["n"] == expected
    predictions = (run / "predictions.csv").read_text().splitlines()
    assert len(predictions) == expected + 1
    assert all(line.split(",")[0].startswith("Ses01") for line in predictions[1:])
    assert (out / "summary.md").read_text().count("Session 1") == 1
    assert "| UA (%) |" in stdout


def test_held_out_ua_beats_chance(vft_run):
    out, _ = vft_run
    ua = json.loads((out / "summary.json").read_text())["folds"]["1"]["ua"]
    assert ua > 0.35, f"UA {ua:.3f} is not above chance (0.25)"


def test_training_never_sees_the_test_session(vft_run):
    out, _ = vft_run
    train = json.loads((out / "manifests" / "fold_1" / "train.json").read_text())
    assert train and not any(entry["session"] == 1 for entry in train.values())
    assert not any(utt.startswith("Ses01") for utt in train)


def test_rerun_from_the_recipe_folder_skips_finished_runs(vft_run, iemocap_corpus, tiny_wav2vec2):
    out, _ = vft_run
    before = (out / "summary.json").read_text()
    result_mtime = (out / "fold_1" / "seed_1986" / "result.json").stat().st_mtime
    cmd = [
        sys.executable,
        "train_vft.py",
        "hparams/vft.yaml",
        f"--data_folder={iemocap_corpus.root}",
        f"--output_folder={out}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[1]",
        "--number_of_epochs=8",
        *TINY_VFT_OVERRIDES,
    ]
    proc = subprocess.run(cmd, cwd=IEMOCAP_RECIPES, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is finished, skipping" in proc.stdout + proc.stderr
    assert (out / "fold_1" / "seed_1986" / "result.json").stat().st_mtime == result_mtime
    assert json.loads((out / "summary.json").read_text()) == json.loads(before)


def _args(corpus, model, out, epochs=3):
    return [
        "hparams/vft.yaml",
        f"--data_folder={corpus.root}",
        f"--output_folder={out}",
        f"--wav2vec2_hub={model}",
        "--folds=[2]",
        f"--number_of_epochs={epochs}",
        *TINY_VFT_OVERRIDES,
    ]


def test_interrupted_run_resumes_to_the_same_result(
    iemocap_corpus, tiny_wav2vec2, tmp_path, monkeypatch
):
    script = IEMOCAP_RECIPES / "train_vft.py"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with monkeypatch.context() as m:
        run_recipe_script(script, _args(iemocap_corpus, tiny_wav2vec2, straight), m)

    original_on_stage_end = vft.VFTBrain.on_stage_end

    def stop_after_first_epoch(self, stage, stage_loss, epoch=None):
        original_on_stage_end(self, stage, stage_loss, epoch)
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 1")

    with monkeypatch.context() as m:
        m.setattr(vft.VFTBrain, "on_stage_end", stop_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_recipe_script(script, _args(iemocap_corpus, tiny_wav2vec2, resumed), m)
    run = resumed / "fold_2" / "seed_1986"
    assert not (run / "result.json").exists()
    assert any((run / "save").glob("CKPT*"))

    with monkeypatch.context() as m:
        run_recipe_script(script, _args(iemocap_corpus, tiny_wav2vec2, resumed), m)
    log = (run / "train_log.txt").read_text()
    assert log.count("epoch: 1") == 1, "epoch 1 must not be trained twice"
    a = json.loads((straight / "fold_2" / "seed_1986" / "result.json").read_text())
    b = json.loads((run / "result.json").read_text())
    assert b["confusion"] == a["confusion"]
    assert b["ua"] == pytest.approx(a["ua"]) and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    pa = (straight / "fold_2" / "seed_1986" / "predictions.csv").read_text()
    assert (run / "predictions.csv").read_text() == pa


def test_missing_data_folder_is_one_clear_error(tmp_path, tiny_wav2vec2):
    cmd = [
        sys.executable, "recipes/IEMOCAP/train_vft.py", "hparams/vft.yaml",
        f"--data_folder={tmp_path / 'nowhere'}", f"--output_folder={tmp_path / 'out'}",
        f"--wav2vec2_hub={tiny_wav2vec2}", "--device=cpu",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr and "IEMOCAP_full_release" in proc.stderr
    assert "Traceback" not in proc.stderr

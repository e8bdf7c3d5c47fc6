"""Export, sharing and inference: a V-FT run trained by the recipe, exported, loaded in
fresh processes (with the package, and with stock SpeechBrain alone) and compared with
the recipe's own test predictions."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import IEMOCAP_RECIPES, TINY_VFT_OVERRIDES, run_recipe_script

from speechbrain_ptapt.deploy import export, inference
from speechbrain_ptapt.deploy.inference import EmotionRecognizer, chunk_bounds

CLASSES = ["neu", "hap", "sad", "ang"]
TOLERANCE = 1e-5

#: Classifies the files listed in argv[2] (JSON) with a model loaded by LOAD; prints JSON.
CLASSIFY_SCRIPT = r"""
import json, sys
BLOCK
folder, files_json, savedir = sys.argv[1], sys.argv[2], sys.argv[3]
recognizer = LOAD
results = []
for path in json.load(open(files_json)):
    out_prob, score, index, text_lab = recognizer.classify_file(path)
    assert out_prob.shape == (1, len(recognizer.classes)) and len(text_lab) == 1
    results.append({"file": path, "label": text_lab[0], "index": int(index[0]),
                    "score": float(score[0]), "probs": out_prob[0].tolist()})
results.append({"package_loaded": "speechbrain_ptapt" in sys.modules})
print("RESULTS " + json.dumps(results))
"""

FROM_HPARAMS = (
    "from speechbrain_ptapt.deploy.inference import EmotionRecognizer",
    "EmotionRecognizer.from_hparams(source=folder, savedir=savedir)",
)

#: Makes ``import speechbrain_ptapt`` fail, as on a machine without the package.
BLOCK_PACKAGE = r"""
import importlib.abc
class BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "speechbrain_ptapt":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, BlockPackage())
try:
    import speechbrain_ptapt
    raise SystemExit("speechbrain_ptapt is still importable")
except ModuleNotFoundError:
    pass
from speechbrain.inference.interfaces import foreign_class
"""

FOREIGN_CLASS = (
    BLOCK_PACKAGE,
    'foreign_class(source=folder, pymodule_file="custom_interface.py", '
    'classname="EmotionRecognizer", savedir=savedir)',
)


# ---------------------------------------------------------------------------
# Fixtures: one recipe run, one export (whose push fails offline), test audio
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vft_fold(iemocap_corpus, tiny_wav2vec2, tmp_path_factory) -> Path:
    """Fold 1 of a 2-epoch V-FT run of the recipe on the synthetic corpus."""
    out = tmp_path_factory.mktemp("vft_export_out")
    args = [
        "hparams/vft.yaml",
        f"--data_folder={iemocap_corpus.root}",
        f"--output_folder={out}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[1]",
        "--number_of_epochs=2",
        *TINY_VFT_OVERRIDES,
    ]
    with pytest.MonkeyPatch.context() as m:
        run_recipe_script(IEMOCAP_RECIPES / "train_vft.py", args, m)
    return out / "fold_1"


def _offline_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf_home"))
    return env


@pytest.fixture(scope="module")
def pushed(vft_fold, tmp_path_factory):
    """``export FOLD TARGET --push_to_hub`` from an empty working directory, offline."""
    tmp = tmp_path_factory.mktemp("export")
    cwd = tmp / "cwd"
    cwd.mkdir()
    target = tmp / "ser_model"
    cmd = [
        sys.executable,
        "-m",
        "speechbrain_ptapt.deploy.export",
        str(vft_fold),
        str(target),
        "--push_to_hub",
        "someone/ptapt-iemocap-fold1",
    ]
    proc = subprocess.run(
        cmd, cwd=cwd, env=_offline_env(tmp), capture_output=True, text=True, timeout=300
    )
    return target, proc, cwd


@pytest.fixture(scope="module")
def model_folder(pushed) -> Path:
    return pushed[0]


@pytest.fixture(scope="module")
def recipe_predictions(vft_fold) -> dict[str, tuple[str, list[float]]]:
    """Test file path -> (predicted label, class probabilities) from predictions.csv."""
    manifest = json.loads((vft_fold.parent / "manifests" / "fold_1" / "test.json").read_text())
    rows = csv.DictReader((vft_fold / "seed_1986" / "predictions.csv").open())
    return {
        manifest[r["id"]]["wav"]: (r["prediction"], [float(r[f"p_{c}"]) for c in CLASSES])
        for r in rows
    }


@pytest.fixture(scope="module")
def odd_audio(recipe_predictions, tmp_path_factory) -> dict[str, Path]:
    """A test utterance as 16 kHz stereo (same signal twice) and as 8 kHz stereo, a
    0.1 s clip, a 10 ms clip (160 samples), a corrupt file and a missing one."""
    import torchaudio.functional as AF

    folder = tmp_path_factory.mktemp("odd_audio")
    source = next(iter(recipe_predictions))
    wav, rate = sf.read(source, dtype="float32")
    files = {
        "stereo16k": folder / "stereo16k.wav",
        "stereo8k": folder / "stereo8k.wav",
        "clip100ms": folder / "clip100ms.wav",
        "clip10ms": folder / "clip10ms.flac",
        "corrupt": folder / "corrupt.wav",
        "missing": folder / "missing.wav",
    }
    sf.write(files["stereo16k"], np.stack([wav, wav], axis=1), rate, subtype="FLOAT")
    low = AF.resample(torch.from_numpy(wav), rate, 8000).numpy()
    sf.write(files["stereo8k"], np.stack([low, 0.5 * low], axis=1), 8000)
    sf.write(files["clip100ms"], wav[:1600], rate)
    sf.write(files["clip10ms"], wav[:160], rate)
    files["corrupt"].write_bytes(b"RIFF\x00\x00 definitely not a wav file")
    return {"source": Path(source), **files}


def _classify_in_fresh_process(loader, folder: Path, files: list, tmp: Path):
    block, load = loader
    script = CLASSIFY_SCRIPT.replace("BLOCK", block).replace("LOAD", load)
    listing = tmp / "files.json"
    listing.write_text(json.dumps([str(f) for f in files]))
    cwd = tmp / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(listing), str(tmp / "savedir")],
        cwd=cwd,
        env=_offline_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    assert list(cwd.iterdir()) == [], "nothing may be written into the working directory"
    return results[:-1], results[-1]["package_loaded"]


def _assert_same_as_recipe(result: dict, expected: tuple[str, list[float]]) -> None:
    label, probs = expected
    assert result["label"] == label
    assert np.allclose(result["probs"], probs, atol=TOLERANCE, rtol=0)
    assert result["score"] == pytest.approx(max(result["probs"]))


def _assert_valid(result: dict) -> None:
    assert result["label"] in CLASSES
    assert all(np.isfinite(result["probs"])) and sum(result["probs"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# Export and push
# ---------------------------------------------------------------------------


def test_push_without_network_fails_with_one_message_and_keeps_the_folder(pushed):
    target, proc, cwd = pushed
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "someone/ptapt-iemocap-fold1" in errors[0]
    assert "offline" in errors[0] and str(target) in errors[0]
    expected = ["hyperparams.yaml", "model.ckpt", "label_encoder.txt", "custom_interface.py"]
    expected += ["README.md", "wav2vec2/config.json", "wav2vec2/preprocessor_config.json"]
    for name in expected:
        assert (target / name).is_file(), name
    assert not target.with_name(target.name + ".partial").exists()
    assert list(cwd.iterdir()) == []


def test_a_refused_upload_is_one_message_and_the_folder_stays(
    vft_fold, tmp_path, monkeypatch, capsys
):
    """Online with a token, but the Hub cannot be reached: the error of the Hub client
    becomes one message and the exported folder is kept."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    target = tmp_path / "model"
    status = export.main([str(vft_fold), str(target), "--push_to_hub", "someone/ser"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert err[0].startswith("error: Cannot push") and "Name or service not known" in err[0]
    assert (target / "model.ckpt").is_file() and (target / "custom_interface.py").is_file()


def test_model_card_reports_the_experiments_real_scores(model_folder, vft_fold):
    card = (model_folder / "README.md").read_text()
    summary = json.loads((vft_fold.parent / "summary.json").read_text())
    ua, wa = summary["folds"]["1"]["ua"], summary["folds"]["1"]["wa"]
    assert f"| UA (%) | {100 * ua:.1f} | {100 * summary['mean']['ua']:.1f} |" in card
    assert f"| WA (%) | {100 * wa:.1f} | {100 * summary['mean']['wa']:.1f} |" in card
    assert "V-FT" in card and "IEMOCAP" in card and "Session 1" in card
    assert "foreign_class(" in card and "EmotionRecognizer.from_hparams(" in card
    assert "`number_of_epochs`: 2" in card
    assert card.startswith("---\nlibrary_name: speechbrain")


def test_exported_folder_is_self_contained(model_folder, vft_fold):
    hparams = (model_folder / "hyperparams.yaml").read_text()
    code = [line for line in hparams.splitlines() if not line.lstrip().startswith("#")]
    assert not any("speechbrain_ptapt" in line or str(vft_fold.parent) in line for line in code)
    interface = (model_folder / "custom_interface.py").read_text()
    assert interface == Path(inference.__file__).read_text()  # copied verbatim
    run_encoder = (vft_fold / "seed_1986" / "label_encoder.txt").read_text()
    assert (model_folder / "label_encoder.txt").read_text() == run_encoder


def test_the_inference_module_imports_no_module_of_this_package():
    """It is the exported custom_interface.py: stock SpeechBrain must load it alone."""
    allowed = {"__future__", "pathlib", "numpy", "soundfile", "torch", "torchaudio"}
    allowed |= {"speechbrain", "transformers"}
    tree = ast.parse(Path(inference.__file__).read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert imported <= allowed, imported - allowed


def test_export_needs_a_run_choice_when_a_fold_has_several(vft_fold, tmp_path):
    fold = tmp_path / "fold_1"
    shutil.copytree(vft_fold / "seed_1986", fold / "seed_1986")
    shutil.copytree(vft_fold / "seed_1986", fold / "seed_1987")
    with pytest.raises(export.ExportError, match="--run"):
        export.find_run(fold)
    assert export.find_run(fold, "seed_1987") == fold / "seed_1987"
    assert export.find_run(fold, "1986") == fold / "seed_1986"
    (fold / "seed_1987" / "result.json").unlink()
    with pytest.raises(export.ExportError, match="not finished"):
        export.find_run(fold, "seed_1987")


def test_tapt_fold_exports_its_adapted_backbone(vft_fold, tiny_wav2vec2, tmp_path):
    """A fold laid out as the TAPT recipe writes it: the run started from
    fold_1/tapt/adapted_wav2vec2."""
    from transformers import Wav2Vec2Model

    experiment = tmp_path / "tapt"
    fold = experiment / "fold_1"
    adapted = fold / "tapt" / "adapted_wav2vec2"
    shutil.copytree(tiny_wav2vec2, adapted)
    shutil.copytree(vft_fold / "seed_1986", fold / "seed_1986")
    result = json.loads((fold / "seed_1986" / "result.json").read_text())
    (fold / "seed_1986" / "result.json").write_text(
        json.dumps({**result, "backbone": str(adapted)})
    )
    summary = json.loads((vft_fold.parent / "summary.json").read_text())
    (experiment / "summary.json").write_text(json.dumps({**summary, "method": "tapt"}))

    full = export.export_run(fold, tmp_path / "full")
    assert (full / "adapted_wav2vec2" / "config.json").is_file()
    assert "TAPT" in (full / "README.md").read_text()
    backbone = export.export_run(fold, tmp_path / "backbone", backbone_only=True)
    assert not (backbone / "hyperparams.yaml").exists()
    loaded = Wav2Vec2Model.from_pretrained(str(backbone))
    reference = Wav2Vec2Model.from_pretrained(str(tiny_wav2vec2))
    for (name, a), b in zip(loaded.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(export.ExportError, match="no adapted backbone"):
        export.export_run(vft_fold, tmp_path / "vft_backbone", backbone_only=True)


# ---------------------------------------------------------------------------
# Loading in fresh processes
# ---------------------------------------------------------------------------


def test_from_hparams_in_a_fresh_process_reproduces_the_recipe(
    model_folder, recipe_predictions, odd_audio, tmp_path
):
    odd = [odd_audio[k] for k in ("stereo16k", "stereo8k", "clip100ms", "clip10ms")]
    results, _ = _classify_in_fresh_process(
        FROM_HPARAMS, model_folder, [*recipe_predictions, *odd], tmp_path
    )
    for result in results[: len(recipe_predictions)]:
        _assert_same_as_recipe(result, recipe_predictions[result["file"]])
    stereo16k, stereo8k, clip100ms, clip10ms = results[len(recipe_predictions) :]
    _assert_same_as_recipe(stereo16k, recipe_predictions[str(odd_audio["source"])])
    for result in (stereo8k, clip100ms, clip10ms):
        _assert_valid(result)


def test_stock_foreign_class_without_the_package_reproduces_the_recipe(
    model_folder, recipe_predictions, odd_audio, tmp_path
):
    files = [*recipe_predictions, odd_audio["stereo8k"], odd_audio["clip10ms"]]
    results, package_loaded = _classify_in_fresh_process(
        FOREIGN_CLASS, model_folder, files, tmp_path
    )
    assert not package_loaded
    for result in results[: len(recipe_predictions)]:
        _assert_same_as_recipe(result, recipe_predictions[result["file"]])
    for result in results[len(recipe_predictions) :]:
        _assert_valid(result)


def test_classify_cli_reports_bad_files_and_classifies_the_others(
    model_folder, recipe_predictions, odd_audio, tmp_path
):
    good = list(recipe_predictions)[:2]
    files = [good[0], str(odd_audio["corrupt"]), good[1], str(odd_audio["missing"])]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [
            sys.executable, "-m", "speechbrain_ptapt.deploy.classify",
            str(model_folder), *files, "--json",
        ],
        cwd=cwd,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == files
    for result in (results[0], results[2]):
        label, probs = recipe_predictions[result["file"]]
        assert result["label"] == label and list(result["probabilities"]) == CLASSES
        assert np.allclose(list(result["probabilities"].values()), probs, atol=TOLERANCE)
    for result, name in ((results[1], "corrupt.wav"), (results[3], "missing.wav")):
        assert set(result) == {"file", "error"} and name in result["error"]
        assert name in proc.stderr
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------------------
# The interface in this process
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer(model_folder) -> EmotionRecognizer:
    return EmotionRecognizer.from_hparams(source=str(model_folder))


def test_chunks_cover_the_recording_with_the_given_overlap():
    assert chunk_bounds(1000, 1000, 100) == [(0, 1000)]
    assert chunk_bounds(250, 1000, 100) == [(0, 250)]
    bounds = chunk_bounds(2500, 1000, 200)
    assert bounds == [(0, 1000), (800, 1800), (1600, 2500)]
    with pytest.raises(ValueError):
        chunk_bounds(2500, 100, 100)


def test_long_recording_is_encoded_in_bounded_frame_weighted_chunks(recognizer, monkeypatch):
    monkeypatch.setattr(recognizer, "max_chunk_seconds", 1.0)
    monkeypatch.setattr(recognizer, "chunk_overlap_seconds", 0.25)
    seen: list[int] = []
    hook = recognizer.mods.wav2vec2.feature_extractor.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[-1])
    )
    try:
        wav = 0.1 * torch.randn(1, 53000, generator=torch.Generator().manual_seed(1))
        embedding = recognizer.encode_batch(wav)
    finally:
        hook.remove()
    bounds = chunk_bounds(53000, 16000, 4000)  # 1 s chunks every 0.75 s
    assert len(seen) == len(bounds) == 5 and max(seen) <= 16000
    parts, weights = [], []
    for start, end in bounds:
        part, frames = recognizer.encode_segments(wav[:, start:end], torch.tensor([end - start]))
        parts.append(part * frames[0])
        weights.append(float(frames[0]))
    assert torch.allclose(embedding, sum(parts) / sum(weights), atol=1e-6)
    out_prob, score, index, labels = recognizer.classify_batch(wav)
    assert out_prob.shape == (1, 4) and labels[0] == CLASSES[int(index[0])]


def test_interface_matches_the_training_model_on_padded_batches(tiny_wav2vec2, tmp_path):
    """Same weights in the recipe's EmotionClassifier (eval mode) and in the interface."""
    from speechbrain_ptapt.deploy.export import write_inference_folder
    from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
    from speechbrain_ptapt.models.classifier import EmotionClassifier

    torch.manual_seed(3)
    classifier = EmotionClassifier(Wav2Vec2Backbone(str(tiny_wav2vec2)), 4).eval()
    backbone = classifier.backbone
    folder = write_inference_folder(
        tmp_path / "model",
        classifier.state_dict(),
        backbone.config,
        backbone.feature_extractor_config,
        CLASSES,
    )
    recognizer = EmotionRecognizer.from_hparams(source=str(folder))
    wavs = 0.1 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    wav_lens = torch.tensor([1.0, 0.55, 0.03])  # the last one: 240 samples, under 400
    with torch.no_grad():
        expected = classifier.embed(wavs, wav_lens)
        expected_probs = torch.softmax(classifier(wavs, wav_lens), dim=-1)
    assert torch.allclose(recognizer.encode_batch(wavs, wav_lens), expected, atol=TOLERANCE)
    out_prob, _, _, _ = recognizer.classify_batch(wavs, wav_lens)
    assert torch.allclose(out_prob, expected_probs, atol=TOLERANCE)
    stereo = torch.stack([wavs, wavs], dim=2)  # (batch, samples, channels)
    assert torch.allclose(recognizer.classify_batch(stereo, wav_lens)[0], out_prob, atol=1e-6)
    low = recognizer.classify_batch(wavs[:, ::2], wav_lens, sample_rate=8000)[0]
    assert low.shape == (3, 4) and torch.allclose(low.sum(dim=1), torch.ones(3))

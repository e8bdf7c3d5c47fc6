"""The stage cache: fingerprints derived from the recipe yamls, one stale-state policy
for every stage, and one base class for the errors a user can fix.

The fingerprint tests iterate over the real ``recipes/IEMOCAP/hparams/{tapt,ptapt}.yaml``:
every plain setting a stage owns (its prefix) or shares must change the stage's
fingerprint, and every result-neutral one (listed here, explicitly) must not, so a
setting added to a yaml can never be ignored by a finished stage.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_recipe_script
from transformers import Wav2Vec2Config

from speechbrain_ptapt.data.dataio import UnknownLabelError
from speechbrain_ptapt.data.preparation import DataPreparationError
from speechbrain_ptapt.data.subsets import TrainingSubsetError
from speechbrain_ptapt.deploy.export import ExportError
from speechbrain_ptapt.deploy.inference import AudioError
from speechbrain_ptapt.models.backbone import BackboneLoadError
from speechbrain_ptapt.models.wav2vec1 import Wav2Vec1CheckpointError
from speechbrain_ptapt.protocol import errors
from speechbrain_ptapt.protocol.errors import MissingFileError, PtaptError, StageSettingsError
from speechbrain_ptapt.protocol.experiment import load_hparams
from speechbrain_ptapt.protocol.hparams_check import HparamsError
from speechbrain_ptapt.protocol.recipe import user_errors_as_one_line
from speechbrain_ptapt.protocol.repeats import RepeatSettingsError
from speechbrain_ptapt.protocol.stage_cache import StageCache, is_plain
from speechbrain_ptapt.pseudo_labels.labels import (
    PseudoLabelMismatchError,
    pseudo_labels_fingerprint,
)
from speechbrain_ptapt.stages.frame_emotion import frame_fingerprint
from speechbrain_ptapt.stages.ptapt import pseudo_label_options, ptapt_fingerprint
from speechbrain_ptapt.stages.tapt import TAPTSettingsError, tapt_fingerprint

HPARAMS = REPO / "recipes" / "IEMOCAP" / "hparams"

#: The result-neutral keys of each stage in the recipe yamls: where files go, loader
#: workers, log and checkpoint intervals, the k-means device.
NEUTRAL = {
    "tapt_": {
        "tapt_folder", "tapt_save_folder", "tapt_adapted_folder", "tapt_num_workers",
        "tapt_ckpt_interval_steps", "tapt_log_interval_steps",
    },
    "frame_": {
        "frame_folder", "frame_save_folder", "frame_num_workers", "frame_ckpt_interval_steps",
    },
    "kmeans_": {"kmeans_device"},
    "ptapt_": {
        "ptapt_folder", "ptapt_save_folder", "ptapt_adapted_folder", "ptapt_num_workers",
        "ptapt_ckpt_interval_steps", "ptapt_log_interval_steps",
    },
}

#: Keys without the prefix that each stage reads (``wav2vec2_revision`` is tested in
#: test_backbone_loading.py: it enters for a hub id only).
SHARED = {
    "tapt_": ("wav2vec2_hub", "sample_rate", "warmup_steps"),
    "frame_": ("wav2vec2_hub", "sample_rate", "classes", "wav2vec1_checkpoint"),
    "kmeans_": ("n_clusters", "sample_rate"),
    "ptapt_": ("wav2vec2_hub", "sample_rate", "warmup_steps", "n_clusters"),
}

#: Keys the recipe reads for fine-tuning only: no adaptation stage depends on them.
OTHER_STAGES = ("lr", "number_of_epochs", "batch_size", "time_mask_prob", "max_train_seconds")

#: A top-level yaml entry built by hyperpyyaml (``!new:``, ``!name:``): an object.
_OBJECT = re.compile(r"^(\w+):\s*!(new|name):", re.MULTILINE)


def yaml_keys(name: str, prefix: str, hparams: dict[str, Any]) -> tuple[list[str], set[str]]:
    """The top-level keys of a recipe yaml with ``prefix``, and those that are objects
    or hold objects (a Brain's settings mapping, ``<prefix>brain_hparams``)."""
    text = (HPARAMS / name).read_text(encoding="utf-8")
    keys = re.findall(rf"^({prefix}\w+):", text, re.MULTILINE)
    objects = {key for key, _ in _OBJECT.findall(text) if key.startswith(prefix)}
    return keys, objects | {key for key in keys if not is_plain(hparams[key])}


#: Settings checked against a list of choices: another valid one.
OTHER_CHOICE = {"kmeans_init": "k-means++", "kmeans_fit_set": "per_k"}


def changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 1.5 if value in (0.0, float("inf")) else value * 2
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return [*value, value[-1]] if value else [1]
    if value is None:
        return 1.5
    raise AssertionError(f"no other value for {value!r}")


@pytest.fixture(scope="module")
def inputs(tiny_wav2vec2, tmp_path_factory) -> dict[str, Any]:
    """The recipe yamls loaded as a run loads them, a manifest and a phase-1 folder."""
    root = tmp_path_factory.mktemp("stage_cache")
    manifest = root / "train.json"
    manifest.write_text(json.dumps({
        "u1": {"wav": "/a/u1.wav", "duration": 1.5, "emo": "neu"},
        "u2": {"wav": "/a/u2.wav", "duration": 2.0, "emo": "ang"},
    }))
    frame_model = root / "final"
    frame_model.mkdir()
    (frame_model / "frame_model.ckpt").write_bytes(b"weights")
    (frame_model / "frame_model.json").write_text("{}")
    overrides = {"data_folder": str(root), "output_folder": str(root / "out"),
                 "wav2vec2_hub": str(tiny_wav2vec2)}
    return {
        "tapt.yaml": load_hparams(str(HPARAMS / "tapt.yaml"), overrides),
        "ptapt.yaml": load_hparams(str(HPARAMS / "ptapt.yaml"), overrides),
        "manifest": manifest,
        "frame_model": frame_model,
        "config": Wav2Vec2Config.from_pretrained(str(tiny_wav2vec2)),
    }


def fingerprint_of(prefix: str, hparams: dict[str, Any], inputs: dict[str, Any]) -> dict:
    """The stage's fingerprint, through the functions the stages call."""
    manifest = inputs["manifest"]
    if prefix == "tapt_":
        return tapt_fingerprint(hparams, manifest)
    if prefix == "frame_":
        return frame_fingerprint(hparams, manifest)
    if prefix == "kmeans_":
        options = pseudo_label_options(
            hparams, {"device": "cpu"}, inputs["frame_model"], manifest, inputs["config"]
        )
        return pseudo_labels_fingerprint(**options)
    return ptapt_fingerprint(hparams, manifest, {"labels": "of phase 1"})


STAGES = [("tapt_", "tapt.yaml"), ("frame_", "ptapt.yaml"), ("kmeans_", "ptapt.yaml"),
          ("ptapt_", "ptapt.yaml")]


@pytest.mark.parametrize(("prefix", "yaml_name"), STAGES, ids=[p for p, _ in STAGES])
def test_every_plain_setting_of_a_stage_changes_its_fingerprint(prefix, yaml_name, inputs):
    hparams = inputs[yaml_name]
    keys, objects = yaml_keys(yaml_name, prefix, hparams)
    settings = [k for k in keys if k not in NEUTRAL[prefix] and k not in objects]
    assert len(settings) >= 5, settings
    # Phase 1 reads some keys with one frame encoder only: each key must count for
    # at least one of them.
    encoders = ["wav2vec1", "w2v2_cnn"] if prefix == "frame_" else [hparams.get("frame_encoder")]
    ignored: dict[str, set[str]] = {}
    for encoder in encoders:
        base = {**hparams, "frame_encoder": encoder} if prefix == "frame_" else hparams
        reference = fingerprint_of(prefix, base, inputs)
        ignored[encoder] = {
            key
            for key in (*settings, *SHARED[prefix])
            if fingerprint_of(
                prefix, {**base, key: OTHER_CHOICE.get(key, changed(base[key]))}, inputs
            ) == reference
        }
    missed = set.intersection(*ignored.values())
    assert not missed, f"settings of the {prefix} stage its fingerprint ignores: {missed}"
    if prefix == "frame_":
        # wav2vec 1.0 reads no wav2vec2 or CNN-aggregator setting, wav2vec2's CNN no
        # wav2vec 1.0 checkpoint.
        assert ignored["wav2vec1"] == {
            "wav2vec2_hub", "frame_cnn_aggregator_layers", "frame_cnn_aggregator_kernel",
        }
        assert ignored["w2v2_cnn"] == {"wav2vec1_checkpoint"}


@pytest.mark.parametrize(("prefix", "yaml_name"), STAGES, ids=[p for p, _ in STAGES])
def test_result_neutral_keys_and_built_objects_leave_the_fingerprint_alone(
    prefix, yaml_name, inputs
):
    hparams = inputs[yaml_name]
    keys, objects = yaml_keys(yaml_name, prefix, hparams)
    assert NEUTRAL[prefix] <= set(keys)
    reference = fingerprint_of(prefix, hparams, inputs)
    for key in sorted(NEUTRAL[prefix]) + list(OTHER_STAGES):
        assert fingerprint_of(prefix, {**hparams, key: changed(hparams[key])}, inputs) == (
            reference
        ), key
    if prefix != "kmeans_":  # the k-means settings build nothing
        assert objects, "the yaml builds the stage's objects (model, checkpointer ...)"
    for key in objects:
        assert key not in reference
        assert fingerprint_of(prefix, {**hparams, key: object()}, inputs) == reference, key


def test_phase_2_fingerprint_depends_on_its_pseudo_labels_and_training_data(inputs, tmp_path):
    hparams = inputs["ptapt.yaml"]
    reference = ptapt_fingerprint(hparams, inputs["manifest"], {"labels": 1})
    assert ptapt_fingerprint(hparams, inputs["manifest"], {"labels": 2}) != reference
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"u1": {"wav": "/a/u1.wav", "duration": 1.5}}))
    assert ptapt_fingerprint(hparams, other, {"labels": 1}) != reference


# ----------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------


def _trained(tmp_path: Path, fingerprint: dict) -> StageCache:
    return StageCache(
        "TAPT", fingerprint, tmp_path / "tapt" / "adapted" / "record.json",
        checkpoints=tmp_path / "tapt" / "save", checkpoint_record="tapt_settings.json",
    )


def test_a_trained_stage_is_reused_when_its_fingerprint_matches_and_refused_otherwise(tmp_path):
    cache = _trained(tmp_path, {"tapt_steps": 10, "tapt_lr": 0.1})
    assert not cache.is_done()
    folder = cache.publish_folder(lambda partial: (partial / "weights").write_text("w"), steps=10)
    assert sorted(p.name for p in folder.iterdir()) == ["record.json", "weights"]
    assert not list(folder.parent.glob("*.partial"))
    assert json.loads((folder / "record.json").read_text()) == {
        "settings": {"tapt_steps": 10, "tapt_lr": 0.1}, "steps": 10
    }
    assert cache.is_done([folder / "weights"])

    stale = _trained(tmp_path, {"tapt_steps": 20, "tapt_lr": 0.1})
    with pytest.raises(StageSettingsError) as refused:
        stale.is_done()
    message = str(refused.value)
    assert "differs in: tapt_steps (10 -> 20)" in message and "tapt_lr" not in message
    assert f"delete {tmp_path / 'tapt'} to run the TAPT stage again" in message
    assert (folder / "weights").read_text() == "w"  # nothing deleted
    assert issubclass(TAPTSettingsError, StageSettingsError)

    # A folder of that name without the record was not written by the stage.
    (folder / "record.json").unlink()
    with pytest.raises(StageSettingsError, match="has no record.json"):
        cache.is_done()


def test_checkpoints_of_other_settings_are_refused_and_kept(tmp_path):
    cache = _trained(tmp_path, {"tapt_steps": 10})
    cache.guard_checkpoints()
    record = tmp_path / "tapt" / "save" / "tapt_settings.json"
    assert json.loads(record.read_text()) == {"settings": {"tapt_steps": 10}}
    cache.guard_checkpoints()  # the same settings: resume
    (tmp_path / "tapt" / "save" / "CKPT+1").mkdir()
    with pytest.raises(StageSettingsError, match=r"checkpoints .* tapt_steps \(10 -> 11\)"):
        _trained(tmp_path, {"tapt_steps": 11}).guard_checkpoints()
    assert (tmp_path / "tapt" / "save" / "CKPT+1").is_dir()
    record.unlink()  # checkpoints whose settings nobody knows
    with pytest.raises(StageSettingsError, match="have no tapt_settings.json"):
        cache.guard_checkpoints()


def test_derived_data_is_computed_again_when_stale(tmp_path, caplog):
    output = tmp_path / "labels.npy"
    output.write_text("labels")

    def cache(fingerprint: dict) -> StageCache:
        return StageCache("pseudo-labels", fingerprint, tmp_path / "fingerprint.json",
                          expensive=False, field=None)

    assert not cache({"seed": 1}).is_done([output])
    cache({"seed": 1}).publish()
    assert json.loads((tmp_path / "fingerprint.json").read_text()) == {"seed": 1}
    assert cache({"seed": 1}).is_done([output])
    with caplog.at_level(logging.INFO, logger="speechbrain_ptapt.protocol.stage_cache"):
        assert not cache({"seed": 2}).is_done([output])
    assert "differs in: seed (1 -> 2)" in caplog.text
    (tmp_path / "fingerprint.json").write_text('{"seed": ')  # cut short
    assert not cache({"seed": 1}).is_done([output])
    output.unlink()
    cache({"seed": 1}).publish()
    assert not cache({"seed": 1}).is_done([output])


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------

#: Every user-facing error class and the built-in class it keeps.
USER_ERRORS = {
    AudioError: RuntimeError,
    BackboneLoadError: RuntimeError,
    UnknownLabelError: ValueError,
    ExportError: RuntimeError,
    HparamsError: ValueError,
    DataPreparationError: Exception,
    PseudoLabelMismatchError: RuntimeError,
    RepeatSettingsError: ValueError,
    TrainingSubsetError: ValueError,
    TAPTSettingsError: RuntimeError,
    Wav2Vec1CheckpointError: RuntimeError,
    errors.MissingFileError: FileNotFoundError,
    errors.InputError: ValueError,
    errors.StageSettingsError: RuntimeError,
    errors.UnreadableCheckpointError: RuntimeError,
}


def test_every_user_facing_error_derives_from_one_base_and_keeps_its_builtin_class():
    for error, builtin in USER_ERRORS.items():
        assert issubclass(error, PtaptError) and issubclass(error, builtin), error


def _run_recipe_raising(error: BaseException) -> None:
    """A recipe body, run as the scripts run theirs, that raises ``error``."""
    with user_errors_as_one_line():
        raise error


def test_the_recipes_report_user_errors_in_one_line_and_bugs_with_their_traceback():
    with pytest.raises(SystemExit) as exited:
        _run_recipe_raising(MissingFileError("no such file: /data/x.json\n(say what to do)"))
    assert exited.value.code == "error: no such file: /data/x.json (say what to do)"
    # A FileNotFoundError of a bug is no user error: it keeps its traceback.
    with pytest.raises(FileNotFoundError, match="internal"):
        _run_recipe_raising(FileNotFoundError("internal"))


def test_a_missing_hparams_file_is_one_line_naming_it(tmp_path, monkeypatch):
    script = REPO / "recipes" / "IEMOCAP" / "train_vft.py"
    with pytest.raises(SystemExit) as exited:
        run_recipe_script(script, ["hparams/nowhere.yaml"], monkeypatch, cwd=tmp_path)
    message = exited.value.code
    assert isinstance(message, str) and message.startswith("error: Hyperparameter file")
    assert "hparams/nowhere.yaml" in message

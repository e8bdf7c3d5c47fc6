"""Training subsets for the data-efficiency sweep: nested, reproducible, per class,
chosen by fraction or by hours, and read by every stage of a fold."""

from __future__ import annotations

import json
import math
import random
import shlex
from collections import Counter
from pathlib import Path

import pytest
import speechbrain.utils.logger
from conftest import REPO
from fakes import CLASSES, FakeFineTune, fake_prepare, manifest, run_iemocap_recipe

from speechbrain_ptapt.data.subsets import (
    SubsetOptions,
    TrainingSubsetError,
    halving_level_for_hours,
    make_training_subset,
    subset_ids,
)
from speechbrain_ptapt.protocol import recipe
from speechbrain_ptapt.stages import frame_emotion, ptapt, tapt

HPARAMS = Path(__file__).resolve().parent / "hparams" / "repeats.yaml"
IEMOCAP_HPARAMS = REPO / "recipes" / "IEMOCAP" / "hparams"
DATA = manifest(1, per_class=40)  # 160 utterances of 90 s: 4 h


def test_subsets_are_nested_for_one_seed():
    full = set(DATA)
    previous = full
    for level in range(1, 6):
        subset = set(subset_ids(DATA, 0.5**level, seed=7))
        assert subset < previous
        previous = subset
    assert set(subset_ids(DATA, 0.3, seed=7)) < set(subset_ids(DATA, 0.6, seed=7))


def test_same_seed_same_subset_other_seed_other_subset():
    shuffled = dict(random.Random(0).sample(list(DATA.items()), len(DATA)))
    a = subset_ids(DATA, 0.25, seed=7)
    assert set(subset_ids(shuffled, 0.25, seed=7)) == set(a)  # manifest order is irrelevant
    assert subset_ids(DATA, 0.25, seed=7) == a
    assert set(subset_ids(DATA, 0.25, seed=8)) != set(a)


def test_every_class_keeps_its_share_rounded_up():
    for fraction, per_class in ((0.5, 20), (0.25, 10), (0.125, 5), (1 / 16, 3), (0.01, 1)):
        counts = Counter(DATA[i]["emo"] for i in subset_ids(DATA, fraction, seed=1))
        assert counts == {c: per_class for c in CLASSES}, fraction


def test_fraction_one_is_the_whole_manifest_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(DATA))
    subset = make_training_subset(path, SubsetOptions())
    assert subset.manifest == str(path) and subset.utterances == 160
    assert subset.hours == pytest.approx(4.0) and subset.full_hours == pytest.approx(4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]


def test_subset_manifest_is_written_beside_the_fold_manifest(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(DATA))
    subset = make_training_subset(path, SubsetOptions(fraction=0.25, seed=3))
    assert Path(subset.manifest) == tmp_path / "train_fraction0.25_seed3.json"
    written = json.loads(Path(subset.manifest).read_text())
    assert list(written) == subset_ids(DATA, 0.25, seed=3)
    assert all(written[k] == DATA[k] for k in written)
    assert (subset.utterances, subset.halvings) == (40, 2)
    assert subset.hours == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("target", "level", "hours"),
    [
        (4.0, 0, 4.0),
        (3.0, 0, 4.0),  # log(4/3) < log(3/2)
        (2.5, 1, 2.0),
        (1.1, 2, 1.0),
        (0.7, 3, 0.5),  # log(0.7/0.5) < log(1/0.7)
        (math.sqrt(2), 1, 2.0),  # equally far from 1 h and 2 h: the larger subset
        (0.01, 6, 0.1),  # one utterance per class is the smallest subset
        (100.0, 0, 4.0),
    ],
)
def test_hours_target_picks_the_nearest_halving_level_on_a_log_scale(
    target, level, hours, tmp_path
):
    assert halving_level_for_hours(DATA, target, seed=0) == level
    path = tmp_path / "train.json"
    path.write_text(json.dumps(DATA))
    subset = make_training_subset(path, SubsetOptions(hours=target, seed=0))
    assert subset.fraction == 0.5**level and subset.hours == pytest.approx(hours)
    assert subset.hours_target == target


@pytest.mark.parametrize(
    "kwargs", [{"fraction": 0.0}, {"fraction": 1.5}, {"hours": -1.0}, {"fraction": 0.5, "hours": 1}]
)
def test_invalid_subset_settings_are_refused(kwargs):
    with pytest.raises(TrainingSubsetError):
        SubsetOptions(**kwargs)


def test_hours_need_durations(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"a": {"wav": "a.wav", "emo": "neu"}}))
    with pytest.raises(TrainingSubsetError, match="duration"):
        make_training_subset(path, SubsetOptions(hours=1.0))


# ----------------------------------------------------------------------------
# The recipe loop
# ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_pip_freeze(monkeypatch):
    """SpeechBrain's env.log lists the installed packages (seconds); not needed here."""
    monkeypatch.setattr(speechbrain.utils.logger, "get_environment_description", lambda: "")


def test_adaptation_and_fine_tuning_read_the_subset_and_the_summary_records_it(
    tmp_path, monkeypatch
):
    """The TAPT recipe script hands the reduced manifest to its adaptation stage and to
    every fine-tuning run, which starts from the stage's backbone."""
    fake = FakeFineTune(lambda fold, seed: 0.7)
    monkeypatch.setattr(recipe, "fine_tune", fake)
    adapted: list[str] = []

    def tapt_stage(hparams, run_opts, train_manifest):
        adapted.append(str(train_manifest))
        assert hparams["fold"] == "5"
        return "adapted"

    monkeypatch.setattr(tapt, "run_tapt_stage", tapt_stage)
    argv = [
        str(HPARAMS),
        f"--data_folder={tmp_path}",
        f"--output_folder={tmp_path}",
        "--folds=[5]",
        "--runs=2",
        "--train_fraction=0.25",
    ]
    run_iemocap_recipe("tapt", argv, monkeypatch, fake_prepare(per_class=10))
    summary = json.loads((tmp_path / "summary.json").read_text())
    subset_file = tmp_path / "manifests" / "fold_5" / "train_fraction0.25_seed1986.json"
    assert adapted == [str(subset_file)]
    assert set(fake.manifests) == {str(subset_file)}
    assert fake.backbones == ["adapted", "adapted"]
    full = json.loads((tmp_path / "manifests" / "fold_5" / "train.json").read_text())
    subset = json.loads(subset_file.read_text())
    assert list(subset) == subset_ids(full, 0.25, 1986)
    assert len(subset) == 4 * math.ceil(40 / 4)  # 4 training sessions x 10 per class
    fold = summary["folds"]["5"]
    assert fold["train_fraction"] == 0.25 and fold["train_halvings"] == 2
    assert fold["train_utterances"] == 40 and fold["full_train_utterances"] == 160
    assert fold["train_hours"] == pytest.approx(40 * 90 / 3600)
    assert summary["train_data"] == {
        "train_fraction": 0.25,
        "train_hours": None,
        "subset_seed": 1986,
    }
    assert "25 % of the training utterances (40, 1.00 h)" in (tmp_path / "summary.md").read_text()


def test_other_training_data_in_the_same_output_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "fine_tune", FakeFineTune(lambda fold, seed: 0.7))
    argv = [
        str(HPARAMS),
        f"--data_folder={tmp_path}",
        f"--output_folder={tmp_path}",
        "--folds=[5]",
        "--runs=1",
    ]
    run_iemocap_recipe("vft", [*argv, "--train_hours=1"], monkeypatch, fake_prepare())
    with pytest.raises(SystemExit, match="one output_folder per amount"):
        run_iemocap_recipe("vft", [*argv, "--train_fraction=0.5"], monkeypatch, fake_prepare())


class StageReached(Exception):
    """Stops a stage once its training data is known."""


def test_every_ptapt_step_reads_the_subset(tmp_path, monkeypatch, tiny_wav2vec2):
    """Phase 1, k-means (pseudo-labels) and phase 2 of the P-TAPT recipe all get the
    reduced manifest (each step is replaced once it has been handed its data)."""
    seen: dict[str, str] = {}

    def frame_stage(hparams, run_opts, train_manifest):
        seen["phase 1"] = str(train_manifest)
        folder = tmp_path / "frame_model"  # files to hash, for the labels' fingerprint
        folder.mkdir()
        for name in ("frame_model.ckpt", "frame_model.json"):
            (folder / name).write_text("phase 1")
        return folder

    def pseudo_labels(manifest, out_folder, **kwargs):
        seen["k-means"] = str(manifest)
        Path(out_folder).mkdir(parents=True, exist_ok=True)
        (Path(out_folder) / "fingerprint.json").write_text("{}")
        return Path(out_folder)

    class Store:
        def __init__(self, folder):
            self.n_clusters = [8, 16]

    def phase_2(model, hparams, run_opts, train_manifest, store, checkpointer):
        seen["phase 2"] = str(train_manifest)
        raise StageReached

    monkeypatch.setattr(frame_emotion, "run_frame_stage", frame_stage)  # the script's import
    monkeypatch.setattr(ptapt, "prepare_pseudo_labels", pseudo_labels)
    monkeypatch.setattr(ptapt, "PseudoLabelStore", Store)
    monkeypatch.setattr(ptapt, "train_ptapt", phase_2)
    argv = [
        str(IEMOCAP_HPARAMS / "ptapt.yaml"),
        f"--data_folder={tmp_path}",
        f"--output_folder={tmp_path}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[5]",
        "--train_fraction=0.5",
        "--n_clusters=[8,16]",
        "--device=cpu",
    ]
    with pytest.raises(StageReached):
        run_iemocap_recipe("ptapt", argv, monkeypatch, fake_prepare())
    subset = str(tmp_path / "manifests" / "fold_5" / "train_fraction0.5_seed1986.json")
    assert seen == {"phase 1": subset, "k-means": subset, "phase 2": subset}


def test_tapt_reads_the_subset(tmp_path, monkeypatch, tiny_wav2vec2):
    seen = []

    def train(model, hparams, run_opts, train_manifest, checkpointer):
        seen.append(str(train_manifest))
        raise StageReached

    monkeypatch.setattr(tapt, "train_tapt", train)
    argv = [
        str(IEMOCAP_HPARAMS / "tapt.yaml"),
        f"--data_folder={tmp_path}",
        f"--output_folder={tmp_path}",
        f"--wav2vec2_hub={tiny_wav2vec2}",
        "--folds=[5]",
        "--train_hours=0.5",
        "--device=cpu",
    ]
    with pytest.raises(StageReached):
        run_iemocap_recipe("tapt", argv, monkeypatch, fake_prepare())
    # 160 utterances x 90 s = 4 h: 0.5 h is three halvings
    assert seen == [str(tmp_path / "manifests" / "fold_5" / "train_fraction0.125_seed1986.json")]


def test_sweep_driver_runs_every_method_at_every_amount_then_the_report(tmp_path, capsys):
    import runpy

    driver = runpy.run_path(str(REPO / "recipes" / "IEMOCAP" / "data_efficiency.py"))
    assert (
        driver["main"](
            [
                "--data_folder=/data/IEMOCAP",
                f"--output_root={tmp_path}",
                "--dry_run",
                "--device=cuda:0",
            ]
        )
        == 0
    )
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 4 * 3 + 1
    assert commands[0][1:] == [
        "train_vft.py",
        "hparams/vft.yaml",
        "--data_folder=/data/IEMOCAP",
        f"--output_folder={tmp_path / 'vft' / 'fraction1'}",
        "--folds=[5]",
        "--runs=20",
        "--train_fraction=1",
        "--device=cuda:0",
    ]
    amounts = [(c[1], c[7]) for c in commands[:-1]]
    assert amounts == [
        (f"train_{m}.py", f"--train_fraction={f}")
        for f in ("1", "0.5", "0.25", "0.125")
        for m in ("vft", "tapt", "ptapt")
    ]
    assert commands[-1][1:] == [
        "-m",
        "speechbrain_ptapt.analysis.report",
        str(tmp_path),
        "--out",
        str(tmp_path / "report"),
    ]
    by_hours = driver["sweep_commands"](
        "/d", str(tmp_path), ["ptapt"], hours=[3, 0.5], fractions=None
    )
    assert [c[7] for c in by_hours[:-1]] == ["--train_hours=3", "--train_hours=0.5"]
    assert by_hours[0][4] == f"--output_folder={tmp_path / 'ptapt' / '3h'}"

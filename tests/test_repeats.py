"""Repeated runs and the outlier rule: constructed run lists, then the recipe loop with
a stand-in fine-tuning run (no training)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import speechbrain.utils.logger
from fakes import FakeFineTune, fake_prepare, run_iemocap_recipe

from speechbrain_ptapt.protocol import recipe
from speechbrain_ptapt.protocol.experiment import summary_markdown
from speechbrain_ptapt.protocol.repeats import (
    RepeatSettings,
    RepeatSettingsError,
    find_outlier,
    largest_possible_deviation,
    repeat_runs,
)

HPARAMS = Path(__file__).resolve().parent / "hparams" / "repeats.yaml"
GOOD = [0.70, 0.71, 0.69, 0.70, 0.72, 0.68, 0.70, 0.71]


# ----------------------------------------------------------------------------
# The rule on constructed lists
# ----------------------------------------------------------------------------


def test_a_run_far_below_the_others_is_the_outlier_with_hand_computed_bounds():
    uas = [*GOOD, 0.30]
    outlier = find_outlier(uas)
    assert outlier is not None and outlier.index == 8
    assert outlier.mean == pytest.approx(statistics.fmean(uas))
    assert outlier.std == pytest.approx(statistics.stdev(uas))  # sample std, candidate included
    assert outlier.n == 9
    assert outlier.reason() == (
        f"UA 0.300 outside mean {statistics.fmean(uas):.3f} ± 2 × "
        f"{statistics.stdev(uas):.3f} (sample std of the 9 kept runs)"
    )


def test_runs_within_two_std_and_equal_runs_are_kept():
    assert find_outlier(GOOD) is None
    assert find_outlier([0.5] * 10) is None
    assert find_outlier([0.7]) is None and find_outlier([]) is None


def test_the_farthest_of_two_outliers_goes_first():
    uas = [0.70] * 10 + [0.71] * 10 + [0.50, 0.40]
    assert find_outlier(uas).index == 21


def test_with_five_runs_the_candidate_cannot_be_two_std_from_a_mean_it_belongs_to():
    uas = [0.70, 0.70, 0.70, 0.70, 0.25]  # a run at chance level
    assert largest_possible_deviation(5) == pytest.approx(4 / math.sqrt(5))  # 1.79
    assert largest_possible_deviation(6) > 2.0
    assert find_outlier(uas) is None
    assert not RepeatSettings(runs=5, first_seed=0).rule_can_act()
    assert RepeatSettings(runs=20, first_seed=0).rule_can_act()


def test_leave_one_out_reference_catches_it_with_five_runs():
    uas = [0.70, 0.71, 0.69, 0.70, 0.25]
    outlier = find_outlier(uas, reference="others")
    assert outlier.index == 4 and outlier.n == 4
    assert outlier.mean == pytest.approx(0.70) and outlier.std == pytest.approx(
        statistics.stdev([0.70, 0.71, 0.69, 0.70])
    )
    assert "of the 4 other kept runs" in outlier.reason()
    assert RepeatSettings(runs=5, first_seed=0, reference="others").rule_can_act()


def test_the_band_width_is_configurable():
    uas = [*GOOD, 0.62]
    assert find_outlier(uas, num_std=2.0) is not None
    assert find_outlier(uas, num_std=3.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"runs": 0}, {"max_reruns": -1}, {"num_std": 0}, {"reference": "median"}],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(RepeatSettingsError):
        RepeatSettings(**{"runs": 5, "first_seed": 1, **kwargs})


# ----------------------------------------------------------------------------
# Discard and re-run
# ----------------------------------------------------------------------------


def by_seed(table: dict[int, float], default: float = 0.70):
    """``run(seed)`` returning the UA of ``table`` (``default`` for other seeds) and
    recording the seeds it was asked for."""
    asked: list[int] = []

    def run(seed: int) -> dict:
        asked.append(seed)
        return {"seed": seed, "ua": table.get(seed, default)}

    return run, asked


def test_outlier_is_discarded_and_rerun_with_the_next_unused_seed():
    settings = RepeatSettings(runs=8, first_seed=100)
    run, asked = by_seed({100 + i: u for i, u in enumerate(GOOD)} | {103: 0.30})
    fold = repeat_runs(run, settings)
    assert asked == [*range(100, 108), 108]
    assert [r["seed"] for r in fold.discarded] == [103]
    assert fold.discarded[0]["reason"].startswith("UA 0.300 outside mean ")
    assert fold.discarded[0]["outlier_test"]["n"] == 8
    assert [r["seed"] for r in fold.kept] == [100, 101, 102, 104, 105, 106, 107, 108]
    assert fold.runs[-1]["replaces"] == 103
    assert fold.reruns == 1 and not fold.reruns_exhausted


def test_a_bad_rerun_is_itself_discarded_and_rerun():
    settings = RepeatSettings(runs=8, first_seed=0)
    run, asked = by_seed({i: u for i, u in enumerate(GOOD)} | {2: 0.30, 8: 0.20, 9: 0.71})
    fold = repeat_runs(run, settings)
    assert asked == [*range(8), 8, 9]
    assert [r["seed"] for r in fold.discarded] == [2, 8]
    assert fold.runs[-1] == {"seed": 9, "ua": 0.71, "discarded": False, "replaces": 8}
    assert len(fold.kept) == 8 and fold.reruns == 2


def test_when_reruns_run_out_the_outlier_is_kept_and_flagged():
    settings = RepeatSettings(runs=8, first_seed=0, max_reruns=2)
    run, asked = by_seed({i: u for i, u in enumerate(GOOD)} | {0: 0.2, 8: 0.2, 9: 0.2})
    fold = repeat_runs(run, settings)
    assert asked == [*range(10)]  # 8 runs + 2 re-runs, no more
    assert fold.reruns == 2 and fold.reruns_exhausted
    assert [r["seed"] for r in fold.discarded] == [0, 8]
    assert len(fold.kept) == 8
    last = fold.kept[-1]
    assert last["seed"] == 9 and last["outlier"] and not last["discarded"]
    assert "re-runs are used up" in last["reason"]
    assert fold.record() == {
        "kept_runs": 8,
        "discarded_runs": 2,
        "reruns": 2,
        "reruns_exhausted": True,
    }


def test_no_reruns_allowed_flags_without_discarding():
    run, asked = by_seed({0: 0.1})
    fold = repeat_runs(run, RepeatSettings(runs=8, first_seed=0, max_reruns=0))
    assert asked == list(range(8)) and not fold.discarded
    assert fold.runs[0]["outlier"] and fold.reruns_exhausted


def test_rule_switched_off_keeps_every_run():
    run, asked = by_seed({0: 0.1})
    fold = repeat_runs(run, RepeatSettings(runs=8, first_seed=0, discard_outliers=False))
    assert asked == list(range(8)) and len(fold.kept) == 8 and not fold.reruns


# ----------------------------------------------------------------------------
# In the recipe loop
# ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_pip_freeze(monkeypatch):
    """SpeechBrain's env.log lists the installed packages (seconds); not needed here."""
    monkeypatch.setattr(speechbrain.utils.logger, "get_environment_description", lambda: "")


#: Fold 1: seed 1989 fails, its replacement 1994 fails too, 1995 is fine.
#: Fold 2: every run within 2 std.
FOLD_UAS = {
    "1": {1986 + i: u for i, u in enumerate(GOOD)} | {1989: 0.30, 1994: 0.20, 1995: 0.69},
    "2": {1986 + i: u - 0.05 for i, u in enumerate(GOOD)},
}


def run_loop(out: Path, monkeypatch, *extra: str) -> tuple[dict, FakeFineTune]:
    """The V-FT recipe script on a fake corpus with fake fine-tuning runs."""
    fake = FakeFineTune(lambda fold, seed: FOLD_UAS[fold][seed])
    monkeypatch.setattr(recipe, "fine_tune", fake)
    argv = [str(HPARAMS), f"--data_folder={out}", f"--output_folder={out}", *extra]
    run_iemocap_recipe("vft", argv, monkeypatch, fake_prepare())
    return json.loads((out / "summary.json").read_text()), fake


def test_recipe_discards_reruns_and_records_the_decisions(tmp_path, monkeypatch):
    summary, fake = run_loop(tmp_path, monkeypatch)
    assert fake.trained == [("1", s) for s in range(1986, 1996)] + [
        ("2", s) for s in range(1986, 1994)
    ]
    fold = summary["folds"]["1"]
    runs = {r["seed"]: r for r in fold["runs"]}
    assert [r["seed"] for r in fold["runs"]] == list(range(1986, 1996))
    assert [s for s, r in runs.items() if r["discarded"]] == [1989, 1994]
    assert runs[1989]["reason"].startswith("UA 0.300 outside mean")
    assert runs[1994]["replaces"] == 1989 and runs[1995]["replaces"] == 1994
    kept = [FOLD_UAS["1"][s] for s in runs if not runs[s]["discarded"]]
    assert len(kept) == 8
    assert fold["ua"] == pytest.approx(statistics.fmean(kept))
    assert fold["ua_std"] == pytest.approx(statistics.stdev(kept))
    assert (fold["kept_runs"], fold["discarded_runs"], fold["reruns"]) == (8, 2, 2)
    assert fold["reruns_exhausted"] is False
    assert summary["folds"]["2"]["discarded_runs"] == 0
    means = [summary["folds"][f]["ua"] for f in ("1", "2")]
    assert summary["mean"]["ua"] == pytest.approx(statistics.fmean(means))
    assert summary["mean"]["ua_std"] == pytest.approx(statistics.stdev(means))
    assert summary["repeats"]["max_reruns"] == 5
    # on disk: the summary table, the fold's decision log, a marker in each discarded run
    assert (tmp_path / "summary.md").read_text() == summary_markdown(summary)
    log = json.loads((tmp_path / "fold_1" / "repeats.json").read_text())
    assert [r["seed"] for r in log["runs"] if r["discarded"]] == [1989, 1994]
    marker = json.loads((tmp_path / "fold_1" / "seed_1989" / "discarded.json").read_text())
    assert marker["reason"] == runs[1989]["reason"]
    md = (tmp_path / "summary.md").read_text()
    assert "Session 1, seed 1989: discarded, UA 0.300 outside mean" in md


def test_rerunning_the_command_reaches_the_same_decisions_without_training(tmp_path, monkeypatch):
    first, _ = run_loop(tmp_path, monkeypatch)
    second, fake = run_loop(tmp_path, monkeypatch)
    assert fake.trained == []
    assert second == first


def test_fewer_reruns_allowed_keeps_the_last_outlier(tmp_path, monkeypatch):
    summary, fake = run_loop(tmp_path, monkeypatch, "--max_reruns=1")
    assert ("1", 1995) not in fake.trained
    fold = summary["folds"]["1"]
    assert fold["reruns_exhausted"] is True and fold["kept_runs"] == 8
    assert [r["seed"] for r in fold["runs"] if r.get("outlier")] == [1994]

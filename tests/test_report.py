"""The comparison report on constructed summaries: means, stds, bootstrap bounds,
paired tests and the Table 4 ratio against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys

import numpy as np
import pytest

from speechbrain_ptapt.analysis.report import (
    bootstrap_ci,
    improvement_ratio,
    main,
    paired_t_test,
    sign_flip_test,
    write_report,
)
from speechbrain_ptapt.protocol.experiment import summarize, write_json

CLASSES = ["neu", "hap"]


def run(seed: int, ua: float, **extra) -> dict:
    """A run result whose WA and macro-F1 are offset from its UA, and a confusion."""
    return {
        "seed": seed,
        "ua": ua,
        "wa": ua + 0.02,
        "macro_f1": ua - 0.02,
        "confusion": [[seed % 3, 1], [2, 3]],
        **extra,
    }


def summary(
    method: str,
    folds: dict[str, list[dict]],
    hours: float | None = None,
    fraction: float = 1.0,
    dataset: str = "IEMOCAP",
) -> dict:
    """A summary as the recipes write it."""
    info = {}
    if hours is not None:
        info = {f: {"train_fraction": fraction, "train_hours": hours} for f in folds}
    return summarize(
        folds,
        method,
        dataset,
        fold_info=info,
        classes=CLASSES,
        train_data={"train_fraction": fraction, "train_hours": None, "subset_seed": 1},
    )


#: Fold means: V-FT 0.65 / 0.80, TAPT 0.70 / 0.90, P-TAPT 0.73 / 0.90.
EXPERIMENTS = {
    "vft": {
        "1": [run(1, 0.60), run(2, 0.70)],
        "2": [run(1, 0.80), run(2, 0.10, discarded=True, reason="UA 0.100 outside ...")],
    },
    "tapt": {"1": [run(1, 0.70), run(2, 0.70)], "2": [run(1, 0.90)]},
    "ptapt": {"1": [run(1, 0.72), run(2, 0.74)], "2": [run(1, 0.90)]},
}


@pytest.fixture
def summaries(tmp_path):
    folders = []
    for method, folds in EXPERIMENTS.items():
        write_json(tmp_path / "results" / method / "summary.json", summary(method, folds))
        folders.append(tmp_path / "results" / method)
    return folders


@pytest.fixture
def report(summaries, tmp_path):
    return write_report(summaries, tmp_path / "report", resamples=4000, seed=0)


def rows(report: dict) -> dict[str, dict]:
    (group,) = report["groups"]
    return {row["method"]: row for row in group["methods"]}


def test_fold_means_and_stds_over_kept_runs(report):
    vft = rows(report)["vft"]
    assert vft["folds"]["1"]["ua"] == pytest.approx(0.65)
    assert vft["folds"]["1"]["ua_std"] == pytest.approx(statistics.stdev([0.60, 0.70]))
    assert vft["folds"]["2"]["ua"] == pytest.approx(0.80)  # the discarded 0.10 is left out
    assert vft["folds"]["2"]["kept_runs"] == 1
    assert vft["folds"]["1"]["wa"] == pytest.approx(0.67)
    assert vft["mean"]["ua"] == pytest.approx(0.725)
    assert vft["mean"]["macro_f1"] == pytest.approx(0.705)
    assert vft["mean"]["ua_run_std"] == pytest.approx(math.sqrt(0.005 / 2))
    assert vft["discarded"] == [
        {"fold": "2", "seed": 2, "ua": 0.10, "reason": "UA 0.100 outside ..."}
    ]
    # kept: seeds 1 and 2 of fold 1, seed 1 of fold 2 (the confusion's [0][0] is seed % 3)
    assert vft["confusion"] == [[1 + 2 + 1, 3], [6, 9]]


def test_bootstrap_interval_resamples_runs_within_folds(report):
    # V-FT: fold 1 resampled means are 0.60 / 0.65 / 0.70 with p = 1/4, 1/2, 1/4 and
    # fold 2 has one run, so the mean over folds is 0.700 / 0.725 / 0.750.
    low, high = rows(report)["vft"]["ua_ci95"]
    assert (low, high) == (pytest.approx(0.70), pytest.approx(0.75))
    # TAPT: no spread within folds, so no spread of the mean.
    assert rows(report)["tapt"]["ua_ci95"] == [pytest.approx(0.80), pytest.approx(0.80)]


def test_bootstrap_is_seeded():
    folds = {"1": [0.6, 0.65, 0.7, 0.71], "2": [0.5, 0.8, 0.55]}
    a = bootstrap_ci(folds, resamples=2000, seed=3)
    assert bootstrap_ci(folds, resamples=2000, seed=3) == a
    assert bootstrap_ci(folds, resamples=2000, seed=4) != a
    assert a[0] < statistics.fmean([0.665, 1.85 / 3]) < a[1]


def test_paired_comparison_over_folds(report):
    (group,) = report["groups"]
    comparison = next(c for c in group["comparisons"] if (c["a"], c["b"]) == ("V-FT", "TAPT"))
    assert comparison["differences"] == {"1": pytest.approx(0.05), "2": pytest.approx(0.10)}
    assert comparison["mean_difference"] == pytest.approx(0.075)
    assert comparison["sign_flip_p"] == pytest.approx(0.5)  # 2 of the 4 sign patterns
    assert comparison["t"] == pytest.approx(3.0)
    assert comparison["t_p"] == pytest.approx(1 - 2 / math.pi * math.atan(3.0))
    # bootstrap of the difference: V-FT's 0.700 / 0.725 / 0.750 against TAPT's 0.80
    assert comparison["ci95"] == [pytest.approx(0.05), pytest.approx(0.10)]
    assert len(group["comparisons"]) == 3


@pytest.mark.parametrize(
    ("differences", "p"),
    [([3, 2, -1], 0.5), ([1, 2, 4], 0.25), ([1, 2, -4], 1.0), ([0.1] * 5, 2 / 32), ([0, 0], 1.0)],
)
def test_sign_flip_test_is_exact(differences, p):
    assert sign_flip_test(differences) == pytest.approx(p)


@pytest.mark.parametrize(
    ("t", "df"),
    [(12.706204736, 1), (4.30265273, 2), (3.182446305, 3), (2.776445105, 4), (2.228138852, 10)],
)
def test_t_test_matches_the_table_of_critical_values(t, df):
    # differences with sample std 1 and mean t / sqrt(n): the statistic is t
    deviations = np.linspace(-1.0, 1.0, df + 1)
    deviations /= deviations.std(ddof=1)
    for sign in (1, -1):
        b = sign * t / math.sqrt(df + 1) + deviations
        statistic, p = paired_t_test(b, np.zeros(df + 1))
        assert statistic == pytest.approx(sign * t)
        assert p == pytest.approx(0.05, abs=1e-8)


def test_paired_t_test_edge_cases():
    assert paired_t_test([0.1], [0.0]) is None
    assert paired_t_test([0.3, 0.4], [0.3, 0.4]) == (0.0, 1.0)
    assert paired_t_test([0.3, 0.4], [0.2, 0.3]) == (math.inf, 0.0)  # equal differences
    assert paired_t_test([0.2, 0.3], [0.3, 0.4]) == (-math.inf, 0.0)


def test_table_4_ratio_reproduces_the_paper():
    # Table 4 of the paper: V-FT, TAPT, P-TAPT UA at 0.5, 1, 3 and 7 h, and its ratio row.
    paper = [
        ((56.8, 58.1, 58.8), 65.0),
        ((60.9, 62.9, 64.1), 62.5),
        ((66.4, 69.3, 70.0), 80.6),
        ((67.3, 72.5, 73.7), 81.3),
    ]
    for (vft, tapt, ptapt), ratio in paper:
        # the paper prints one decimal (81.25 as 81.3)
        assert improvement_ratio(vft, tapt, ptapt) == pytest.approx(ratio, abs=0.051)
    assert improvement_ratio(0.7, 0.8, 0.7) is None


def test_group_ratio_and_markdown_tables(report, tmp_path):
    (group,) = report["groups"]
    assert group["improvement_ratio"] == pytest.approx((0.80 - 0.725) / (0.815 - 0.725) * 100)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Method | Session 1 | Session 2 | Mean | 95 % CI of mean |" in md
    assert "| V-FT | 65.0 ± 7.1 | 80.0 | 72.5 | [70.0, 75.0] |" in md
    assert "| TAPT − V-FT | Session 1: +5.0, Session 2: +10.0 | +7.5 |" in md
    assert "### WA (%)" in md and "### macro-F1 (%)" in md
    assert "V-FT, Session 2, seed 2: UA 0.100 outside ..." in md
    assert "| neu | 4 | 3 | 57.1 |" in md  # summed confusion, recall 4 / 7
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["groups"][0]["methods"][0]["mean"]["ua"] == pytest.approx(0.725)


def test_data_efficiency_table_from_a_sweep(tmp_path):
    # Table 4's 3 h and 1 h columns, session 5 only, plus full-data results of two folds:
    # the table uses the fold common to every cell.
    paper = {"vft": (66.4, 60.9), "tapt": (69.3, 62.9), "ptapt": (70.0, 64.1)}
    for method, (three, one) in paper.items():
        for fraction, hours, ua in ((0.5, 2.8, three), (0.25, 1.4, one)):
            folds = {"5": [run(1, ua / 100 - 0.01), run(2, ua / 100 + 0.01)]}
            write_json(
                tmp_path / "sweep" / method / f"{fraction}" / "summary.json",
                summary(method, folds, hours=hours, fraction=fraction),
            )
        full = {"4": [run(1, 0.5)], "5": [run(1, 0.70)]}
        write_json(tmp_path / "full" / method / "summary.json", summary(method, full, hours=5.5))
    report = write_report([tmp_path / "sweep", tmp_path / "full"], tmp_path / "out")
    (table,) = report["data_efficiency"]
    assert table["folds"] == ["5"]
    assert [c["label"] for c in table["columns"]] == ["~1.4 h", "~2.8 h", "~5.5 h"]
    ratios = [c["ratio"] for c in table["columns"]]
    assert ratios[:2] == [pytest.approx(62.5), pytest.approx(2.9 / 3.6 * 100)]
    assert ratios[2] is None  # every method at 0.70: no gain of P-TAPT to compare with
    assert table["columns"][0]["ua"]["tapt"] == pytest.approx(0.629)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Training data | ~1.4 h | ~2.8 h | ~5.5 h |" in md
    assert "| Ratio (%) | 62.5 | 80.6 | - |" in md
    assert "| V-FT | 60.9 | 66.4 | 70.0 |" in md
    assert len(report["groups"]) == 3  # one per amount of data


def test_tables_are_written_without_matplotlib(summaries, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "no_mpl"
    assert main([*map(str, summaries), "--out", str(out), "--resamples", "500"]) == 0
    md = (out / "report.md").read_text()
    assert "| Method | Session 1 | Session 2 | Mean | 95 % CI of mean |" in md
    assert "Figures not drawn: matplotlib is not installed" in md
    assert json.loads((out / "report.json").read_text())["figures"] is None
    assert not list(out.glob("*.png"))


def test_figures_are_drawn_when_matplotlib_is_installed(summaries, tmp_path):
    report = write_report(summaries, tmp_path / "figs", resamples=200)
    if importlib.util.find_spec("matplotlib") is None:
        assert report["figures"] is None
    else:
        assert report["figures"] == ["ua_by_fold_iemocap_all.png", "confusion_iemocap_all.png"]
        assert all((tmp_path / "figs" / name).stat().st_size > 0 for name in report["figures"])


def test_a_folder_is_searched_and_two_runs_of_one_method_get_their_folder_name(tmp_path):
    folds = {"1": [run(1, 0.6)]}
    write_json(tmp_path / "a" / "vft_lr1" / "summary.json", summary("vft", folds))
    write_json(tmp_path / "a" / "vft_lr2" / "summary.json", summary("vft", folds))
    report = write_report([tmp_path / "a"], tmp_path / "out", resamples=100)
    assert [r["label"] for r in report["groups"][0]["methods"]] == [
        "V-FT (vft_lr1)",
        "V-FT (vft_lr2)",
    ]


def test_missing_input_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "nowhere does not exist" in capsys.readouterr().err

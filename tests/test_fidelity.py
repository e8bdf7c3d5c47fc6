"""The README's fidelity table is the one the recipe yamls give, and every default
it calls the authors' equals the authors' value."""

from __future__ import annotations

from pathlib import Path

from speechbrain_ptapt.analysis.fidelity import SETTINGS, fidelity_markdown, mismatches

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_default_given_as_the_authors_equals_their_value():
    assert mismatches() == []


def test_the_readme_holds_the_current_table():
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- fidelity:start -->\n")[1].split("<!-- fidelity:end -->")[0]
    assert table == fidelity_markdown(), (
        "README's fidelity table is stale: paste `python -m speechbrain_ptapt.analysis.fidelity`"
    )


def test_a_changed_default_is_caught(tmp_path):
    folder = Path(__file__).resolve().parents[1] / "recipes" / "IEMOCAP" / "hparams"
    for name in ("vft", "tapt", "ptapt"):
        text = (folder / f"{name}.yaml").read_text(encoding="utf-8")
        if name == "tapt":
            text = text.replace("\ntapt_steps: 20000", "\ntapt_steps: 100")
        (tmp_path / f"{name}.yaml").write_text(text, encoding="utf-8")
    assert any("tapt_steps" in problem for problem in mismatches(tmp_path))


def test_every_stage_of_the_method_is_covered():
    assert {s.stage for s in SETTINGS} == {"all", "V-FT", "TAPT", "P-TAPT 1", "k-means", "P-TAPT 2"}

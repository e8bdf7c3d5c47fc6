"""Recipe bookkeeping, checked the way SpeechBrain checks its own recipes.

``tests/recipes/<Dataset>.csv`` lists every recipe: its script, hparams file,
data preparation, README and the flags of a quick debug run. These tests
check that every yaml under ``recipes/`` is listed, every listed file exists,
every debug flag names a yaml key or a SpeechBrain run option, every top-level
yaml key is read by the code (package or recipe scripts) or referenced by
another entry of its yaml, and that the IEMOCAP and SAVEE yamls of a method
define the same keys (the recipes differ only in values and preparation).
"""

from __future__ import annotations

import ast
import csv
import re
import shlex
from pathlib import Path

import pytest
from speechbrain.core import RunOptions

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CSV_FOLDER = REPO / "tests" / "recipes"
FILE_COLUMNS = ("Script_file", "Hparam_file", "Data_prep_file", "Readme_file")
COLUMNS = ("Task", "Dataset", *FILE_COLUMNS, "test_debug_flags", "test_debug_checks")

_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")
_REFERENCE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])*>")
_COMMENT = re.compile(r"(^|\s)#.*$")
_FLAG = re.compile(r"^--([A-Za-z_][A-Za-z0-9_]*)(=.*)?$")


def read_recipe_rows(dataset: str | None = None) -> list[dict[str, str]]:
    """The rows of ``tests/recipes/*.csv`` (of one dataset's csv when given)."""
    pattern = f"{dataset}.csv" if dataset else "*.csv"
    rows = []
    for path in sorted(CSV_FOLDER.glob(pattern)):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append({**row, "csv": path.name})
    return rows


def debug_flags(row: dict[str, str]) -> list[str]:
    """The ``test_debug_flags`` of a row, split like a shell would."""
    return shlex.split(row["test_debug_flags"])


def debug_files(row: dict[str, str]) -> list[str]:
    """The files ``test_debug_checks`` expects in the output folder (``file_exists=[a,b]``)."""
    match = re.fullmatch(r"\s*file_exists=\[([^\]]*)\]\s*", row["test_debug_checks"])
    assert match, f"{row['csv']}: test_debug_checks must be file_exists=[...]"
    return [name.strip() for name in match[1].split(",") if name.strip()]


def yaml_top_level_keys(path: Path) -> list[str]:
    """Keys at column 0 of a hyperpyyaml file, in file order."""
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _TOP_LEVEL_KEY.match(line)
        if match:
            keys.append(match[1])
    return keys


def yaml_references(path: Path) -> set[str]:
    """Keys referenced as ``<key>`` (``!ref``, ``!copy``) by the file's entries.

    Comments are left out: a ``<key>`` in a comment is no use of the key.
    """
    refs: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        refs |= set(_REFERENCE.findall(_COMMENT.sub("", line)))
    return refs


def _strings(node: ast.AST) -> set[str]:
    """String constants in ``node``: a constant, or inside tuples, lists, sets, dict values."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_strings(element) for element in node.elts))
    if isinstance(node, ast.Dict):
        return set().union(*(_strings(value) for value in node.values))
    if isinstance(node, ast.BinOp):
        return _strings(node.left) | _strings(node.right)
    return set()


def _target_names(node: ast.Assign | ast.AnnAssign) -> list[str]:
    """Names assigned by an assignment statement."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def names_read_by(path: Path) -> set[str]:
    """Names a Python file reads hparams entries by.

    String subscripts (``hparams["lr"]``), the key of ``get``/``pop`` calls
    and of ``getattr``/``hasattr`` (``getattr(self.hparams, "train_logger",
    None)``), attributes of an object named ``hparams``
    (``self.hparams.class_weights``), and the strings of constants whose name
    says they list keys (``FINGERPRINT_KEYS``, ``_COMMON_KEYS``) or of the
    tuple a ``for`` loop iterates over.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            names |= _strings(node.slice)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in {"get", "pop"} and node.args:
                names |= _strings(node.args[0])
            elif isinstance(func, ast.Name) and func.id in {"getattr", "hasattr"}:
                if len(node.args) >= 2:
                    names |= _strings(node.args[1])
        elif isinstance(node, ast.Attribute):
            value = node.value
            owner = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")
            if owner == "hparams":
                names.add(node.attr)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            if any("KEYS" in name.upper() for name in _target_names(node)):
                names |= _strings(node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            names |= _strings(node.iter)
    return names


@pytest.fixture(scope="module")
def code_reads() -> set[str]:
    """Every hparams name the package and the recipe scripts read, plus the run
    options SpeechBrain's ``Brain`` takes from hparams (``max_grad_norm``, ...)."""
    sources = [*(REPO / "speechbrain_ptapt").rglob("*.py"), *RECIPES.rglob("*.py")]
    names: set[str] = set(RunOptions().as_dict())
    for source in sources:
        names |= names_read_by(source)
    return names


def test_every_csv_has_the_columns_and_one_dataset():
    assert sorted(p.stem for p in CSV_FOLDER.glob("*.csv")) == sorted(
        p.name for p in RECIPES.iterdir() if p.is_dir()
    ), "one tests/recipes/<Dataset>.csv per recipes/<Dataset>/ folder"
    for path in CSV_FOLDER.glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames or ()) == COLUMNS, path.name
            rows = list(reader)
        assert rows, f"{path.name} lists no recipe"
        assert {row["Dataset"] for row in rows} == {path.stem}, path.name


def test_every_yaml_under_recipes_is_listed():
    listed = {row["Hparam_file"] for row in read_recipe_rows()}
    on_disk = {str(p.relative_to(REPO)) for p in RECIPES.rglob("*.yaml")}
    assert on_disk - listed == set(), "yaml files missing from tests/recipes/*.csv"


def test_every_listed_file_exists_in_its_dataset_folder():
    for row in read_recipe_rows():
        for column in FILE_COLUMNS:
            path = REPO / row[column]
            assert path.is_file(), f"{row['csv']}: {column} {row[column]} does not exist"
            if column != "Readme_file":
                assert path.is_relative_to(RECIPES / row["Dataset"]), (row["csv"], row[column])


def test_debug_flags_name_yaml_keys_or_run_options():
    run_options = set(RunOptions().as_dict())
    for row in read_recipe_rows():
        keys = set(yaml_top_level_keys(REPO / row["Hparam_file"]))
        for flag in debug_flags(row):
            match = _FLAG.match(flag)
            assert match, f"{row['csv']} {row['Script_file']}: malformed flag {flag!r}"
            name = match[1]
            assert name in keys or name in run_options, (
                f"{row['csv']} {row['Script_file']}: --{name} is neither a key of "
                f"{row['Hparam_file']} nor a SpeechBrain run option"
            )
        assert debug_files(row), f"{row['csv']} {row['Script_file']}: no debug check"


def unread_keys(path: Path, code_reads: set[str]) -> list[str]:
    """Top-level keys of a yaml that neither the code reads nor another entry references."""
    refs = yaml_references(path)
    return [key for key in yaml_top_level_keys(path) if key not in code_reads and key not in refs]


def test_the_key_check_finds_a_key_nothing_reads(tmp_path):
    code = tmp_path / "stage.py"
    code.write_text(
        "KEYS = ('steps',)\n"
        "def run(hparams, brain):\n"
        "    lr = hparams['lr'] * hparams.get('scale', 1)\n"
        "    log = getattr(brain.hparams, 'train_logger', None)\n"
        "    return lr, log, brain.hparams.classes\n"
    )
    yaml_file = tmp_path / "method.yaml"
    yaml_file.write_text(
        "lr: 0.1\nscale: 2\nsteps: 3\nclasses: [a, b]\n"
        "folder: results  # <forgotten> in a comment is no use\n"
        "train_logger: !new:Logger\n    save_file: !ref <folder>/log.txt\n"
        "forgotten: 7\nwarmup: !ref <steps> // 2\n"
    )
    assert unread_keys(yaml_file, names_read_by(code)) == ["forgotten", "warmup"]


def test_every_yaml_key_is_read_by_the_code_or_referenced(code_reads):
    unused = {}
    for path in sorted(RECIPES.rglob("*.yaml")):
        dead = unread_keys(path, code_reads)
        if dead:
            unused[str(path.relative_to(REPO))] = dead
    assert not unused, f"yaml keys that nothing reads: {unused}"


def test_no_yaml_key_is_defined_twice():
    for path in sorted(RECIPES.rglob("*.yaml")):
        keys = yaml_top_level_keys(path)
        assert len(keys) == len(set(keys)), (path, sorted({k for k in keys if keys.count(k) > 1}))


def test_iemocap_and_savee_yamls_of_a_method_define_the_same_keys():
    by_method: dict[str, dict[str, list[str]]] = {}
    for row in read_recipe_rows():
        path = REPO / row["Hparam_file"]
        by_method.setdefault(path.name, {})[row["Dataset"]] = yaml_top_level_keys(path)
    assert set(by_method) == {"vft.yaml", "tapt.yaml", "ptapt.yaml"}
    for name, per_dataset in by_method.items():
        assert set(per_dataset) == {"IEMOCAP", "SAVEE"}, name
        iemocap, savee = set(per_dataset["IEMOCAP"]), set(per_dataset["SAVEE"])
        assert iemocap == savee, (
            f"{name}: only in IEMOCAP {sorted(iemocap - savee)}, "
            f"only in SAVEE {sorted(savee - iemocap)}"
        )


def test_recipes_of_a_method_share_their_script_but_for_the_preparation():
    """A SAVEE script is its IEMOCAP twin with the preparation swapped (docstrings aside)."""

    def code_without_docstring(path: Path) -> str:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if ast.get_docstring(tree) is not None:
            tree.body = tree.body[1:]
        return ast.unparse(tree)

    rows = {(row["Dataset"], Path(row["Script_file"]).name): row for row in read_recipe_rows()}
    for script in ("train_vft.py", "train_tapt.py", "train_ptapt.py"):
        iemocap = code_without_docstring(REPO / rows["IEMOCAP", script]["Script_file"])
        savee = code_without_docstring(REPO / rows["SAVEE", script]["Script_file"])
        assert savee == iemocap.replace("iemocap", "savee"), script


#: SpeechBrain's recipe prologue, in order, before the fold loop of every script.
PROLOGUE = [
    "parse_arguments",
    "sb.utils.distributed.ddp_init_group",
    "load_hparams",
    "sb.create_experiment_directory",
    "sb.utils.distributed.run_on_main",
]

#: The calls of each method's fold loop, in order: the training data, the fold's
#: hparams (loaded once for its adaptation stages), the stages, the fine-tuning runs.
FOLD_LOOPS = {
    "train_vft.py": ["training_subset", "fine_tuning_runs"],
    "train_tapt.py": ["training_subset", "load_hparams", "run_tapt_stage", "fine_tuning_runs"],
    "train_ptapt.py": [
        "training_subset",
        "load_hparams",
        "run_frame_stage",
        "run_pseudo_label_stage",
        "run_ptapt_stage",
        "fine_tuning_runs",
    ],
}

#: Calls of the prologue that are bookkeeping, not steps of the recipe.
BOOKKEEPING = {"fold_names"}


def _call_name(node: ast.Call) -> str:
    """``a.b.c`` for a call of ``a.b.c(...)``; the method name for ``obj.method(...)``
    on anything but a module path."""
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _calls(nodes: list[ast.stmt]) -> list[tuple[int, str]]:
    """(line, name) of every call in ``nodes``, in source order."""
    calls = [
        (call.lineno, call.col_offset, _call_name(call))
        for node in nodes
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
    ]
    return [(line, name) for line, _, name in sorted(calls)]


def script_story(path: Path) -> tuple[list[str], list[tuple[int, str]], list[str]]:
    """The calls a recipe script's ``__main__`` block makes before its fold loop, in
    the loop (with their lines) and after it; the block must be one
    ``with user_errors_as_one_line():``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (main,) = [n for n in tree.body if isinstance(n, ast.If)]
    assert ast.unparse(main.test) == "__name__ == '__main__'", path
    (block,) = main.body
    assert isinstance(block, ast.With), f"{path}: the __main__ block is one `with` block"
    assert ast.unparse(block.items[0].context_expr) == "user_errors_as_one_line()", path
    (loop,) = [n for n in block.body if isinstance(n, ast.For)]
    at = block.body.index(loop)
    before = [name for _, name in _calls(block.body[:at])]
    after = [name for _, name in _calls(block.body[at + 1 :])]
    return before, _calls(loop.body), after


@pytest.mark.parametrize("dataset", ["IEMOCAP", "SAVEE"])
@pytest.mark.parametrize("script", sorted(FOLD_LOOPS))
def test_each_script_shows_the_prologue_and_one_commented_call_per_stage(dataset, script):
    path = RECIPES / dataset / script
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 100, f"{path}: {len(lines)} lines; keep the story short"
    before, loop, after = script_story(path)
    steps = [name for name in before if name not in BOOKKEEPING]
    prepare = f"prepare_{dataset.lower()}"
    assert steps == [*PROLOGUE, prepare, "ExperimentResults"], path
    assert [name for _, name in loop if name in FOLD_LOOPS[script]] == FOLD_LOOPS[script]
    assert "results.write_summary" in after
    # every stage after the fold's data: its own numbered comment citing the paper
    stages = [(line, name) for line, name in loop if name in FOLD_LOOPS[script][1:]]
    stages = [(line, name) for line, name in stages if name != "load_hparams"]
    for number, (line, name) in enumerate(stages, start=1):
        comment = lines[line - 2].strip()
        if name == "fine_tuning_runs" and not comment.startswith("#"):
            comment = lines[line - 3].strip()  # the runs' overrides come first
        assert comment.startswith(f"# {number}. " if len(stages) > 1 else "# "), (path, name)
        assert "Sec." in comment or "Fig." in comment, (path, name, comment)

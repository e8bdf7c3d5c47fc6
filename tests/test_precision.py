"""Precision of the training stages.

SpeechBrain's ``--precision=bf16`` through the recipes on the CPU: every training
Brain (V-FT, TAPT, P-TAPT phase 1 and phase 2) runs its forward pass under bf16
autocast, evaluation stays fp32 (``--eval_precision`` default) and the runs finish
with finite results. On a CUDA device the stages default to the authors' fp16 AMP
unless ``--precision`` says otherwise; the CPU stays fp32 (checked on the resolved
run options, no GPU needed)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from conftest import IEMOCAP_RECIPES, run_recipe_script

from speechbrain_ptapt.stages.frame_emotion import FrameEmotionBrain
from speechbrain_ptapt.stages.ptapt import PTAPTBrain
from speechbrain_ptapt.stages.tapt import TAPTBrain
from speechbrain_ptapt.stages.training import with_default_precision
from speechbrain_ptapt.stages.vft import VFTBrain
from speechbrain_ptapt.testing.synthetic import make_iemocap

BRAINS = (VFTBrain, TAPTBrain, PTAPTBrain, FrameEmotionBrain)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("precision_corpus")
    return make_iemocap(
        root, sessions=(1, 2), dialogs_per_session=2, turns_per_dialog=6,
        min_seconds=0.5, max_seconds=1.0, junk=False,
    ).root


def _record_autocast(monkeypatch) -> list[tuple[str, sb.Stage, torch.dtype | None]]:
    """Wraps every Brain's ``compute_forward`` to record (Brain, stage, autocast dtype
    on the CPU or None when autocast is off)."""
    seen: list[tuple[str, sb.Stage, torch.dtype | None]] = []

    def wrap(brain_class: type, original: Callable) -> Callable:
        def compute_forward(self, batch, stage):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((brain_class.__name__, stage, dtype))
            return original(self, batch, stage)

        return compute_forward

    for brain in BRAINS:
        monkeypatch.setattr(brain, "compute_forward", wrap(brain, brain.compute_forward))
    return seen


def _run(method: str, corpus: Path, model: Path, out: Path, extra: list[str], monkeypatch):
    args = [
        f"hparams/{method}.yaml", f"--data_folder={corpus}", f"--output_folder={out}",
        f"--wav2vec2_hub={model}", "--folds=[2]", "--runs=1", "--device=cpu",
        "--noprogressbar", "--precision=bf16", "--number_of_epochs=1", "--batch_size=8",
        "--channel_mask_length=8", "--max_train_seconds=1.0", *extra,
    ]
    with monkeypatch.context() as m:
        seen = _record_autocast(m)
        run_recipe_script(IEMOCAP_RECIPES / f"train_{method}.py", args, m)
    return seen


def _check(seen, brain: str) -> None:
    train = {dtype for name, stage, dtype in seen if name == brain and stage == sb.Stage.TRAIN}
    assert train == {torch.bfloat16}, f"{brain} trained under {train}"


def _finite_result(out: Path) -> None:
    result = json.loads((out / "fold_2" / "seed_1986" / "result.json").read_text())
    assert math.isfinite(result["loss"]) and 0.0 <= result["ua"] <= 1.0


def test_bf16_runs_tapt_and_fine_tuning_under_autocast(
    corpus, tiny_wav2vec2, tmp_path, monkeypatch
):
    out = tmp_path / "tapt"
    extra = [
        "--tapt_steps=2", "--tapt_batch_seconds=4", "--tapt_max_seconds=1.0", "--warmup_steps=1"
    ]
    seen = _run("tapt", corpus, tiny_wav2vec2, out, extra, monkeypatch)
    _check(seen, "TAPTBrain")
    _check(seen, "VFTBrain")
    test = {dtype for name, stage, dtype in seen if name == "VFTBrain" and stage == sb.Stage.TEST}
    assert test == {None}, "evaluation must stay fp32"
    _finite_result(out)


def test_bf16_runs_both_ptapt_phases_under_autocast(corpus, tiny_wav2vec2, tmp_path, monkeypatch):
    out = tmp_path / "ptapt"
    extra = [
        "--frame_encoder=w2v2_cnn", "--frame_steps=2", "--frame_batch_size=4",
        "--frame_valid_every=2", "--n_clusters=[2,3]", "--kmeans_iterations=2",
        "--ptapt_steps=2", "--ptapt_batch_seconds=4", "--warmup_steps=1",
        "--ptapt_max_seconds=1.0",
    ]
    seen = _run("ptapt", corpus, tiny_wav2vec2, out, extra, monkeypatch)
    for brain in ("FrameEmotionBrain", "PTAPTBrain", "VFTBrain"):
        _check(seen, brain)
    _finite_result(out)
    assert (out / "fold_2" / "ptapt" / "adapted_wav2vec2" / "config.json").is_file()


def _resolved(argv: list[str], monkeypatch, inferred: str = "cpu") -> sb.core.RunOptions:
    """The run options every stage's Brain gets from a command line, on a machine
    where SpeechBrain would pick ``inferred`` when no --device is given."""
    monkeypatch.setattr(sb.utils.distributed, "infer_device", lambda: inferred)
    _, run_opts, _ = sb.parse_arguments(["hparams/vft.yaml", *argv, "--max_grad_norm=5.0"])
    return with_default_precision(run_opts)


@pytest.mark.parametrize(
    ("argv", "inferred", "expected"),
    [
        (["--device=cuda:0"], "cpu", ("fp16", "fp16")),  # the authors' fp16 AMP
        ([], "cuda:0", ("fp16", "fp16")),  # no --device: SpeechBrain's pick
        (["--device=cpu"], "cuda:0", ("fp32", "fp32")),
        ([], "cpu", ("fp32", "fp32")),
        (["--device=cuda:0", "--precision=fp32"], "cpu", ("fp32", "fp32")),
        (["--device=cuda:0", "--precision=bf16"], "cpu", ("bf16", "bf16")),
        (["--device=cuda:1", "--eval_precision=fp32"], "cpu", ("fp16", "fp32")),
        (["--device=cpu", "--precision=bf16"], "cpu", ("bf16", "fp32")),
    ],
)
def test_cuda_defaults_to_the_authors_fp16_unless_precision_is_given(
    argv, inferred, expected, monkeypatch
):
    options = _resolved(argv, monkeypatch, inferred)
    assert options.max_grad_norm == 5.0  # the user's other options stay
    assert (options.precision, options.eval_precision) == expected
    if expected[0] != "fp32":  # given or added: a precision in a Brain's hparams never wins
        assert "precision" in options.overridden_args


def test_default_precision_keeps_a_dict_of_run_options_a_dict(monkeypatch):
    monkeypatch.setattr(sb.utils.distributed, "infer_device", lambda: "cpu")
    assert with_default_precision({"device": "cpu"}) == {"device": "cpu"}
    assert with_default_precision({"device": "cuda:0", "eval_precision": "fp32"}) == {
        "device": "cuda:0", "eval_precision": "fp32", "precision": "fp16"
    }
    assert with_default_precision(None) == {}


"""How faithful the recipes are: every setting of every stage, with the paper's value,
what the authors' code computes, our default and the yaml key that switches it.

"The authors' code" is FT-w2v2-ser at e70175c as it runs with the library versions
its ``docker/Dockerfile`` pins (transformers 4.10.0, pytorch-lightning 1.4.5); each
entry names the file and line that decide the value. Our defaults are read from the
IEMOCAP recipe yamls, so the table printed by ``python -m speechbrain_ptapt.analysis.fidelity``
(the README's "Fidelity" section) cannot drift from them; a test checks that the
README holds the current table and that every default given as the authors' equals
the authors' value.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechbrain_ptapt.protocol.hparams_check import yaml_defaults

#: The recipe yamls whose defaults the table shows.
RECIPES_FOLDER = Path(__file__).resolve().parents[2] / "recipes" / "IEMOCAP" / "hparams"

#: Marks an entry whose default deliberately differs from the authors' code.
OURS = object()


@dataclass(frozen=True)
class Setting:
    """One setting of one stage.

    Arguments
    ---------
    stage : str
        ``all``, ``V-FT``, ``TAPT``, ``P-TAPT 1`` (frame model), ``k-means`` or
        ``P-TAPT 2``.
    name : str
        What the setting is.
    paper : str
        What the paper says ("—" where it is silent).
    authors : str
        What the authors' code computes, with the file and line that decide it.
    key : str
        The yaml key holding our default ("" where the setting is fixed in code).
    yaml : str
        The IEMOCAP recipe yaml holding ``key`` (``vft``, ``tapt`` or ``ptapt``).
    authors_value : Any
        The authors' value in the key's yaml terms, which our default must equal;
        :data:`OURS` where our default deliberately differs (then ``note`` says why),
        None where no yaml value stands for it.
    note : str
        Why ours differs, or what else the key offers.
    """

    stage: str
    name: str
    paper: str
    authors: str
    key: str = ""
    yaml: str = "ptapt"
    authors_value: Any = None
    note: str = ""


SETTINGS: tuple[Setting, ...] = (
    # V-FT, also the last stage of TAPT and P-TAPT.
    Setting("V-FT", "backbone", "wav2vec2-base",
            "facebook/wav2vec2-base (`modules/FeatureFuser.py:101`)", "wav2vec2_hub", "vft",
            "facebook/wav2vec2-base"),
    Setting("all", "backbone revision", "—", "2dcc7b7f… (`modules/FeatureFuser.py:101,181`)",
            "wav2vec2_revision", "vft", "2dcc7b7f9b11f0ef271067e62599a27317a03114"),
    Setting("all", "waveform normalisation", "—", "none: raw samples "
            "(`downstream/Custom/dataloader.py:70`, `pretrain/dataloader.py:48`)",
            "normalize_waveform", "vft", False, "null: the preprocessor config's"),
    Setting("all", "precision", "—", "fp16 AMP in every training stage "
            "(`bin/run_exp_iemocap.sh`: `--precision 16`)", "", "vft", None,
            "on CUDA; fp32 on the CPU; `--precision` overrides"),
    Setting("V-FT", "head", "mean pool, ReLU, linear", "ReLU(encoder output), mean over the "
            "valid frames but the last, ReLU, Linear(768, C) (`modules/FeatureFuser.py:159-160`, "
            "`pretrain/trainer.py:252-268`)", "", "vft", OURS, "ours: mean over every valid frame"),
    Setting("V-FT", "trainable", "—", "encoder + head; CNN, projection and `masked_spec_embed` "
            "frozen (`modules/FeatureFuser.py:120-122`)"),
    Setting("V-FT", "optimizer, lr", "Adam 1e-4", "Adam 1e-4, no scheduler "
            "(`downstream/Custom/trainer.py:55-57`, `run_downstream_custom_multiple_fold.py:11`)",
            "lr", "vft", 1e-4),
    Setting("V-FT", "epochs", "15", "15 (`run_downstream_custom_multiple_fold.py:12`)",
            "number_of_epochs", "vft", 15),
    Setting("V-FT", "batch size", "64", "64 random utterances, last partial batch dropped "
            "(`run_downstream_custom_multiple_fold.py:10`, `downstream/Custom/trainer.py:59-66`)",
            "batch_size", "vft", 64, "the last partial batch is kept"),
    Setting("V-FT", "duration batches", "—", "off (random batches)", "dynamic_batching", "vft",
            False, "on: batches of `dynamic_batch_seconds`, less padding"),
    Setting("V-FT", "training crop", "—", "10 s (`run_downstream_custom_multiple_fold.py:13`)",
            "max_train_seconds", "vft", 10.0),
    Setting("V-FT", "long utterances", "—", "first 10 s (`downstream/Custom/dataloader.py:"
            "28-33`)", "train_crop", "vft", "first", "`random`: a random 10 s window"),
    Setting("V-FT", "gradient clipping", "—", "none (Lightning's default)", "max_grad_norm",
            "vft", float("inf")),
    Setting("V-FT", "time masks", "—", "p 0.08, 15 frames, at least 2, learned mask embedding "
            "(`modules/FeatureFuser.py:112-113, 137-147`)", "time_mask_prob", "vft", 0.08),
    Setting("V-FT", "time-mask spans", "—", "one span count per batch from the padded length, "
            "spans over the padded length, padding dropped: the same share of every "
            "utterance of a batch, ~8 % at 10 s "
            "(transformers 4.10 `_compute_mask_indices`, `modules/FeatureFuser.py:137-147`)",
            "time_mask_scope", "vft", "batch", "`utterance`: at least 2 spans per utterance"),
    Setting("V-FT", "channel masks", "—", "p 0.05, 64 channels, at least 1, set to 0 "
            "(`modules/FeatureFuser.py:116-117, 150-158`)", "channel_mask_prob", "vft", 0.05),
    Setting("V-FT", "loss", "cross-entropy", "cross-entropy weighted by inverse class prior "
            "(`downstream/Custom/trainer.py:36-45`)"),
    Setting("V-FT", "evaluation", "held-out fold, UA", "last model, whole utterances"),
    # TAPT.
    Setting("TAPT", "steps", "—", "20 000 (`bin/run_exp_iemocap_baseline.sh`)", "tapt_steps",
            "tapt", 20000),
    Setting("TAPT", "lr schedule", "—", "Adam 1e-4, 100 warm-up steps, 5 % flat, linear decay "
            "(`pretrain/trainer.py:339-352`)", "tapt_lr", "tapt", 1e-4),
    Setting("TAPT", "warm-up", "—", "100 steps (`bin/run_exp_iemocap_baseline.sh`)",
            "warmup_steps", "tapt", 100),
    Setting("TAPT", "batches", "—", "at least 250 s of capped audio from 50 length buckets "
            "(`pretrain/trainer.py:301-306`, `pretrain/dataloader.py:274-314`)",
            "tapt_batch_seconds", "tapt", 250.0),
    Setting("TAPT", "length buckets", "—", "50 (`run_baseline_continueFT.py:17`)",
            "tapt_num_buckets", "tapt", 50),
    Setting("TAPT", "crop", "—", "random, at most 10 s (`run_baseline_continueFT.py:12`)",
            "tapt_max_seconds", "tapt", 10.0),
    Setting("TAPT", "loss reduction", "—", "sum over masked frames (transformers 4.10 "
            "`modeling_wav2vec2.py:1302-1309`)", "tapt_loss_reduction", "tapt", "sum",
            "`mean`: per masked frame, as fairseq"),
    Setting("TAPT", "diversity term", "weighted 0.1", "0.1·(GV−ppl)/GV once per batch, "
            "practically off (4.10 `modeling_wav2vec2.py:1306`)", "tapt_diversity_scaling",
            "tapt", "unscaled", "`per_masked_frame`: as fairseq and transformers 5"),
    Setting("TAPT", "Gumbel temperature", "—", "constant 1 (4.10 `modeling_wav2vec2.py:779`, "
            "never annealed)", "tapt_gumbel_temperature", "tapt", 1.0,
            "`[start, end, decay]`: fairseq's anneal"),
    Setting("TAPT", "negatives", "100", "100 from every frame, padding included; no attention "
            "mask (`modules/FeatureFuser.py:205`)", "", "tapt", OURS,
            "ours: from valid frames, with the attention mask"),
    # P-TAPT phase 1.
    Setting("P-TAPT 1", "encoder", "wav2vec 1.0 large", "wav2vec_large.pt, feature extractor "
            "frozen (`modules/FeatureFuser.py:25-27`)", "frame_encoder", "ptapt", "wav2vec1"),
    Setting("P-TAPT 1", "steps", "—", "10 000 (`bin/run_exp_iemocap.sh`)", "frame_steps",
            "ptapt", 10000),
    Setting("P-TAPT 1", "batch", "—", "64 utterances cropped to the shortest "
            "(`pretrain/trainer.py:43-49`, `pretrain/dataloader.py:81-93`)", "frame_batch_size",
            "ptapt", 64),
    Setting("P-TAPT 1", "lr", "—", "Adam 1e-4, 5 % warm-up, 5 % flat, linear decay "
            "(`pretrain/trainer.py:62-76`)", "frame_lr", "ptapt", 1e-4),
    Setting("P-TAPT 1", "validation", "—", "random 10 % split, once per epoch "
            "(`run_pretrain.py:14-15`)", "frame_valid_every", "ptapt", "epoch",
            "a number of steps"),
    Setting("P-TAPT 1", "kept checkpoint", "—", "lowest validation loss "
            "(`run_pretrain.py:24-31`)", "frame_select_by", "ptapt", "valid_loss",
            "`valid_ua`: best validation UA"),
    # k-means.
    Setting("k-means", "K", "64, 512, 4096", "64, 512, 4096 (`bin/run_exp_iemocap.sh`)",
            "n_clusters", "ptapt", [64, 512, 4096]),
    Setting("k-means", "iterations", "—", "20, faiss (`cluster.py:37`)", "kmeans_iterations",
            "ptapt", 20),
    Setting("k-means", "seeding", "—", "faiss' uniform sampling (`cluster.py:30-37`)",
            "kmeans_init", "ptapt", "random", "`k-means++`: lower inertia"),
    Setting("k-means", "fitting frames", "all representations", "one buffer of 1000·max(K) "
            "frames for every K (`cluster.py:76, 95-108`)", "kmeans_fit_set", "ptapt", "shared",
            "`per_k`: 1000·K frames per K"),
    # P-TAPT phase 2.
    Setting("P-TAPT 2", "steps", "—", "20 000 (`bin/run_exp_iemocap.sh`)", "ptapt_steps",
            "ptapt", 20000),
    Setting("P-TAPT 2", "warm-up", "—", "100 steps, 5 % flat, linear decay "
            "(`pretrain/trainer.py:192-206`)", "warmup_steps", "ptapt", 100),
    Setting("P-TAPT 2", "batches", "—", "at least 250 s of capped audio from 50 length buckets "
            "(`pretrain/dataloader.py:274-314`)", "ptapt_batch_seconds", "ptapt", 250.0),
    Setting("P-TAPT 2", "length buckets", "—", "50 (`run_second.py:20`)", "ptapt_num_buckets",
            "ptapt", 50),
    Setting("P-TAPT 2", "time masks", "—", "p 0.06, 15 frames, at least 2 "
            "(`modules/FeatureFuser.py:105-109`)", "ptapt_time_mask_prob", "ptapt", 0.06),
    Setting("P-TAPT 2", "time-mask spans", "—", "one span count per padded batch "
            "(`modules/FeatureFuser.py:137-147`)", "ptapt_time_mask_scope", "ptapt", "batch"),
    Setting("P-TAPT 2", "trainable", "—", "encoder + heads; CNN, projection and "
            "`masked_spec_embed` frozen (`pretrain/trainer.py:192`)"),
    Setting("P-TAPT 2", "crop", "—", "random, at most 10 s (`run_second.py:13`)",
            "ptapt_max_seconds", "ptapt", 10.0),
    Setting("P-TAPT 2", "label alignment", "—", "off by one frame when a crop starts before "
            "sample 80 (`pretrain/dataloader.py:189-203`)", "", "ptapt", OURS,
            "ours: exact for every crop"),
)


def raw_default(yaml_file: Path, key: str) -> str:
    """The text of ``key``'s top-level default in ``yaml_file``, comment removed."""
    text = yaml_file.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(key)}:[ \t]*(.*?)[ \t]*(#.*)?$", text, re.MULTILINE)
    if match is None:
        raise KeyError(f"{yaml_file} has no top-level key '{key}'")
    return match.group(1)


def mismatches(recipes_folder: Path = RECIPES_FOLDER) -> list[str]:
    """Entries whose yaml default differs from the authors' value they claim to equal."""
    defaults = {name: yaml_defaults(recipes_folder / f"{name}.yaml") for name in
                ("vft", "tapt", "ptapt")}
    problems = []
    for setting in SETTINGS:
        if not setting.key or setting.authors_value is None or setting.authors_value is OURS:
            continue
        ours = defaults[setting.yaml].get(setting.key)
        if ours != setting.authors_value:
            problems.append(
                f"{setting.stage} / {setting.name}: {setting.yaml}.yaml has "
                f"{setting.key}: {ours!r}, the authors' value is {setting.authors_value!r}"
            )
    return problems


def fidelity_markdown(recipes_folder: Path = RECIPES_FOLDER) -> str:
    """The table as Markdown, our defaults read from ``recipes_folder``."""
    lines = [
        "| stage | setting | paper | authors' code | ours (IEMOCAP yaml) | key |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        if setting.key:
            ours = f"`{raw_default(recipes_folder / f'{setting.yaml}.yaml', setting.key)}`"
        else:
            ours = "as the authors" if setting.authors_value is not OURS else ""
        if setting.note:
            ours = f"{ours}; {setting.note}" if ours else setting.note
        key = f"`{setting.key}`" if setting.key else "—"
        lines.append(
            f"| {setting.stage} | {setting.name} | {setting.paper} | {setting.authors} "
            f"| {ours} | {key} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Prints the table (``--check``: exits 1 naming each default that differs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the defaults")
    args = parser.parse_args(argv)
    problems = mismatches()
    if args.check:
        if problems:
            raise SystemExit("\n".join(problems))
        return
    print(fidelity_markdown(), end="")


if __name__ == "__main__":
    main()

"""Exports a trained V-FT / TAPT / P-TAPT run as a Hugging Face Hub-ready SpeechBrain model.

    python -m speechbrain_ptapt.deploy.export results/IEMOCAP/ptapt/fold_1 exported/ptapt_fold1
    python -m speechbrain_ptapt.deploy.export results/IEMOCAP/ptapt/fold_1 exported/ptapt_fold1 \\
        --run seed_1987 --push_to_hub my-name/ptapt-iemocap-fold1
    python -m speechbrain_ptapt.deploy.export results/IEMOCAP/tapt/fold_1 exported/tapt_backbone \\
        --backbone_only

The source is a fold folder (``<output_folder>/fold_<k>``, holding one
``seed_<s>`` folder per run) or one run folder. The exported folder holds:

* ``hyperparams.yaml``: the inference modules, built without network: the
  wav2vec2 architecture written out in full (from ``wav2vec2/config.json``), a
  linear head, the classes and the input format;
* ``model.ckpt``: the weights of the run's last checkpoint (the model the recipe
  evaluated): wav2vec2 (``wav2vec2.*``) and head (``head.*``);
* ``label_encoder.txt``: the run's label encoder (SpeechBrain format);
* ``custom_interface.py``: a copy of :mod:`speechbrain_ptapt.deploy.inference`, which
  imports no module of this package, so that stock SpeechBrain's
  ``foreign_class`` loads the folder without this package;
* ``wav2vec2/``: the backbone's ``config.json`` and ``preprocessor_config.json``;
* ``adapted_wav2vec2/`` (TAPT and P-TAPT): the fold's adapted backbone, before
  fine-tuning, in transformers format;
* ``README.md``: the model card (method, data, protocol, the experiment's
  per-fold and mean UA / WA, training settings, usage, limitations).

``--backbone_only`` exports the adapted TAPT / P-TAPT backbone alone (transformers
format, loadable with ``Wav2Vec2Model.from_pretrained``). ``--push_to_hub`` then
uploads the folder with ``huggingface_hub``; a failed upload leaves the folder
in place and exits with one message.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

from speechbrain_ptapt.analysis.naming import METHOD_NAMES
from speechbrain_ptapt.data.dataio import make_label_encoder
from speechbrain_ptapt.deploy import inference
from speechbrain_ptapt.deploy.model_card import RunToExport, backbone_card, model_card
from speechbrain_ptapt.models.backbone import (
    BackboneLoadError,
    load_feature_extractor,
    load_pretrained,
)
from speechbrain_ptapt.protocol.checkpointing import load_checkpoint_file
from speechbrain_ptapt.protocol.errors import PtaptError
from speechbrain_ptapt.protocol.stage_cache import finish_folder

logger = logging.getLogger(__name__)

#: Files of an exported classifier folder.
HPARAMS_FILE = "hyperparams.yaml"
MODEL_FILE = "model.ckpt"
LABEL_ENCODER_FILE = "label_encoder.txt"
INTERFACE_FILE = "custom_interface.py"
INTERFACE_CLASS = "EmotionRecognizer"
BACKBONE_FOLDER = "wav2vec2"
ADAPTED_FOLDER = "adapted_wav2vec2"
CARD_FILE = "README.md"

#: Files of a transformers-format backbone folder that are exported.
BACKBONE_FILES = (
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "pytorch_model.bin",
)

#: Config entries that describe where a config came from, not the architecture.
CONFIG_BOOKKEEPING = (
    "_name_or_path",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "id2label",
    "label2id",
)


class ExportError(PtaptError, RuntimeError):
    """A run that cannot be exported, or an upload that failed; the message says why."""


# ---------------------------------------------------------------------------
# Finding the run
# ---------------------------------------------------------------------------


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads a HyperPyYAML file as plain YAML: tagged nodes become None."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_run(source: str | Path, run: str | None = None) -> Path:
    """The run folder to export.

    Arguments
    ---------
    source : str or Path
        A run folder (``.../fold_<k>/seed_<s>``, holding ``result.json``) or a fold
        folder (``.../fold_<k>``).
    run : str, optional
        With a fold folder: the run's folder name (``seed_1987``) or seed (``1987``).
        Needed when the fold has several finished runs.

    Raises
    ------
    ExportError
        When the folder is not a finished run or fold, or the run is ambiguous.
    """
    source = Path(source)
    if not source.is_dir():
        raise ExportError(f"'{source}' is not a folder: expected a fold or run folder.")
    if (source / "result.json").is_file():
        if run is not None and source.name not in (run, f"seed_{run}"):
            raise ExportError(f"'{source}' is the run folder {source.name}, not {run}.")
        return source
    if any(source.glob("fold_*")) and not any(source.glob("seed_*")):
        folds = sorted(p.name for p in source.glob("fold_*"))
        raise ExportError(
            f"'{source}' is an experiment folder: export one fold, e.g. '{source / folds[0]}'."
        )
    finished = sorted(p for p in source.glob("seed_*") if (p / "result.json").is_file())
    if run is not None:
        name = run if run.startswith("seed_") else f"seed_{run}"
        if not (source / name).is_dir():
            raise ExportError(
                f"No run '{name}' in {source}; its runs: {[p.name for p in finished]}."
            )
        if not (source / name / "result.json").is_file():
            raise ExportError(
                f"The run {source / name} is not finished (no result.json): finish it by "
                "rerunning the recipe, or export another run."
            )
        return source / name
    if not finished:
        unfinished = sorted(p.name for p in source.glob("seed_*"))
        raise ExportError(
            f"'{source}' holds no finished run (a seed_<s> folder with result.json)"
            + (f"; unfinished: {unfinished}." if unfinished else ".")
        )
    if len(finished) > 1:
        raise ExportError(
            f"'{source}' holds {len(finished)} runs ({', '.join(p.name for p in finished)}): "
            "choose one with --run."
        )
    return finished[0]


def last_checkpoint(run_folder: Path) -> tuple[Path, dict[str, Any]]:
    """``model.ckpt`` of the run's most recent checkpoint (the model the recipe
    evaluated) and the checkpoint's meta data (epoch, training loss)."""
    from speechbrain_ptapt.protocol.checkpointing import Checkpointer
    save = run_folder / "save"
    checkpoint = Checkpointer(str(save)).find_checkpoint() if save.is_dir() else None
    if checkpoint is None or "model" not in checkpoint.paramfiles:
        raise ExportError(f"No checkpoint with model weights in {save}.")
    return Path(checkpoint.paramfiles["model"]), dict(checkpoint.meta)


def _method_of(run_folder: Path, result: dict, summary: dict | None, settings: dict) -> str:
    if summary and summary.get("method"):
        return str(summary["method"])
    if settings.get("method"):
        return str(settings["method"])
    backbone = Path(str(result.get("backbone", "")))
    if backbone.name == ADAPTED_FOLDER and backbone.parent.name in METHOD_NAMES:
        return backbone.parent.name
    return "vft"


def load_run(source: str | Path, run: str | None = None) -> RunToExport:
    """Collects what the export needs about a finished run (see :func:`find_run`)."""
    run_folder = find_run(source, run).resolve()
    result = _read_json(run_folder / "result.json")
    checkpoint, meta = last_checkpoint(run_folder)
    output_folder = run_folder.parent.parent
    summary = None
    if (output_folder / "summary.json").is_file():
        summary = _read_json(output_folder / "summary.json")
    settings: dict[str, Any] = {}
    if (output_folder / HPARAMS_FILE).is_file():
        with open(output_folder / HPARAMS_FILE, encoding="utf-8") as f:
            settings = yaml.load(f, Loader=_TagTolerantLoader) or {}
    method = _method_of(run_folder, result, summary, settings)
    dataset = str((summary or {}).get("dataset") or settings.get("dataset") or "unknown")
    adapted = None
    if method in ("tapt", "ptapt"):
        candidate = Path(str(result.get("backbone", "")))
        if not (candidate / "config.json").is_file():
            candidate = run_folder.parent / method / ADAPTED_FOLDER
        if (candidate / "config.json").is_file():
            adapted = candidate
    seed = result.get("seed")
    return RunToExport(
        run_folder=run_folder,
        fold=str(result.get("fold", run_folder.parent.name.removeprefix("fold_"))),
        seed=int(seed) if seed is not None else int(run_folder.name.removeprefix("seed_")),
        result=result,
        checkpoint=checkpoint,
        checkpoint_meta=meta,
        method=method,
        dataset=dataset,
        summary=summary,
        settings=settings,
        adapted_backbone=adapted,
        hub_cache=settings.get("wav2vec2_folder"),
    )


def load_backbone_config(
    source: str,
    cache: str | None = None,
    revision: str | None = None,
    normalize: bool | None = None,
):
    """The backbone's transformers config and preprocessor settings, from a local
    folder or from the hub cache the recipe downloaded it into (the network is
    used only when the cache lacks it); ``revision`` is the hub revision the run
    loaded (its yaml's ``wav2vec2_revision``; ignored for a folder) and
    ``normalize`` its ``normalize_waveform`` (None: as the preprocessor config)."""
    offline = {"local_files_only": True}
    try:
        if Path(source).is_dir():
            config = load_pretrained(Wav2Vec2Config, source)
            preprocessor = load_feature_extractor(source)
        else:
            try:
                config = load_pretrained(Wav2Vec2Config, source, cache, revision, **offline)
                preprocessor = load_pretrained(
                    Wav2Vec2FeatureExtractor, source, cache, revision, **offline
                )
            except BackboneLoadError:
                config = load_pretrained(Wav2Vec2Config, source, cache, revision)
                preprocessor = load_feature_extractor(source, cache, revision)
    except BackboneLoadError as err:
        raise ExportError(f"Cannot read the run's backbone configuration: {err}") from err
    if normalize is not None:
        preprocessor.do_normalize = bool(normalize)
    return config, preprocessor


# ---------------------------------------------------------------------------
# The inference folder
# ---------------------------------------------------------------------------


def inference_yaml(
    config,
    feature_extractor,
    classes: list[str],
    header: str,
    max_chunk_seconds: float = 60.0,
    chunk_overlap_seconds: float = 5.0,
) -> str:
    """The inference ``hyperparams.yaml``: modules ``wav2vec2`` and ``head`` built from
    the config alone (no network, no folder), a ``pretrainer`` that loads
    ``model.ckpt`` strictly, and the input format.

    Arguments
    ---------
    config : Wav2Vec2Config
        The backbone's architecture.
    feature_extractor : Wav2Vec2FeatureExtractor
        The backbone's preprocessor (sampling rate, input normalisation).
    classes : list of str
        Labels in output order.
    header : str
        Comment lines for the top of the file (without ``#``).
    max_chunk_seconds, chunk_overlap_seconds : float
        Chunking of long recordings, in seconds.
    """
    architecture = {k: v for k, v in config.to_dict().items() if k not in CONFIG_BOOKKEEPING}
    arch_text = yaml.safe_dump(architecture, default_flow_style=None, sort_keys=True, width=90)
    arch_text = "".join(f"    {line}\n" for line in arch_text.splitlines())
    rule = "# " + "#" * 76
    header_text = "\n".join(f"# {line}".rstrip() for line in header.strip().splitlines())
    return f"""{rule}
{header_text}
{rule}

# Labels of the outputs, in order (the run's label_encoder.txt).
classes: {json.dumps(list(classes))}

# Input: mono audio at sample_rate Hz, zero-mean unit-variance per utterance
# when normalize_input (wav2vec2/preprocessor_config.json).
sample_rate: {int(feature_extractor.sampling_rate)}
normalize_input: {bool(getattr(feature_extractor, "do_normalize", True))}

# Recordings longer than max_chunk_seconds are encoded in chunks of that length
# overlapping by chunk_overlap_seconds; the chunk embeddings are averaged with
# their frame counts as weights (memory of one chunk, whatever the length).
max_chunk_seconds: {float(max_chunk_seconds)}
chunk_overlap_seconds: {float(chunk_overlap_seconds)}

# wav2vec2 architecture (wav2vec2/config.json); its weights come from model.ckpt.
wav2vec2_config: !new:transformers.Wav2Vec2Config
{arch_text}
wav2vec2: !new:transformers.Wav2Vec2Model
    config: !ref <wav2vec2_config>

# Linear head on ReLU(mean over valid frames of ReLU(wav2vec2 output)).
head: !new:torch.nn.Linear
    in_features: {int(config.hidden_size)}
    out_features: {len(classes)}

modules:
    wav2vec2: !ref <wav2vec2>
    head: !ref <head>

model: !new:torch.nn.ModuleDict
    modules: !ref <modules>

# Loads model.ckpt from the model's folder or Hub repository; every weight must match.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
    custom_hooks:
        model: !name:speechbrain.utils.checkpoints.torch_recovery
            end_of_epoch: False
"""


def inference_state_dict(classifier_state: dict[str, torch.Tensor], model: torch.nn.Module):
    """Maps an :class:`~speechbrain_ptapt.models.classifier.EmotionClassifier` state dict onto the
    inference modules (``backbone.model.*`` -> ``wav2vec2.*``, ``head.*``) and checks
    that every inference weight is present with the right shape.

    Training-only parameters that the inference wav2vec2 does not build
    (``masked_spec_embed`` of a config without masking) are dropped.
    """
    mapped = {}
    for key, value in classifier_state.items():
        if key.startswith("backbone.model."):
            mapped["wav2vec2." + key.removeprefix("backbone.model.")] = value
        elif key.startswith("head."):
            mapped[key] = value
    target = model.state_dict()
    mapped = {k: v for k, v in mapped.items() if k in target or not k.endswith("masked_spec_embed")}
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise ExportError(
            "The checkpoint does not match the exported architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ExportError(
                f"Checkpoint weight {key} has shape {tuple(value.shape)}, the exported "
                f"architecture expects {tuple(target[key].shape)}."
            )
    return mapped


def write_inference_folder(
    target: str | Path,
    classifier_state: dict[str, torch.Tensor],
    config,
    feature_extractor,
    classes: list[str],
    header: str = "Speech emotion recognition with wav2vec2 (speechbrain_ptapt)",
    card: str | None = None,
    label_encoder_file: str | Path | None = None,
) -> Path:
    """Writes an inference folder loadable with ``EmotionRecognizer.from_hparams`` and
    with ``foreign_class`` (see the module doc for its files).

    Arguments
    ---------
    target : str or Path
        The folder (created; existing files of the same names are replaced).
    classifier_state : dict
        State dict of an :class:`~speechbrain_ptapt.models.classifier.EmotionClassifier`.
    config, feature_extractor
        The backbone's ``Wav2Vec2Config`` and ``Wav2Vec2FeatureExtractor``.
    classes : list of str
        Labels in output order.
    header : str
        Comment at the top of ``hyperparams.yaml``.
    card : str, optional
        Text of ``README.md``.
    label_encoder_file : str or Path, optional
        The run's ``label_encoder.txt``; written from ``classes`` when not given.

    Returns
    -------
    Path
        The folder.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    text = inference_yaml(config, feature_extractor, classes, header)
    built = load_hyperpyyaml(text)
    model = built["model"]
    model.load_state_dict(inference_state_dict(classifier_state, model), strict=True)
    torch.save(model.state_dict(), target / MODEL_FILE)
    (target / HPARAMS_FILE).write_text(text, encoding="utf-8")
    if label_encoder_file is not None:
        encoder = _read_label_encoder(label_encoder_file)
        if encoder != list(classes):
            raise ExportError(
                f"{label_encoder_file} lists {encoder}, the run's classes are {list(classes)}."
            )
        shutil.copyfile(label_encoder_file, target / LABEL_ENCODER_FILE)
    else:
        make_label_encoder(classes).save(str(target / LABEL_ENCODER_FILE))
    shutil.copyfile(inference.__file__, target / INTERFACE_FILE)
    backbone = target / BACKBONE_FOLDER
    backbone.mkdir(exist_ok=True)
    config.to_json_file(str(backbone / "config.json"))
    feature_extractor.to_json_file(str(backbone / "preprocessor_config.json"))
    if card is not None:
        (target / CARD_FILE).write_text(card, encoding="utf-8")
    return target


def _read_label_encoder(path: str | Path) -> list[str]:
    encoder = CategoricalEncoder()
    encoder.load(str(path))
    return [str(encoder.ind2lab[i]) for i in range(len(encoder))]


def copy_backbone(source: Path, target: Path) -> Path:
    """Copies a transformers-format backbone (config, weights, preprocessor) to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in BACKBONE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    if "config.json" not in copied or not {"model.safetensors", "pytorch_model.bin"} & set(copied):
        raise ExportError(f"{source} is not a transformers backbone folder (config + weights).")
    return target


# ---------------------------------------------------------------------------
# Export and upload
# ---------------------------------------------------------------------------


def export_run(
    source: str | Path,
    target: str | Path,
    run: str | None = None,
    backbone_only: bool = False,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Exports a finished run (see the module doc).

    Arguments
    ---------
    source : str or Path
        Fold or run folder.
    target : str or Path
        Folder to write; it must not exist or be empty unless ``overwrite``.
    run : str, optional
        ``seed_<s>`` (or ``<s>``) when the fold has several runs.
    backbone_only : bool
        Export only the adapted TAPT / P-TAPT backbone.
    repo_id : str, optional
        Hub repository named in the model card's usage snippets (default: the folder).
    overwrite : bool
        Replace an existing, non-empty target.

    Returns
    -------
    Path
        The written folder. It is assembled beside ``target`` and renamed at the
        end, so an export that fails leaves no half-written folder.
    """
    info = load_run(source, run)
    target = Path(target).resolve()
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ExportError(
            f"'{target}' exists and is not empty: choose another folder or pass --overwrite."
        )
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    if backbone_only:
        if info.adapted_backbone is None:
            raise ExportError(
                f"The run {info.run_folder} ({METHOD_NAMES.get(info.method, info.method)}) "
                f"started from '{info.backbone}', not from an adapted TAPT / P-TAPT backbone: "
                "there is no adapted backbone to export."
            )
        copy_backbone(info.adapted_backbone, partial)
        (partial / CARD_FILE).write_text(backbone_card(info), encoding="utf-8")
    else:
        config, feature_extractor = load_backbone_config(
            info.backbone,
            info.hub_cache,
            info.settings.get("wav2vec2_revision"),
            info.settings.get("normalize_waveform"),
        )
        classes = [str(c) for c in info.result.get("classes") or []]
        label_file = info.run_folder / LABEL_ENCODER_FILE
        if not classes:
            classes = _read_label_encoder(label_file)
        state = load_checkpoint_file(info.checkpoint)
        name = METHOD_NAMES.get(info.method, info.method)
        header = (
            f"Speech emotion recognition: wav2vec2 fine-tuned with {name} (Chen & Rudnicky, "
            f"ICASSP 2022)\n{info.dataset}, fold {info.fold}, run seed_{info.seed}, "
            f"checkpoint of epoch {info.checkpoint_meta.get('epoch')}; exported by "
            "speechbrain_ptapt.deploy.export.\n\nLoads without network; with SpeechBrain alone:\n"
            '  foreign_class(source=..., pymodule_file="custom_interface.py",\n'
            '                classname="EmotionRecognizer")\n'
            "or with speechbrain_ptapt: EmotionRecognizer.from_hparams(source=...)"
        )
        files = [
            (HPARAMS_FILE, "the inference modules (architecture written out, no download)"),
            (MODEL_FILE, "wav2vec2 and head weights (the run's last checkpoint)"),
            (LABEL_ENCODER_FILE, "the labels in output order (SpeechBrain format)"),
            (INTERFACE_FILE, f"the `{INTERFACE_CLASS}` interface with its model code"),
            (f"{BACKBONE_FOLDER}/", "the backbone's config.json and preprocessor_config.json"),
        ]
        if info.adapted_backbone is not None:
            files.append(
                (
                    f"{ADAPTED_FOLDER}/",
                    f"the fold's {name}-adapted wav2vec2 before fine-tuning (transformers format)",
                )
            )
        card = model_card(info, classes, repo_id or str(target), files)
        write_inference_folder(
            partial,
            state,
            config,
            feature_extractor,
            classes,
            header,
            card,
            label_file if label_file.is_file() else None,
        )
        if info.adapted_backbone is not None:
            copy_backbone(info.adapted_backbone, partial / ADAPTED_FOLDER)
    return finish_folder(partial, target, replace=True)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Uploads an exported folder to the Hugging Face Hub (created if needed).

    Returns the repository URL. Raises :class:`ExportError` with one message when
    offline, without a token, or when the Hub refuses; the folder is left untouched.
    """
    import huggingface_hub
    from huggingface_hub import HfApi

    folder = Path(folder)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ExportError(
            f"Cannot push {folder} to the Hub repository '{repo_id}': offline mode is on "
            "(HF_HUB_OFFLINE). The exported folder is complete; push it later with "
            f"'hf upload {repo_id} {folder}'."
        )
    if huggingface_hub.get_token() is None:
        raise ExportError(
            f"Cannot push {folder} to '{repo_id}': no Hugging Face token (run 'hf auth "
            "login' or set HF_TOKEN). The exported folder is complete and was left in place."
        )
    try:
        api = HfApi()
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message="Upload speech emotion recognition model (speechbrain_ptapt)",
            ignore_patterns=["__pycache__/*", "*.pyc", "*.partial"],
        )
    except Exception as err:  # network, authentication and Hub errors have many types
        raise ExportError(
            f"Cannot push {folder} to the Hub repository '{repo_id}' "
            f"({type(err).__name__}: {err}). The exported folder is complete and was left "
            "in place; retry later."
        ) from err
    return str(url)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module doc). Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ptapt.deploy.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="fold folder (<output_folder>/fold_<k>) or run folder")
    parser.add_argument("target", help="folder to write")
    parser.add_argument("--run", help="run of the fold to export: seed_<s> (or <s>)")
    parser.add_argument(
        "--backbone_only",
        action="store_true",
        help="export only the adapted TAPT / P-TAPT backbone (transformers format)",
    )
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty target")
    args = parser.parse_args(argv)
    try:
        folder = export_run(
            args.source,
            args.target,
            args.run,
            args.backbone_only,
            args.push_to_hub,
            args.overwrite,
        )
        print(f"Exported {folder}")
        if args.push_to_hub:
            print(f"Pushed to {push_to_hub(folder, args.push_to_hub, args.private)}")
    except PtaptError as err:  # ExportError, an unreadable checkpoint ...
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

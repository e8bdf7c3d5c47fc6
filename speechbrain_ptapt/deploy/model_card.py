"""Model cards (the ``README.md`` of a Hub repository) for exported runs.

The card of a classifier states the method, backbone, data and protocol, the
experiment's per-fold and mean UA / WA (from its ``summary.json``), the
training settings (from its ``hyperparams.yaml``), usage with and without this
package, the files, and the intended use and limitations. :class:`RunToExport`
holds what the cards say about a run; :mod:`speechbrain_ptapt.deploy.export` fills it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechbrain_ptapt.analysis.naming import METHOD_NAMES, fold_label

#: The method in one sentence, per method key.
METHOD_DESCRIPTIONS = {
    "vft": "vanilla fine-tuning (V-FT): wav2vec 2.0 fine-tuned directly on the labelled "
    "emotion data",
    "tapt": "task-adaptive pretraining (TAPT): wav2vec 2.0's self-supervised objective "
    "continued on the training audio of the fold, then fine-tuning as V-FT",
    "ptapt": "pseudo-label task-adaptive pretraining (P-TAPT): wav2vec 2.0 adapted to "
    "predict frame-level emotion pseudo-labels (k-means clusters of a frame emotion "
    "model's features) on the training audio of the fold, then fine-tuning as V-FT",
}

#: What the training data is, per dataset (shown under limitations).
DATASET_DESCRIPTIONS = {
    "IEMOCAP": "acted and improvised dyadic English dialogues of ten actors in five "
    "sessions, recorded in a studio",
    "SAVEE": "acted British English sentences of four male speakers, recorded in a studio",
}

#: Training settings shown on the model card, when the experiment's yaml has them.
FINE_TUNING_SETTINGS = (
    "number_of_epochs",
    "batch_size",
    "lr",
    "max_train_seconds",
    "time_mask_prob",
    "time_mask_length",
    "channel_mask_prob",
    "channel_mask_length",
    "runs",
    "seed",
)
ADAPTATION_SETTINGS = (
    "tapt_steps",
    "tapt_batch_size",
    "tapt_lr",
    "tapt_max_seconds",
    "warmup_steps",
    "frame_encoder",
    "frame_steps",
    "n_clusters",
    "ptapt_steps",
    "ptapt_batch_seconds",
    "ptapt_lr",
    "ptapt_max_seconds",
    "ptapt_time_mask_prob",
)


@dataclass
class RunToExport:
    """A finished fine-tuning run and what the model card says about it."""

    run_folder: Path
    fold: str
    seed: int
    result: dict[str, Any]
    checkpoint: Path
    checkpoint_meta: dict[str, Any]
    method: str
    dataset: str
    summary: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    adapted_backbone: Path | None = None
    hub_cache: str | None = None

    @property
    def output_folder(self) -> Path:
        """The experiment folder (``<output_folder>``, parent of the fold folder)."""
        return self.run_folder.parent.parent

    @property
    def backbone(self) -> str:
        """The backbone the fine-tuning started from (hub id or folder)."""
        return str(self.result.get("backbone", ""))

    @property
    def pretrained_backbone(self) -> str:
        """The backbone the experiment started from (before any adaptation)."""
        if self.summary and self.summary.get("backbone"):
            return str(self.summary["backbone"])
        return str(self.settings.get("wav2vec2_hub", self.backbone))


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _held_out(info: RunToExport) -> str:
    """The held-out part of the fold in words (``Session 1``, ``fold DC``)."""
    label = fold_label(info.dataset)
    return f"{label}{info.fold}" if label else f"fold {info.fold}"


def _run_entry(info: RunToExport) -> dict[str, Any]:
    """The exported run's entry in the experiment summary (empty when absent)."""
    fold = ((info.summary or {}).get("folds") or {}).get(info.fold) or {}
    return next((r for r in fold.get("runs", []) if r.get("seed") == info.seed), {})


def _results_table(info: RunToExport) -> str:
    summary = info.summary
    if not summary or not summary.get("folds"):
        return (
            "| Run | UA (%) | WA (%) |\n|---|---|---|\n"
            f"| fold {info.fold}, seed {info.seed} | {_percent(info.result.get('ua'))} "
            f"| {_percent(info.result.get('wa'))} |\n"
        )
    label = fold_label(info.dataset) or "Fold "
    folds = list(summary["folds"])
    lines = [
        "| | " + " | ".join(f"{label}{f}" for f in folds) + " | Mean |",
        "|---" * (len(folds) + 2) + "|",
    ]
    for key, name in (("ua", "UA (%)"), ("wa", "WA (%)")):
        cells = [_percent(summary["folds"][f].get(key)) for f in folds]
        cells.append(_percent(summary.get("mean", {}).get(key)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    runs = sorted({f["kept_runs"] for f in summary["folds"].values()})
    notes = [
        f"Fold values are means over {', '.join(map(str, runs))} run(s); Mean is the mean "
        "over folds. UA: unweighted accuracy (mean per-class recall); WA: overall accuracy."
    ]
    if _run_entry(info).get("discarded"):
        notes.append(
            f"The experiment discarded this run as an outlier ({_run_entry(info).get('reason')}"
            "): the fold value above does not include it."
        )
    fraction = summary["folds"].get(info.fold, {}).get("train_fraction")
    if fraction is not None and float(fraction) != 1.0:
        fold = summary["folds"][info.fold]
        notes.append(
            f"Data-efficiency setting: {100 * float(fraction):g} % of the fold's training "
            f"utterances ({fold.get('train_utterances')}, {fold.get('train_hours', 0):.2f} h)."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _settings_list(info: RunToExport, keys: tuple[str, ...]) -> str:
    rows = [f"- `{k}`: {json.dumps(info.settings[k])}" for k in keys if k in info.settings]
    return "\n".join(rows) if rows else "- (not recorded)"


def _protocol_text(info: RunToExport, held_out: str) -> str:
    """The card's "Data and protocol" paragraph: the folds and what this one holds out."""
    if info.dataset.upper() == "IEMOCAP":
        return (
            "IEMOCAP, 4 classes (neutral, happy merged with excited, sad, angry), "
            "leave-one-session-out: each fold trains on four sessions and tests on the fifth. "
            f"This model is the fold that holds out **{held_out}**: it was trained on the "
            "other four sessions and never saw that session."
        )
    return f"{info.dataset}, cross-validation by folds; this model holds out {held_out}."


def _adaptation_text(info: RunToExport, name: str) -> str:
    """The adaptation stage's settings (TAPT and P-TAPT), or "" for V-FT."""
    if info.method in ("tapt", "ptapt"):
        return f"\nAdaptation ({name}) settings:\n\n{_settings_list(info, ADAPTATION_SETTINGS)}\n"
    return ""


def _fine_tuning_start(info: RunToExport, name: str) -> str:
    """Where fine-tuning started when not from the pretrained backbone, or ""."""
    if info.adapted_backbone is not None:
        return f"; fine-tuning started from its {name}-adapted copy (`adapted_wav2vec2/`)"
    if info.backbone and info.backbone != info.pretrained_backbone:
        return f"; fine-tuning started from `{info.backbone}`"
    return ""


def _front_matter(info: RunToExport) -> str:
    """The card's YAML front matter (library, pipeline, tags, dataset, metric)."""
    tags = "\n".join(
        f"- {t}"
        for t in (
            "audio-classification",
            "speechbrain",
            "emotion-recognition",
            "wav2vec2",
            info.method,
        )
    )
    return f"""---
library_name: speechbrain
pipeline_tag: audio-classification
tags:
{tags}
datasets:
- {info.dataset.lower()}
metrics:
- accuracy
---
"""


def _usage_section(source_id: str, classes: list[str]) -> str:
    """The card's "Usage" section: this package, SpeechBrain alone, the command line."""
    return f"""## Usage

With `speechbrain_ptapt` installed:

```python
from speechbrain_ptapt.deploy.inference import EmotionRecognizer

recognizer = EmotionRecognizer.from_hparams(source="{source_id}")
out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")
print(text_lab[0], out_prob[0].tolist())  # label, probabilities of {classes}
```

With SpeechBrain alone (the model code is in `custom_interface.py`):

```python
from speechbrain.inference.interfaces import foreign_class

recognizer = foreign_class(
    source="{source_id}",
    pymodule_file="custom_interface.py",
    classname="EmotionRecognizer",
)
out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")
```

From the command line: `python -m speechbrain_ptapt.deploy.classify {source_id} a.wav b.wav --json`.

`out_prob` holds posterior probabilities (rows sum to 1), `score` the best one,
`index` its class index and `text_lab` its label. `classify_batch(wavs, wav_lens)`
takes padded batches and `encode_batch` returns the pooled embeddings. Recordings
longer than `max_chunk_seconds` (60 s) are encoded in overlapping chunks whose
embeddings are averaged.
"""


def _limitations_section(info: RunToExport, classes: list[str]) -> str:
    """The card's "Intended use and limitations" section."""
    data = DATASET_DESCRIPTIONS.get(info.dataset.upper(), f"the {info.dataset} corpus")
    return f"""## Intended use and limitations

For research on speech emotion recognition: the categorical emotion of short
utterances ({", ".join(classes)}). The model learnt from {data}; expect lower
accuracy on other speakers, languages, recording conditions, spontaneous speech
and emotions outside the {len(classes)} classes (every input gets one of them).
It is not suitable for decisions about people (hiring, health, security,
surveillance). Scores on one held-out fold can differ from the mean over folds
by several points: compare the mean. The training data's licence applies to
uses of the model.
"""


def model_card(
    info: RunToExport, classes: list[str], source_id: str, files: list[tuple[str, str]]
) -> str:
    """The ``README.md`` of an exported classifier (Hugging Face model card).

    Arguments
    ---------
    info : RunToExport
        The exported run.
    classes : list of str
        Labels in output order.
    source_id : str
        What users pass as ``source`` (the Hub repository id, or the folder).
    files : list of (str, str)
        The exported files and folders with a description of each.
    """
    name = METHOD_NAMES.get(info.method, info.method)
    held_out = _held_out(info)
    epoch = info.checkpoint_meta.get("epoch")
    start = _fine_tuning_start(info, name)
    files_list = "\n".join(f"- `{name}`: {what}" for name, what in files)
    return f"""{_front_matter(info)}
# Speech emotion recognition: wav2vec 2.0 + {name} on {info.dataset} (held out: {held_out})

Utterance-level emotion recognition ({", ".join(classes)}) with wav2vec 2.0
fine-tuned by {METHOD_DESCRIPTIONS.get(info.method, name)}, following Chen &
Rudnicky, *Exploring wav2vec 2.0 fine-tuning for improved speech emotion
recognition* (ICASSP 2022, arXiv:2110.06309), trained with the
`speechbrain_ptapt` SpeechBrain recipes.

## Model

- Backbone: `{info.pretrained_backbone}` (wav2vec 2.0){start}.
- Head: ReLU on the transformer output, mean over the valid frames, ReLU, linear
  layer ({len(classes)} outputs), softmax.
- Input: mono 16 kHz audio, normalised to zero mean and unit variance per utterance.
  Other rates and channel counts are resampled and down-mixed.
- Weights: the last checkpoint of the run (epoch {epoch}), the model the recipe evaluated.

## Data and protocol

{_protocol_text(info, held_out)}

## Results

This model is run `seed_{info.seed}` of fold {info.fold}: UA {_percent(info.result.get("ua"))} %,
WA {_percent(info.result.get("wa"))} % on {held_out}. The experiment it comes from
({name} on {info.dataset}):

{_results_table(info)}
## Training

Fine-tuning: Adam, class-weighted cross-entropy (inverse class prior), SpecAugment-style
time and channel masks on the projected CNN features, CNN encoder and feature projection
frozen, no validation set (the last model is kept).

{_settings_list(info, FINE_TUNING_SETTINGS)}
{_adaptation_text(info, name)}
{_usage_section(source_id, classes)}
## Files

{files_list}

{_limitations_section(info, classes)}"""


def backbone_card(info: RunToExport) -> str:
    """The ``README.md`` of an exported adapted backbone."""
    name = METHOD_NAMES.get(info.method, info.method)
    return f"""---
library_name: transformers
tags:
- wav2vec2
- speech-emotion-recognition
- {info.method}
datasets:
- {info.dataset.lower()}
---

# wav2vec 2.0 adapted with {name} on {info.dataset} (fold {info.fold})

`{info.pretrained_backbone}` after the {name} stage of Chen & Rudnicky (ICASSP 2022,
arXiv:2110.06309) on the training audio of fold {info.fold} of {info.dataset}
(the held-out part never seen), before any emotion fine-tuning. Written by the
`speechbrain_ptapt` recipes in transformers format.

Adaptation settings:

{_settings_list(info, ADAPTATION_SETTINGS)}

```python
from transformers import Wav2Vec2Model

model = Wav2Vec2Model.from_pretrained("path/or/repo")
```

Fine-tune it for emotion recognition, e.g. as `--wav2vec2_hub` of the V-FT recipe.
"""

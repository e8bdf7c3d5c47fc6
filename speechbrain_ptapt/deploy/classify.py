"""Classifies audio files with an exported emotion model (a folder or a Hub repository).

    python -m speechbrain_ptapt.deploy.classify exported/ptapt_fold1 a.wav b.flac
    python -m speechbrain_ptapt.deploy.classify my-name/ptapt-iemocap-fold1 *.wav --json

One line per file: the file, its label, the label's probability and every
class probability. ``--json`` prints a JSON list instead, one object per file:
``{"file", "label", "score", "probabilities": {class: p}}``, or
``{"file", "error"}`` for a file that could not be classified. Files that fail
are reported and the others still classified; the exit status is 1 when any
file failed, 2 when the model could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from speechbrain_ptapt.protocol.errors import InputError, MissingFileError, PtaptError


def classify_files(recognizer, files: list[str]) -> list[dict[str, Any]]:
    """Classifies each file; an error is recorded for that file and the next one goes on.

    Arguments
    ---------
    recognizer : EmotionRecognizer
        A loaded model.
    files : list of str
        Audio files (any format soundfile reads, any rate and channel count).

    Returns
    -------
    list of dict
        Per file, in order: ``file``, ``label``, ``score`` and ``probabilities``
        (class -> probability), or ``file`` and ``error``.
    """
    results = []
    for path in files:
        try:
            out_prob, score, _index, text_lab = recognizer.classify_file(path)
        except Exception as err:  # one bad file must not stop the others
            message = str(err) if path in str(err) else f"{path}: {err}"
            results.append({"file": path, "error": message})
            continue
        probabilities = dict(zip(recognizer.classes, out_prob[0].tolist()))
        results.append(
            {
                "file": path,
                "label": text_lab[0],
                "score": float(score[0]),
                "probabilities": probabilities,
            }
        )
    return results


def format_line(result: dict[str, Any]) -> str:
    """One human-readable line for a result of :func:`classify_files`."""
    if "error" in result:
        return f"{result['file']}\tERROR\t{result['error']}"
    probs = " ".join(f"{c}={p:.3f}" for c, p in result["probabilities"].items())
    return f"{result['file']}\t{result['label']}\t{result['score']:.3f}\t{probs}"


def load_recognizer(source: str, device: str, savedir: str | None = None):
    """Loads an exported model from a folder or a Hub id with :class:`EmotionRecognizer`.

    Raises
    ------
    MissingFileError
        ``source`` is a path (not a Hub id) without an exported model.
    InputError
        ``device`` is no torch device, or the Hub or a file of the model cannot be read
        (network, unknown repository, missing file).
    """
    import torch

    from speechbrain_ptapt.deploy.inference import EmotionRecognizer
    folder = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if folder.is_dir() and not (folder / "hyperparams.yaml").is_file():
        raise MissingFileError(f"the folder {folder} has no hyperparams.yaml")
    if not folder.exists() and looks_like_path:
        raise MissingFileError(f"no such folder: {folder}")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise InputError(f"--device {device!r} is no device ({err})") from err
    try:
        return EmotionRecognizer.from_hparams(
            source=source, savedir=savedir, run_opts={"device": device}
        )
    except OSError as err:  # the Hub (offline, unknown repository) or a missing file
        raise InputError(f"{type(err).__name__}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module doc). Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ptapt.deploy.classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="exported model folder or Hugging Face Hub id")
    parser.add_argument("files", nargs="+", help="audio files")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument(
        "--savedir",
        default=None,
        help="folder to collect the model files in (default: none; a local model is read in "
        "place, a Hub model from the Hugging Face cache)",
    )
    args = parser.parse_args(argv)
    try:
        recognizer = load_recognizer(args.model, args.device, args.savedir)
    except PtaptError as err:  # missing folder, offline Hub, device ...
        print(
            f"error: cannot load the model '{args.model}' ({err}). "
            "Expected a folder written by 'python -m speechbrain_ptapt.deploy.export' or its Hub "
            "repository id.",
            file=sys.stderr,
        )
        return 2
    results = classify_files(recognizer, args.files)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(format_line(result))
    for result in results:
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

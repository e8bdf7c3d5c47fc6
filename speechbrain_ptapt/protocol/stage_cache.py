"""One cache for the results of every stage of an experiment: fingerprint, is-done,
checkpoint guard and atomic publication.

The stages: the data manifests (:mod:`~speechbrain_ptapt.data.preparation`), TAPT
(:mod:`~speechbrain_ptapt.stages.tapt`), P-TAPT phase 1
(:mod:`~speechbrain_ptapt.stages.frame_emotion`),
the pseudo-labels' features, codebooks and labels (:mod:`~speechbrain_ptapt.pseudo_labels.features`,
:mod:`~speechbrain_ptapt.pseudo_labels.codebooks`, :mod:`~speechbrain_ptapt.pseudo_labels.labels`),
P-TAPT phase 2 (:mod:`~speechbrain_ptapt.stages.ptapt`) and the export
(:mod:`~speechbrain_ptapt.deploy.export`, whose folder is published the same way).

Fingerprint
    What a stage's result depends on: every plain hparams value whose key the stage
    owns (its prefix, e.g. ``tapt_``) plus the few shared keys it reads
    (:class:`StageKeys`), minus the result-neutral keys (:func:`is_result_neutral`:
    folders, loader workers, log and checkpoint intervals, the k-means device), plus
    digests of its inputs (the training manifest, an earlier stage's result). Objects
    hyperpyyaml builds (``!new:``, ``!name:``: models, checkpointers, loggers) never
    enter; the plain keys they are built from do. A new setting thus enters the
    fingerprint of its stage without anyone listing it.

Record
    A published result carries its fingerprint in a record file written last and
    atomically (:func:`write_json_atomic`); a folder result is assembled under a
    ``.partial`` name and renamed once complete (:func:`partial_folder`,
    :func:`finish_folder`). A result is thus either complete with its record, or
    absent. (The k-means codebooks share one record, ``kmeans.json``, with an entry
    per K, compared with :func:`differences`.)

Stale-state policy, the same for every stage
    * No record: the stage runs (resuming from its checkpoints, if any).
    * A record of the same fingerprint: the result is reused as it is.
    * A record of another fingerprint: the result is never reused, and nothing that
      took training to make is ever deleted by the code:

      - trained stages (TAPT, P-TAPT phase 1 and phase 2: ``expensive=True``) stop
        with :class:`~speechbrain_ptapt.protocol.errors.StageSettingsError`, naming every
        setting that differs (with its recorded and current value) and the folder,
        and saying what to do: set the settings back, use another ``output_folder``,
        or delete the folder to run the stage again. The checkpoints of an unfinished
        trained stage are guarded the same way: their fingerprint is recorded beside
        them before the first one (:meth:`StageCache.guard_checkpoints`).
      - data derived in minutes at most from inputs that stay on disk, so that
        nothing is lost by computing it again (data manifests, pseudo-label features,
        codebooks and labels: ``expensive=False``), is computed again, with a log
        line naming what differs.

    A stage downstream of a recomputed one sees another input digest in its own
    fingerprint, so it never silently reuses a result made from the old input either.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from speechbrain_ptapt.protocol.errors import StageSettingsError

logger = logging.getLogger(__name__)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it is flushed to
    disk and renamed over ``path`` with :func:`os.replace` (atomic on POSIX and
    Windows), on failure deleted. ``path`` is thus either absent, old, or complete.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file; its parent folders are created if needed.
    mode : str
        ``"w"`` (text, UTF-8) or ``"wb"`` (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name, created with the process umask (unlike mkstemp's 0600).
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    binary = "b" in mode
    encoding = None if binary else "utf-8"
    try:
        with open(tmp_name, "xb" if binary else "x", encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indented) with :func:`atomic_write`, so that a
    half-written file (manifest, record) is never taken as finished.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file; its parent folders are created if needed.
    obj : Any
        A JSON-serialisable object.
    """
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


#: Name endings of hparams keys that never change a stage's result: where files go,
#: how many loader workers read the data, how often progress is logged or saved.
NEUTRAL_SUFFIXES = ("_folder", "_num_workers", "_ckpt_interval_steps", "_log_interval_steps")
#: Result-neutral keys the suffixes miss: the device k-means runs on.
NEUTRAL_KEYS = frozenset({"kmeans_device"})


def is_result_neutral(key: str) -> bool:
    """Whether an hparams key never changes a stage's result (see :data:`NEUTRAL_SUFFIXES`
    and :data:`NEUTRAL_KEYS`)."""
    return key in NEUTRAL_KEYS or key.endswith(NEUTRAL_SUFFIXES)


def is_plain(value: Any) -> bool:
    """Whether a value is data written in the yaml (numbers, strings, booleans, null,
    paths, lists and mappings of them), not an object hyperpyyaml built."""
    if value is None or isinstance(value, (bool, int, float, str, os.PathLike)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and is_plain(item) for key, item in value.items())
    return False


def jsonable(value: Any) -> Any:
    """A plain JSON value: paths become strings, tuples lists, sets sorted lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(item) for item in value)
    return value


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from its JSON record (so the two compare equal)."""
    return json.loads(json.dumps(jsonable(obj)))


@dataclass(frozen=True)
class StageKeys:
    """The hparams keys that define a stage's result.

    Attributes
    ----------
    prefixes : tuple of str
        Every key starting with one of these is the stage's (``("tapt_",)``).
    shared : tuple of str
        Keys without the prefix that the stage reads (``wav2vec2_hub``, ``sample_rate``,
        ``warmup_steps`` ...); absent ones are skipped.
    unused : callable, optional
        ``unused(hparams)``: keys the current choices leave unread (the wav2vec 1.0
        checkpoint when phase 1 uses wav2vec2's CNN), kept out of the fingerprint.
    """

    prefixes: tuple[str, ...]
    shared: tuple[str, ...] = ()
    unused: Callable[[Mapping[str, Any]], Iterable[str]] | None = None

    def keys(self, hparams: Mapping[str, Any]) -> list[str]:
        """The stage's keys in ``hparams``: owned or shared, plain, not result-neutral
        and not unused, sorted."""
        owned = [key for key in hparams if key.startswith(self.prefixes)]
        shared = [key for key in self.shared if key in hparams]
        unused = set(self.unused(hparams)) if self.unused is not None else set()
        return sorted(
            key
            for key in {*owned, *shared}
            if key not in unused and not is_result_neutral(key) and is_plain(hparams[key])
        )

    def settings(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The stage's settings as JSON values. ``wav2vec2_revision`` enters for a hub id
        only (a local folder has no revisions), and not when null (the latest)."""
        settings = {key: hparams[key] for key in self.keys(hparams)}
        if "wav2vec2_revision" in settings:
            from speechbrain_ptapt.models.backbone import hub_revision

            hub = str(hparams.get("wav2vec2_hub", ""))
            revision = hub_revision(hub, settings.pop("wav2vec2_revision"))
            if revision is not None:
                settings["wav2vec2_revision"] = revision
        return canonical(settings)


def stage_fingerprint(keys: StageKeys, hparams: Mapping[str, Any], **inputs: Any) -> dict[str, Any]:
    """A stage's fingerprint: its settings (:meth:`StageKeys.settings`) and the digests of
    its inputs (``train_manifest=...``, an earlier stage's fingerprint ...)."""
    return canonical({**keys.settings(hparams), **inputs})


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, each with both values
    (``tapt_steps (10 -> 20)``), sorted."""
    recorded = recorded or {}
    changed = []
    for key in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(key, _ABSENT), wanted.get(key, _ABSENT)
        if old != new:
            changed.append(f"{key} ({_show(old)} -> {_show(new)})")
    return changed


def read_record(path: str | os.PathLike[str]) -> Any:
    """A JSON record; OSError when absent or unreadable, ValueError when cut short."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def partial_folder(target: str | os.PathLike[str]) -> Path:
    """A new, empty ``<target>.partial`` folder beside ``target`` to assemble a folder
    result in (a leftover of an interrupted attempt is removed first)."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def finish_folder(
    partial: str | os.PathLike[str],
    target: str | os.PathLike[str],
    record: tuple[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Publishes a folder assembled by :func:`partial_folder`: writes ``record``
    (``(file name, content)``) into it last, then renames it to ``target``. A folder
    of that name is thus always complete.

    Arguments
    ---------
    partial : str or os.PathLike
        The assembled folder.
    target : str or os.PathLike
        The published name; it must not exist unless ``replace``.
    record : tuple, optional
        ``(file name, JSON content)`` of the result's record.
    replace : bool
        Delete an existing ``target`` first (a user's explicit choice, e.g. export
        ``--overwrite``).

    Returns
    -------
    Path
        ``target``.
    """
    partial, target = Path(partial), Path(target)
    if record is not None:
        write_json_atomic(partial / record[0], record[1])
    if replace and target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


class StageCache:
    """The cached result of one stage: its fingerprint, its record and its checkpoints,
    under the policy of the module doc.

    Arguments
    ---------
    name : str
        The stage, for messages ("TAPT", "P-TAPT phase 1" ...).
    fingerprint : dict
        What the result depends on (:func:`stage_fingerprint`).
    record : Path
        The record file. A folder result holds it (TAPT's
        ``adapted_wav2vec2/tapt_stage.json``); a result made of files has it beside
        them (``preparation.json``).
    expensive : bool
        A trained stage (refused when stale) rather than derived data (recomputed).
    field : str or None
        Where the record holds the fingerprint: under this key, next to other entries
        (``"settings"``), or None for a record that is the fingerprint itself.
    checkpoints : Path, optional
        The folder of the stage's checkpoints (:meth:`guard_checkpoints`).
    checkpoint_record : str
        The file, in ``checkpoints``, recording their fingerprint.

    Example
    -------
    >>> cache = StageCache("TAPT", fingerprint, adapted / "tapt_stage.json",
    ...                    checkpoints=save, checkpoint_record="tapt_settings.json")
    ... # doctest: +SKIP
    >>> if not cache.is_done():  # doctest: +SKIP
    ...     cache.guard_checkpoints()
    ...     train(...)
    ...     cache.publish_folder(model.save_pretrained, optimizer_steps=steps)
    """

    def __init__(
        self,
        name: str,
        fingerprint: dict[str, Any],
        record: str | os.PathLike[str],
        expensive: bool = True,
        field: str | None = "settings",
        checkpoints: str | os.PathLike[str] | None = None,
        checkpoint_record: str = "settings.json",
    ) -> None:
        self.name = name
        self.fingerprint = canonical(fingerprint)
        self.record = Path(record)
        self.expensive = expensive
        self.field = field
        self.checkpoints = None if checkpoints is None else Path(checkpoints)
        self.checkpoint_record = checkpoint_record

    # -- reading ------------------------------------------------------------

    def _fingerprint_in(self, content: Any) -> Any:
        if self.field is None:
            return content
        return content.get(self.field) if isinstance(content, dict) else None

    def recorded(self) -> Any:
        """The fingerprint in the record; None when there is no record. Raises OSError
        or ValueError when the record cannot be read."""
        if not self.record.is_file():
            return None
        return self._fingerprint_in(read_record(self.record))

    @property
    def stage_folders(self) -> list[Path]:
        """What to delete to run the stage again: the folder holding both the result
        and the checkpoints, else each of them."""
        result = self.record.parent
        if self.checkpoints is None:
            return [result]
        if self.checkpoints.parent == result.parent:
            return [result.parent]
        return [result, self.checkpoints]

    def _refuse(self, what: str, problem: str) -> NoReturn:
        folders = " and ".join(str(folder) for folder in self.stage_folders)
        raise StageSettingsError(
            f"{what} {problem}. Nothing was changed: set the settings back, use another "
            f"output_folder, or delete {folders} to run the {self.name} stage again."
        )

    def is_done(self, outputs: Iterable[str | os.PathLike[str]] = ()) -> bool:
        """Whether the stage's result is on disk with this fingerprint and can be reused.

        Arguments
        ---------
        outputs : iterable of paths
            Files of the result besides the record (all must exist).

        Returns
        -------
        bool
            True: reuse the result. False: compute it (nothing there, or stale
            derived data, logged).

        Raises
        ------
        StageSettingsError
            ``expensive`` and the result is stale, incomplete, or a folder of that name
            holds no record.
        """
        what = f"The {self.name} result in {self.record.parent}"
        try:
            recorded = self.recorded()
        except (OSError, ValueError) as err:
            if self.expensive:
                self._refuse(what, f"has an unreadable record {self.record.name} ({err})")
            logger.info("%s has an unreadable record (%s): computing it again.", what, err)
            return False
        if recorded is None:
            folder = self.record.parent
            if self.expensive and folder.is_dir() and any(folder.iterdir()):
                self._refuse(what, f"has no {self.record.name}: it was not written by this stage")
            return False
        changed = differences(recorded, self.fingerprint)
        if changed:
            problem = f"was made with other settings or data (differs in: {', '.join(changed)})"
            if self.expensive:
                self._refuse(what, problem)
            logger.info("%s %s: computing it again.", what, problem)
            return False
        missing = [str(path) for path in map(Path, outputs) if not path.is_file()]
        if missing:
            if self.expensive:
                self._refuse(what, f"is incomplete ({', '.join(missing)} missing)")
            logger.info("%s is incomplete (%s missing): computing it again.", what, missing)
            return False
        return True

    def guard_checkpoints(self) -> None:
        """Records the fingerprint beside the stage's checkpoints before the first one,
        and refuses checkpoints made with another (every process waits for the main
        one).

        Raises
        ------
        StageSettingsError
            The checkpoints were made with other settings or data, or there are
            checkpoints without a record.
        """
        from speechbrain.utils.checkpoints import CKPT_PREFIX
        from speechbrain.utils.distributed import ddp_barrier, if_main_process

        if self.checkpoints is None:
            raise ValueError(f"The {self.name} stage has no checkpoint folder.")
        settings_file = self.checkpoints / self.checkpoint_record
        what = f"The {self.name} checkpoints in {self.checkpoints}"
        if settings_file.is_file():
            try:
                recorded = self._fingerprint_in(read_record(settings_file))
            except (OSError, ValueError) as err:
                self._refuse(what, f"have an unreadable record {settings_file.name} ({err})")
            changed = differences(recorded, self.fingerprint)
            if changed:
                self._refuse(
                    what,
                    f"were made with other settings or data (differs in: {', '.join(changed)})",
                )
        elif self.checkpoints.is_dir() and any(self.checkpoints.glob(CKPT_PREFIX + "*")):
            self._refuse(what, f"have no {self.checkpoint_record}: their settings are unknown")
        elif if_main_process():
            write_json_atomic(settings_file, self._content({}))
        ddp_barrier()

    # -- writing ------------------------------------------------------------

    def _content(self, extra: Mapping[str, Any]) -> Any:
        if self.field is None:
            if extra:
                raise ValueError("A record that is the fingerprint itself has no other entries.")
            return self.fingerprint
        return {self.field: self.fingerprint, **extra}

    def publish(self, **extra: Any) -> Path:
        """Writes the record (atomically), after every output: the result is done.

        Arguments
        ---------
        **extra : Any
            Other JSON entries of the record (only with a ``field``).

        Returns
        -------
        Path
            The record file.
        """
        write_json_atomic(self.record, self._content(extra))
        return self.record

    def publish_folder(self, write: Callable[[Path], Any], **extra: Any) -> Path:
        """Publishes a folder result: ``write(folder)`` fills a ``.partial`` folder, the
        record goes in last, and the folder is renamed to its name (the record's
        folder). Call it on the main process only.

        Returns
        -------
        Path
            The result folder.
        """
        target = self.record.parent
        partial = partial_folder(target)
        write(partial)
        return finish_folder(partial, target, (self.record.name, self._content(extra)))

"""The training loop of every stage, on SpeechBrain's ``Brain``.

Every stage trains with ``Brain.fit(epoch_counter, train_set, train_loader_kwargs=...)``:
SpeechBrain builds the training loader (a ``SaveableDataLoader``, whose position in the
epoch is checkpointed), shares it between processes under DDP (its
``DistributedSamplerWrapper``) and ends a stage counted in optimizer steps at its
``optimizer_step_limit``. What it lacks is here:

- :class:`StageBrain`, the base of every training Brain: ``set_epoch`` on the sampler a
  stage brings, DDP shares that follow an epoch's number of batches, DDP's search for
  parameters without a gradient when a model can have them;
- :class:`StepStageBrain`, the base of the stages counted in optimizer steps (TAPT,
  P-TAPT phase 1 and phase 2): learning rate per optimizer step
  (:class:`WarmupFlatLinearDecay`), checkpoints every N optimizer steps over the whole
  stage, a train log every N optimizer steps;
- :func:`with_default_precision`, the authors' mixed precision on a CUDA device.

A step-counted stage's settings are one yaml mapping (``tapt_brain_hparams``,
``frame_brain_hparams``, ``ptapt_brain_hparams``) given to its Brain as ``hparams``, so
``Brain.__init__`` reads the run options it holds (``optimizer_step_limit``,
``max_grad_norm``) itself. SpeechBrain's order applies: a run option given on the
command line (``--max_grad_norm``, ``--optimizer_step_limit``,
``--grad_accumulation_factor``, ``--ckpt_interval_minutes``, ``--precision`` ...) wins
over the mapping, for every stage of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_ptapt.protocol.checkpointing import RandomState
from speechbrain_ptapt.protocol.distributed import needs_unused_parameter_search, resize_share

logger = logging.getLogger(__name__)

#: Mixed precision of every training stage on a CUDA device unless ``--precision``
#: says otherwise: the authors train all stages with PyTorch Lightning's
#: ``precision=16``, ``amp_backend='native'`` (FT-w2v2-ser bin/run_exp_iemocap.sh:6,9,14,
#: bin/run_exp_iemocap_baseline.sh:6,10, bin/run_exp_iemocap_vft.sh:8;
#: run_downstream_custom_multiple_fold.py:56-57): fp16 autocast with a gradient scaler,
#: pytorch-lightning 1.4.5's native AMP plugin (docker/Dockerfile) autocasting the
#: validation and test steps too. Pseudo-labelling is no Brain and stays fp32, as the
#: authors' cluster.py (bin/run_exp_iemocap.sh:8 passes no --precision). The paper does
#: not say.
CUDA_DEFAULT_PRECISION = "fp16"


def with_default_precision(run_opts: Any) -> Any:
    """The user's run options with the authors' precision filled in on a CUDA device.

    On CUDA (``device``, or the device SpeechBrain would pick when none is given), a
    ``precision`` the user did not give becomes :data:`CUDA_DEFAULT_PRECISION`
    (SpeechBrain then trains under fp16 autocast with a gradient scaler) and a missing
    ``eval_precision`` follows the training precision, one switch as in the authors'
    code. On the CPU or with an explicit ``--precision`` (or SpeechBrain's deprecated
    ``--auto_mix_prec`` / ``--bfloat16_mix_prec``) nothing is added: the CPU stays fp32
    unless asked otherwise.

    Arguments
    ---------
    run_opts : RunOptions, dict or None
        SpeechBrain's run options (a dict holds only the options given).

    Returns
    -------
    RunOptions or dict
        The same kind of object; the added values count as given, so they win over
        any ``precision`` in a Brain's hparams.
    """
    if run_opts is None:
        run_opts = {}
    given = set(run_opts) if isinstance(run_opts, dict) else set(run_opts.overridden_args)

    def option(key: str) -> Any:
        return run_opts.get(key) if key in given else None

    device = str(option("device") or sb.utils.distributed.infer_device())
    if device.split(":")[0] != "cuda":
        return run_opts
    if option("bfloat16_mix_prec"):
        train = "bf16"
    elif option("auto_mix_prec"):
        train = "fp16"
    else:
        train = option("precision") or CUDA_DEFAULT_PRECISION
    added = {"precision": train, "eval_precision": option("eval_precision") or train}
    added = {key: value for key, value in added.items() if key not in given}
    if isinstance(run_opts, dict):
        return {**run_opts, **added}
    return dataclasses.replace(
        run_opts, **added, overridden_args=set(run_opts.overridden_args) | set(added)
    )


@register_checkpoint_hooks
class WarmupFlatLinearDecay:
    """Learning-rate schedule counted in optimizer steps: linear warm-up to ``lr``
    over ``warmup_steps``, ``flat_fraction`` of ``total_steps`` at ``lr``, then a
    linear decay that reaches 0 after the last step.

    Calling it before each optimizer step sets the learning rate of that step.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    total_steps : int
        Optimizer steps of the whole stage.
    warmup_steps : int
        Warm-up steps (step ``s`` of them uses ``lr * s / warmup_steps``).
    flat_fraction : float
        Share of ``total_steps`` spent at ``lr`` after the warm-up.

    Example
    -------
    >>> schedule = WarmupFlatLinearDecay(1.0, total_steps=100, warmup_steps=10)
    >>> [round(schedule.lr_at(s), 4) for s in (1, 10, 15, 16, 100)]
    [0.1, 1.0, 1.0, 0.9884, 0.0116]
    """

    def __init__(
        self, lr: float, total_steps: int, warmup_steps: int = 100, flat_fraction: float = 0.05
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}.")
        if warmup_steps < 0 or not 0.0 <= flat_fraction <= 1.0:
            raise ValueError(
                f"Need warmup_steps >= 0 and flat_fraction in [0, 1], got {warmup_steps}, "
                f"{flat_fraction}."
            )
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.flat_steps = int(flat_fraction * total_steps)
        self.steps_done = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        decay_start = self.warmup_steps + self.flat_steps
        if step <= decay_start:
            return self.lr
        decay_steps = self.total_steps - decay_start
        return self.lr * max(0.0, (self.total_steps - step + 1) / (decay_steps + 1))

    def __call__(self, optimizer: torch.optim.Optimizer) -> float:
        """Advances one step and sets the learning rate of every parameter group;
        returns it."""
        self.steps_done += 1
        lr = self.lr_at(self.steps_done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @mark_as_saver
    def _save(self, path: str) -> None:
        torch.save({"steps_done": self.steps_done}, path)

    @mark_as_loader
    def _recover(self, path: str, end_of_epoch: bool = True) -> None:
        del end_of_epoch
        self.steps_done = int(torch.load(path)["steps_done"])


class StageBrain(sb.Brain):
    """SpeechBrain's ``Brain`` with what SpeechBrain's training loader lacks for the
    stages' own samplers; the base of every training Brain here.

    - ``set_epoch`` is called before every epoch on the sampler or batch sampler given
      to ``fit`` in ``train_loader_kwargs``: SpeechBrain calls it only on samplers it
      makes (``shuffle``) or wraps for DDP, so without DDP a
      ``ReproducibleRandomSampler`` would repeat one order every epoch and a batch
      sampler one batching.
    - Under DDP, SpeechBrain's ``DistributedSamplerWrapper`` is re-sized to each epoch's
      number of batches (:func:`~speechbrain_ptapt.protocol.distributed.resize_share`): it sizes
      the shares once, which fails for batches by duration.
    - DDP looks for parameters without a gradient (``find_unused_parameters``) when a
      module can have some on a step
      (:func:`~speechbrain_ptapt.protocol.distributed.needs_unused_parameter_search`).

    Subclasses that override :meth:`on_stage_start` call it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if any(needs_unused_parameter_search(m) for m in self.modules.values()):
            self.find_unused_parameters = True

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; a training sampler given here gets ``set_epoch`` calls."""
        given = loader_kwargs.get("batch_sampler")
        if given is None:
            given = loader_kwargs.get("sampler")
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN and self.train_sampler is None:
            self.train_sampler = given
        return loader

    def on_stage_start(self, stage, epoch=None) -> None:
        """Training: sizes each process's share of the epoch (DDP)."""
        if stage == sb.Stage.TRAIN and epoch is not None:
            resize_share(self.train_sampler, epoch)


class StepStageBrain(StageBrain):
    """A stage counted in optimizer steps: TAPT, P-TAPT phase 1 and phase 2.

    Its hparams are the stage's yaml mapping. SpeechBrain reads the run options in it:
    ``optimizer_step_limit`` (the stage's steps: :meth:`fit_steps` ends there) and
    ``max_grad_norm`` (0 or less, or inf: no clipping). This class reads:

    - ``lr_scheduler``: a :class:`WarmupFlatLinearDecay`, called before every
      optimizer step;
    - ``epoch_counter``: an ``EpochCounter``; an epoch is a pass of the training
      sampler, and its limit only bounds the passes (every pass holds a step);
    - ``ckpt_interval_optimizer_steps``: a checkpoint every that many optimizer steps,
      counted over the whole stage (SpeechBrain's ``ckpt_interval_steps`` counts
      batches from the start of each epoch); 0: none;
    - ``log_interval_steps`` and ``train_logger`` (optional): every that many optimizer
      steps, a train log line with the means over the window's batches of what the
      batches added (:meth:`add_to_log`), the learning rate and :meth:`extra_log_stats`.

    The checkpointer gets the modules (under their names in ``modules``), the
    schedule (``lr_scheduler``), the epoch counter (``counter``) and the random state
    (``rng``); SpeechBrain adds the optimizer, the brain's counters and the loader's
    position, so an interrupted stage resumes at the step it reached, with the
    batches, crops and masks an uninterrupted one would draw. At the last step a final
    checkpoint replaces the others (:meth:`on_stage_end`).

    Subclasses define ``compute_forward`` and ``compute_objectives`` (calling
    :meth:`add_to_log` on training batches).
    """

    def __init__(
        self,
        modules: dict[str, torch.nn.Module] | None = None,
        opt_class: Any = None,
        hparams: dict[str, Any] | None = None,
        run_opts: Any = None,
        checkpointer: sb.utils.checkpoints.Checkpointer | None = None,
    ) -> None:
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        if self.max_grad_norm is None or self.max_grad_norm <= 0:
            self.max_grad_norm = math.inf
        self._reset_log_window()
        if checkpointer is not None:
            recoverables = {**dict(modules or {}), "rng": RandomState()}
            for key, name in (("lr_scheduler", "lr_scheduler"), ("epoch_counter", "counter")):
                if self._setting(key) is not None:
                    recoverables[name] = self._setting(key)
            checkpointer.add_recoverables(recoverables)

    def _setting(self, key: str, default: Any = None) -> Any:
        return getattr(getattr(self, "hparams", None), key, default)

    @property
    def stage_finished(self) -> bool:
        """Whether the optimizer steps of the stage are done."""
        limit = self.optimizer_step_limit
        return limit is not None and self.optimizer_step >= limit

    def fit_steps(
        self,
        train_set: torch.utils.data.Dataset,
        train_loader_kwargs: dict[str, Any],
        valid_set: Any = None,
    ) -> None:
        """Trains (or resumes) the stage to its ``optimizer_step_limit``.

        Arguments
        ---------
        train_set : Dataset
            The training set.
        train_loader_kwargs : dict
            Its loader's ``sampler`` (with ``batch_size``) or ``batch_sampler``, and
            ``num_workers``. The loader gets a private generator: starting an epoch
            draws nothing from the global random state, so a resumed stage draws what
            an uninterrupted one would.
        valid_set : Dataset or DataLoader, optional
            Validated after every epoch.

        Raises
        ------
        RuntimeError
            When the epoch counter ran out before the last step.
        """
        if self.optimizer_step_limit is None:
            raise ValueError("A step-counted stage needs optimizer_step_limit in its hparams.")
        kwargs = {"generator": torch.Generator(), **train_loader_kwargs}
        self.fit(self.hparams.epoch_counter, train_set, valid_set, train_loader_kwargs=kwargs)
        if not self.stage_finished:
            raise RuntimeError(
                f"The stage ended after {self.optimizer_step} of {self.optimizer_step_limit} "
                f"optimizer steps: its epoch counter allows {self.hparams.epoch_counter.limit} "
                "passes over the data; raise its limit."
            )

    # ------------------------------------------------------------------ log window

    def _reset_log_window(self) -> None:
        """Starts a new logging window (sums over its batches of the logged values)."""
        self._log_sums: dict[str, float] = {}
        self._log_batches = 0

    def add_to_log(self, **values: float) -> None:
        """Adds a training batch's values to the current log window."""
        for key, value in values.items():
            self._log_sums[key] = self._log_sums.get(key, 0.0) + float(value)

    def take_log_window(self) -> dict[str, float]:
        """The means over the window's batches of the logged values; starts a new window."""
        count = max(self._log_batches, 1)
        stats = {key: value / count for key, value in self._log_sums.items()}
        self._reset_log_window()
        return stats

    def extra_log_stats(self) -> dict[str, float]:
        """Values added to each train log line (none here)."""
        return {}

    # ------------------------------------------------------------------ hooks

    def on_fit_batch_start(self, batch, should_step: bool) -> None:
        """Sets the learning rate of the coming optimizer step."""
        if should_step:
            self.lr = self.hparams.lr_scheduler(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step: bool) -> None:
        """After an optimizer step: the train log line and the checkpoint when due."""
        self._log_batches += 1
        if not should_step:
            return
        step = self.optimizer_step
        interval = int(self._setting("log_interval_steps", 0) or 0)
        if interval > 0 and step % interval == 0:
            self.write_log_line()
        interval = int(self._setting("ckpt_interval_optimizer_steps", 0) or 0)
        if interval > 0 and step % interval == 0 and not self.stage_finished:
            self.save_step_checkpoint()

    def write_log_line(self) -> None:
        """Logs the window's means, the learning rate and :meth:`extra_log_stats`."""
        stats = {**self.take_log_window(), "lr": float(self.lr), **self.extra_log_stats()}
        train_logger = self._setting("train_logger")
        if train_logger is not None:
            train_logger.log_stats(stats_meta={"step": self.optimizer_step}, train_stats=stats)

    def save_step_checkpoint(self) -> None:
        """An intra-epoch checkpoint, as SpeechBrain's (the last one is kept)."""
        if self.checkpointer is None:
            return
        self.checkpointer.save_and_keep_only(
            end_of_epoch=False,
            num_to_keep=1,
            ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta,
            meta={INTRA_EPOCH_CKPT_FLAG: True, "optimizer_step": int(self.optimizer_step)},
            verbosity=logging.DEBUG,
        )

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        """After the last step: one final checkpoint replaces the others, so a rerun
        finds the stage finished."""
        if stage == sb.Stage.TRAIN and self.checkpointer is not None and self.stage_finished:
            self.step = 0  # the epoch is over (SpeechBrain resets it after this hook)
            self.checkpointer.save_and_keep_only(
                meta={"optimizer_step": self.optimizer_step, "train_loss": float(stage_loss)},
                num_to_keep=1,
            )

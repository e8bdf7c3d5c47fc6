"""Multi-process (DDP) training helpers shared by every training stage.

Under ``torchrun`` SpeechBrain wraps each trainable module in
``DistributedDataParallel`` (DDP). The stages use the helpers here to

- give every process a disjoint share of each epoch's batches and the same
  number of optimizer steps (:class:`RankShare`, :func:`make_train_loader`);
- turn on DDP's search for parameters that get no gradient on a step when a
  model can have such parameters (:func:`needs_unused_parameter_search`,
  :func:`with_ddp_options`): wav2vec2's learned mask embedding on a batch
  where no frame is masked, layers skipped by LayerDrop;
- reach the wrapped module's own attributes (:func:`unwrap`).

Without DDP every helper is a no-op.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import speechbrain as sb
import torch
from torch import nn


def world_size() -> int:
    """Number of DDP processes (1 without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def rank() -> int:
    """This process's global rank (0 without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``)
    wrapper; any other module as is."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return module


class RankShare(torch.utils.data.Sampler):
    """One process's share of a sampler's output (items or batches) under DDP.

    Each epoch the wrapped sampler is iterated in full (it yields the same
    sequence on every process: it depends only on its seed and epoch), padded by
    repeating its first elements to a multiple of ``num_replicas`` when needed
    (as torch's ``DistributedSampler`` pads), and process ``rank`` takes elements
    ``rank, rank + num_replicas, ...``. The shares of one epoch are disjoint but
    for that padding, and every process gets the same number of elements, so all
    processes make the same number of optimizer steps.

    Fixed-step stages ask their sampler for ``num_replicas`` times the batches
    of one process, so their shares need no padding.

    Arguments
    ---------
    sampler : iterable
        A sampler or batch sampler with ``__len__`` (``set_epoch`` is forwarded
        when it has one).
    rank : int
        This process's rank.
    num_replicas : int
        Number of processes.

    Example
    -------
    >>> [list(RankShare(range(5), r, 2)) for r in (0, 1)]
    [[0, 2, 4], [1, 3, 0]]
    """

    def __init__(self, sampler: Iterable, rank: int, num_replicas: int) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"Need 0 <= rank < num_replicas, got {rank}, {num_replicas}.")
        self.sampler = sampler
        self.rank = int(rank)
        self.num_replicas = int(num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Forwards the epoch to the wrapped sampler."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        elements = list(self.sampler)
        if not elements:
            return iter([])
        total = math.ceil(len(elements) / self.num_replicas) * self.num_replicas
        while len(elements) < total:
            elements.extend(elements[: total - len(elements)])
        return iter(elements[self.rank : total : self.num_replicas])

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.num_replicas)


def make_train_loader(
    brain: sb.Brain,
    dataset: torch.utils.data.Dataset,
    sampler: Iterable | None = None,
    batch_sampler: Iterable | None = None,
    **loader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """The training DataLoader of a stage that brings its own (seeded) sampler.

    Under DDP the sampler (or batch sampler) is wrapped in a :class:`RankShare`,
    so each process loads its own share of every epoch. The loader is registered
    with the brain's checkpointer (``dataloader-TRAIN``, SpeechBrain's key), so an
    interrupted epoch resumes after the batches it has seen, and the brain calls
    ``set_epoch`` on the sampler before each epoch.

    Arguments
    ---------
    brain : speechbrain.Brain
        The stage's brain (its checkpointer, if any, receives the loader).
    dataset : Dataset
        The training set.
    sampler : iterable, optional
        An item sampler (then ``batch_size`` goes in ``loader_kwargs``).
    batch_sampler : iterable, optional
        A batch sampler (exactly one of ``sampler`` and ``batch_sampler``).
    **loader_kwargs
        Other DataLoader options (``batch_size``, ``num_workers``, ``generator`` ...).

    Returns
    -------
    DataLoader
        SpeechBrain's ``SaveableDataLoader``, padded batches.
    """
    if (sampler is None) == (batch_sampler is None):
        raise ValueError("Give exactly one of sampler and batch_sampler.")
    key = "sampler" if sampler is not None else "batch_sampler"
    chosen = sampler if sampler is not None else batch_sampler
    processes = world_size()
    if processes > 1:
        chosen = RankShare(chosen, rank(), processes)
    loader = sb.dataio.dataloader.make_dataloader(dataset, **{key: chosen}, **loader_kwargs)
    if brain.checkpointer is not None:
        brain.checkpointer.add_recoverable("dataloader-" + sb.Stage.TRAIN.name, loader)
    brain.train_sampler = chosen
    return loader


def needs_unused_parameter_search(module: nn.Module) -> bool:
    """Whether DDP must look for parameters that get no gradient on some steps.

    True when ``module`` holds a trainable wav2vec2 mask embedding
    (``masked_spec_embed``: unused on a batch where no frame is masked, e.g. when
    every crop is shorter than a mask span) or a transformers model with LayerDrop
    (``config.layerdrop > 0``: skipped layers get no gradient).
    """
    for sub in module.modules():
        embed = getattr(sub, "masked_spec_embed", None)
        if isinstance(embed, nn.Parameter) and embed.requires_grad:
            return True
        config = getattr(sub, "config", None)
        if float(getattr(config, "layerdrop", 0.0) or 0.0) > 0.0 and any(
            p.requires_grad for p in sub.parameters()
        ):
            return True
    return False


def with_ddp_options(options: dict[str, Any], *modules: nn.Module) -> dict[str, Any]:
    """``options`` (run options as a dict) with ``find_unused_parameters`` turned on
    when any of ``modules`` :func:`needs_unused_parameter_search` (only consulted
    under DDP; a value given by the user is kept when it is True)."""
    if any(needs_unused_parameter_search(m) for m in modules):
        return {**options, "find_unused_parameters": True}
    return dict(options)

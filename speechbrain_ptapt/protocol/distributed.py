"""Multi-process (DDP) training helpers shared by every training stage.

Under ``torchrun`` SpeechBrain's ``Brain`` wraps each trainable module in
``DistributedDataParallel`` (DDP) and the training sampler in its
``DistributedSamplerWrapper``, which gives every process a disjoint share of each
epoch (the same number of batches each). The training Brains
(:class:`~speechbrain_ptapt.stages.training.StageBrain`) use the helpers here to

- size those shares to each epoch's number of batches (:func:`resize_share`);
- turn on DDP's search for parameters that get no gradient on a step when a
  model can have such parameters (:func:`needs_unused_parameter_search`):
  wav2vec2's learned mask embedding on a batch where no frame is masked, layers
  skipped by LayerDrop;
- reach the wrapped module's own attributes (:func:`unwrap`).

Without DDP every helper is a no-op.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from speechbrain.dataio.sampler import DistributedSamplerWrapper
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


def resize_share(sampler: Any, epoch: int) -> None:
    """Sets the epoch of SpeechBrain's ``DistributedSamplerWrapper`` and sizes each
    process's share to the wrapped sampler's length in that epoch; any other sampler
    is left alone.

    The wrapper (torch's ``DistributedSampler``) computes ``num_samples`` and
    ``total_size`` once, from the wrapped sampler's length when it is built. A batch
    sampler whose number of batches changes from epoch to epoch
    (:class:`~speechbrain_ptapt.data.dataio.DurationBatchSampler`, and SpeechBrain's own
    ``DynamicBatchSampler``) then fails the wrapper's length check in an epoch with
    more batches, and has a share padded with repeated batches in one with fewer.
    Here they are computed again, as ``DistributedSampler.__init__`` does.

    Arguments
    ---------
    sampler : any
        The Brain's ``train_sampler``.
    epoch : int
        The coming epoch.
    """
    if not isinstance(sampler, DistributedSamplerWrapper):
        return
    sampler.set_epoch(epoch)
    length, replicas = len(sampler.sampler), sampler.num_replicas
    if sampler.drop_last and length % replicas:
        sampler.num_samples = math.ceil((length - replicas) / replicas)
    else:
        sampler.num_samples = math.ceil(length / replicas)
    sampler.total_size = sampler.num_samples * replicas


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

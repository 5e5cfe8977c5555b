"""What every method's training step shares: the batch's augmentations, the step's lr and weight
decay, micro-batches (gradient accumulation), the log values averaged over the processes, and the
optimiser step with clipping. A method's ``step`` (:mod:`dino_lite.methods`) is built from these."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .augment import BatchRandom, photometric
from .data import seed_for
from .precision import Precision


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class Process:
    """Where this process computes: its ``rank`` among ``world`` processes, its ``device``, and
    the ``precision`` (bf16 or fp32, attention kernel) chosen for the run."""
    rank: int
    world: int
    device: torch.device
    precision: Precision


def augmented(views, step: int, cfg, proc: Process):
    """The batch's crops on this process's device with their photometric augmentations (float),
    and this process's rows of the global batch. The random numbers are drawn for the global
    batch from a seed fixed by ``(cfg.seed, step)``, so an image gets the same augmentation on 1
    or N processes and in a resumed run (the trailing 0 is part of the seed: changing it changes
    recorded results)."""
    views = [v.to(proc.device, non_blocking=True) for v in views]
    local = len(views[0])
    rows = slice(proc.rank * local, (proc.rank + 1) * local)
    draw = BatchRandom(seed_for(cfg.seed, step, 0), rows, local * proc.world)
    return photometric(views, draw, cfg.colour_jitter, cfg.rotation, cfg.invert), rows


def set_lr_and_wd(optimizer, sched: dict, step: int):
    """This step's learning rate, and weight decay on the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = float(sched["lr"][step])
        if not group.get("no_decay"):
            group["weight_decay"] = float(sched["wd"][step])


def micro_batches(batch: int, n: int) -> list[slice]:
    """Gradient accumulation: the rows of each of ``n`` equal micro-batches of a ``batch``. Each
    is a forward and backward pass; their gradients add up before the one optimiser step, so
    ``n`` of them take the memory of one and the step is that of the whole batch."""
    if batch % n:
        raise ValueError(f"a batch of {batch} images does not split into {n} equal micro-batches "
                         f"(accumulate={n})")
    size = batch // n
    return [slice(i * size, (i + 1) * size) for i in range(n)]


def no_sync_unless(last: bool, forward):
    """DDP averages the gradients over the processes at every backward pass; between the
    micro-batches of one step that is wasted, so it waits for the last one."""
    no_sync = getattr(forward, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def global_mean(values: list[float], step: int, proc: Process) -> list[float]:
    """``values`` (the loss first) averaged over the processes, so the log shows the global
    batch; a non-finite loss stops the run on every rank."""
    logged = torch.tensor(values)
    if proc.world > 1:
        logged = logged.to(proc.device)
        dist.all_reduce(logged)
        logged = logged.cpu() / proc.world
    if not math.isfinite(logged[0].item()):
        raise NonFiniteLossError(f"loss is {logged[0].item()} at step {step}; training stopped")
    return logged.tolist()


def clip_gradients(model, cfg):
    """The gradient's norm clipped to ``cfg.clip_grad`` (0: not clipped)."""
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)

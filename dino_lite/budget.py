"""The ``--minutes`` time budget: how many training steps fit in a given wall-clock time.

The schedules (learning rate, weight decay, teacher momentum and temperature) are laid out over
the run's length, so that length must be known before the first step. With a time budget it is
measured, twice:

1. before the run, a few throw-away steps on copies of the networks (:func:`probe`) give a
   first estimate of the time per step;
2. after the first epoch, or 10% of that estimate (:func:`refit_step`), the run's own pace is a
   better one: the trainer fits the budget again and lays the schedules out over the new count
   (steps already taken keep the values they used).

The budget counts from the trainer's creation, so building the dataset and the probe are paid
for out of it.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

PROBE_STEPS = (2, 3)     # untimed warm-up steps (allocation, caches), then timed steps


def probe(step, batches, clock=time.perf_counter) -> float:
    """Seconds per step of ``step(i, views)`` over the first batches of ``batches`` (an iterator
    of ``(views, labels)``): ``PROBE_STEPS[0]`` untimed steps, then the mean of
    ``PROBE_STEPS[1]`` timed ones."""
    warmup, timed = PROBE_STEPS
    t0 = None
    for i in range(warmup + timed):
        if i == warmup:
            t0 = clock()
        step(i, next(batches)[0])
    return (clock() - t0) / timed


def steps_that_fit(minutes: float, spent: float, per_step: float, done: int = 0,
                   cap: float = math.inf) -> int:
    """``done`` steps plus as many steps of ``per_step`` seconds as fit in what is left of
    ``minutes`` once ``spent`` seconds are gone (at least one), and at most ``cap`` in all."""
    remaining = minutes * 60 - spent
    return int(min(done + max(1, int(remaining / per_step)), cap))


def agree(steps: int, device) -> int:
    """The smallest step count over all processes, so that every rank stops at the same step."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([steps], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
    return steps


def refit_step(steps_per_epoch: int, estimate: int) -> int:
    """The step after which the run re-measures its pace: the end of the first epoch or 10% of
    the first estimate, whichever comes first."""
    return min(steps_per_epoch, max(1, estimate // 10))

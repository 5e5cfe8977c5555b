"""Training: one loop for every method; DINO's step here, the masked image models' in their modules.

Read it top to bottom as the reference's ``train_one_epoch``: :func:`dino_step` is one step of
the paper's Algorithm 1, with the options of the config; :func:`masked_step` is one step of a
masked image model (BEiT, SplitMask; :mod:`dino_lite.methods` gives their interface);
:class:`DINOTrainer` is the loop around them (data, optimiser, schedules, log, checkpoints,
exact resume, Ctrl-C, torchrun). The ``--minutes`` time budget is measured in
:mod:`dino_lite.budget`.

One DINO step: the teacher sees the 2 global crops, the student sees all crops; the loss compares
every teacher view with every *other* student view; the student takes an AdamW step; the teacher
moves towards the student by EMA; the center moves towards the mean teacher output.
``cfg.teacher`` swaps the EMA for the paper's other teachers (student copy, previous iteration,
previous epoch); see :func:`teacher_momentum_schedule`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import budget
from .checkpoint import clean_temp_files, load_training_checkpoint, save_checkpoint
from .collapse import CollapseWatch
from .config import Config
from .augment import BatchRandom, MultiCrop, patch_masks, photometric
from .data import (EpochSampler, SeededViews, build_dataset, collate_views, describe_folder,
                   seed_for)
from .loss import DINOLoss, koleo_loss
from .methods import build_method
from .models import build_student_teacher, update_teacher
from .precision import Precision, for_config
from .rundir import RunLock, open_log, read_records, sync
from .schedules import cosine_schedule
from .threads import AdaptiveThreads

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
# options a resumed run may take from the command line instead of the checkpoint: they change
# neither the model nor the data nor the randomness
SAFE_ON_RESUME = ("num_workers", "compile", "threads", "name", "notes")
# the run's length: a resumed run may be given another one (to extend a finished run); the
# schedules are then laid out again over the new length from the step reached
LENGTH_KEYS = ("epochs", "max_steps")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""


class Terminated(KeyboardInterrupt):
    """The run got SIGTERM (``kill``, a scheduler, torchrun stopping its workers) and stopped as
    on Ctrl-C, its checkpoint saved; the command line then exits with 143 (128 + 15)."""


@dataclass(frozen=True)
class Process:
    """Where this process computes: its ``rank`` among ``world`` processes, its ``device``, and
    the ``precision`` (bf16 or fp32, attention kernel) chosen for the run."""
    rank: int
    world: int
    device: torch.device
    precision: Precision


def distributed_setup():
    """(rank, world_size, device) from torchrun's environment; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def resume_config(saved: Config, given: Config | None) -> Config:
    """The config a resumed run continues with: the checkpoint's, where ``given`` (the command
    line's) may change only :data:`SAFE_ON_RESUME` and the length (:data:`LENGTH_KEYS`; a time
    budget, ``minutes``, cannot be changed, only replaced by a length). Any other difference is
    refused with a ValueError naming the keys: a run resumed with other settings is neither the
    old run nor a new one. ``given=None`` continues with the checkpoint's config unchanged."""
    if given is None:
        return saved
    old, new = saved.to_dict(), Config.from_dict(given.to_dict()).to_dict()
    changed = [k for k in old if old[k] != new[k] and k not in SAFE_ON_RESUME + LENGTH_KEYS]
    if changed == ["minutes"] and new["minutes"] is None:
        changed = []           # --epochs / --max-steps given: a length replaces the time budget
    if changed:
        diffs = ", ".join(f"{k} (checkpoint {old[k]!r}, now {new[k]!r})" for k in changed)
        raise ValueError(f"--resume with options that differ from the checkpoint's: {diffs}. "
                         f"Resume with the run's own options (see its config.json); only "
                         f"{', '.join(LENGTH_KEYS + SAFE_ON_RESUME[:3])} may change, to extend "
                         f"a run use --max-steps or --epochs, or start a new run in another --out")
    return Config.from_dict(new)


def subset_indices(n: int, fraction: float, seed: int) -> list[int]:
    """``max(1, round(fraction * n))`` of ``n`` indices, drawn by ``seed``, sorted."""
    g = torch.Generator().manual_seed(seed_for(seed, "subset"))
    return sorted(torch.randperm(n, generator=g)[:max(1, round(fraction * n))].tolist())


def param_groups(model):
    """AdamW groups: weight decay on weight matrices only, none on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


def build_optimizer(cfg: Config, model):
    """AdamW (the ViT recipe; betas ``cfg.adam_betas``) or SGD with momentum 0.9; lr and weight
    decay are set every step."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model), lr=0.0, momentum=0.9)
    return torch.optim.AdamW(param_groups(model), betas=tuple(cfg.adam_betas))


def make_schedules(cfg: Config, total_steps: int, global_batch: int,
                   steps_per_epoch: int | None = None) -> dict:
    """Per-step arrays. Warm-ups are given in epochs of the full recipe; a shorter run (time
    budget or --max-steps) compresses the whole recipe, warm-ups included, into its steps.
    ``steps_per_epoch`` places the previous-epoch teacher's copies (only that teacher needs it)."""
    def steps(epochs):
        return int(round(epochs / cfg.epochs * total_steps))
    return {
        "lr": cosine_schedule(cfg.lr * global_batch / 256, cfg.min_lr, total_steps,
                              steps(cfg.warmup_epochs)),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps),
        "momentum": teacher_momentum_schedule(cfg, total_steps, steps_per_epoch),
        "freeze_last_layer": steps(cfg.freeze_last_layer),
        "teacher_temp_warmup": steps(cfg.warmup_teacher_temp_epochs),
    }


def teacher_momentum_schedule(cfg: Config, total_steps: int, steps_per_epoch: int | None) -> np.ndarray:
    """The EMA coefficient m applied to the teacher after each step (theta_t <- m theta_t +
    (1 - m) theta_s): the cosine from ``cfg.momentum_teacher`` to 1 for the momentum teacher;
    0 (copy the student) after every step for ``student_copy`` and after the last step of each
    epoch for ``previous_epoch``; 1 (keep) otherwise. ``previous_iteration`` copies the student
    *before* its update instead (see :func:`dino_step`), so the teacher always lags one step."""
    if cfg.teacher == "momentum":
        return cosine_schedule(cfg.momentum_teacher, 1.0, total_steps)
    momentum = np.ones(total_steps)
    if cfg.teacher == "student_copy":
        momentum[:] = 0.0
    elif cfg.teacher == "previous_epoch":
        if steps_per_epoch is None:
            raise ValueError("the previous-epoch teacher's schedule needs steps_per_epoch")
        momentum[steps_per_epoch - 1::steps_per_epoch] = 0.0
    return momentum


def build_loss(cfg: Config, total_steps: int, sched: dict) -> DINOLoss:
    """The loss module of ``cfg``: temperatures, center, the ablation switches and, with iBOT's
    masked patch prediction on, the patch loss (and its center). The masked image models keep no loss state (their objective is part of the model): an empty
    module, so checkpoints and the re-plan treat every method alike."""
    if cfg.method != "dino":
        return torch.nn.Module()
    return DINOLoss(cfg.out_dim, total_steps, warmup_teacher_temp=cfg.warmup_teacher_temp,
                    teacher_temp=cfg.teacher_temp,
                    warmup_teacher_temp_steps=sched["teacher_temp_warmup"],
                    student_temp=cfg.out_temp_student, center_momentum=cfg.center_momentum,
                    centering=cfg.centering, sharpening=cfg.sharpening, loss=cfg.loss,
                    patch=bool(cfg.ibot))


# -- one step ---------------------------------------------------------------------------------

def augmented(views, step: int, cfg: Config, proc: Process):
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


def ibot_masks(step: int, rows: slice, cfg: Config, proc: Process):
    """iBOT's hidden patches on the two global crops, ``[2 x local batch, patches]``, drawn for
    the global batch (the same on 1 or N processes), and the patches to predict: the same, or
    None on a step where some process (or micro-batch of one) would predict fewer than two (the
    head's BatchNorm needs two rows)."""
    g = torch.Generator().manual_seed(seed_for(cfg.seed, step, 1))
    n, patches = (rows.stop - rows.start) * proc.world, (cfg.global_size // cfg.patch_size) ** 2
    full = [patch_masks(g, n, patches, cfg.mask_prob, cfg.mask_ratio) for _ in range(2)]
    per_chunk = sum(m.view(proc.world * cfg.accumulate, -1).sum(1) for m in full)
    hide = torch.cat([m[rows] for m in full]).to(proc.device)
    return hide, hide if per_chunk.min() >= 2 else None


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


def micro_batches(batch: int, n: int) -> list[slice]:
    """Gradient accumulation: the rows of each of ``n`` equal micro-batches of a ``batch``. Each
    is a forward and backward pass; their gradients add up before the one optimiser step, so
    ``n`` of them take the memory of one and the step is that of the whole batch."""
    if batch % n:
        raise ValueError(f"a batch of {batch} images does not split into {n} equal micro-batches "
                         f"(accumulate={n})")
    size = batch // n
    return [slice(i * size, (i + 1) * size) for i in range(n)]


def mask_rows(masks, part: slice, crops: int = 2):
    """Rows ``part`` of each global crop's block of a ``[crops x batch, patches]`` mask (iBOT's);
    None stays None."""
    if masks is None:
        return None
    return torch.cat([m[part] for m in masks.chunk(crops)])


def no_sync_unless(last: bool, forward):
    """DDP averages the gradients over the processes at every backward pass; between the
    micro-batches of one step that is wasted, so it waits for the last one."""
    no_sync = getattr(forward, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def dino_step(views, step, student, teacher, loss_fn, optimizer, sched, cfg, proc,
              student_forward=None) -> dict:
    """One DINO step, the paper's Algorithm 1, on ``views`` (one batch per crop, the 2 global
    crops first); returns the step's log record. ``sched`` holds the per-step values (lr, wd,
    teacher momentum); ``student_forward`` runs the student's forward pass: its DDP wrapper when
    several processes train (it averages their gradients), else the student itself.

    With ``cfg.accumulate = N > 1`` the student's forward and backward passes run on N
    micro-batches (:func:`micro_batches`) before the one optimiser step. What spans the batch is
    computed over the whole batch: the teacher's targets (its center, Sinkhorn-Knopp), the center
    update and the EMA, once per step. Without BatchNorm the step is then the full batch's."""
    views, rows = augmented(views, step, cfg, proc)           # x1, x2 = augment(x), augment(x)
    set_lr_and_wd(optimizer, sched, step)
    hide = predict = None
    if cfg.ibot:                       # iBOT: the student sees some patches of the global crops hidden
        hide, predict = ibot_masks(step, rows, cfg, proc)
    parts = micro_batches(len(views[0]), cfg.accumulate)
    n = len(parts)
    with proc.precision.autocast(proc.device.type), torch.no_grad():    # t1, t2 = gt(x1), gt(x2)
        t = [teacher([v[part] for v in views[:2]], predict=mask_rows(predict, part))
             for part in parts]
    t_out = [torch.cat(view) for view in zip(*(ti.output for ti in t))]   # the whole batch's
    p_t = loss_fn.teacher_distributions(t_out, step)          # centred and sharpened
    forward = student_forward or student
    optimizer.zero_grad(set_to_none=True)
    loss_value = kl = patch_value = koleo_value = 0.0
    for i, (part, ti) in enumerate(zip(parts, t)):
        with no_sync_unless(i == n - 1, forward):
            with proc.precision.autocast(proc.device.type):   # s1, s2 = gs(x1), gs(x2)
                s = forward([v[part] for v in views], hide=mask_rows(hide, part),
                            predict=mask_rows(predict, part))
            targets = [p[part] for p in p_t]
            kl += loss_fn.kl(targets, s.output) / n
            # loss = H(t1, s2)/2 + H(t2, s1)/2 over every (teacher, other student) view pair,
            # here a mean over this micro-batch: 1/n of the batch's
            loss = loss_fn.objective(s.output, [o[part] for o in t_out], step, targets) / n
            if ti.patches is not None:     # iBOT: the student predicts the teacher at its hidden patches
                patch = loss_fn.patch.objective(s.patches, ti.patches, loss_fn.teacher_temp(step),
                                                step_count=int(predict.sum()))
                loss = loss + cfg.ibot * patch
                patch_value += patch.item()           # logged unweighted, as koleo
            if cfg.koleo:                  # per global crop, over this process's (micro-)batch (as DINOv2)
                koleo = sum(koleo_loss(f) for f in s.features[:2])
                loss = loss + cfg.koleo * koleo / n
                koleo_value += koleo.item() / n       # logged unweighted; "loss" is the weighted total
            loss.backward()                                   # loss.backward()
        loss_value += loss.item()
    # the centers move once per step, towards the whole batch's mean teacher output:
    # C = m*C + (1-m)*cat([t1, t2]).mean(dim=0)
    loss_fn.update_center(t_out)
    if predict is not None:
        loss_fn.patch.update_center(torch.cat([ti.patches for ti in t]))
    stats = loss_fn.teacher_diagnostics(p_t)
    stats = {"teacher_entropy": stats["teacher_entropy"],
             "teacher_batch_entropy": stats["teacher_batch_entropy"], "kl": kl,
             "max_entropy": stats["max_entropy"]}
    if predict is not None:
        stats["patch_loss"] = patch_value
    if cfg.koleo:
        stats["koleo"] = koleo_value
    keys = ("teacher_entropy", "teacher_batch_entropy", "kl")
    loss_value, *means = global_mean([loss_value, *(stats[k] for k in keys)], step, proc)
    stats.update(zip(keys, means))
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
    if step < sched["freeze_last_layer"]:      # the prototypes stay fixed over the first epoch(s)
        for p in student.head.last_layer.parameters():
            p.grad = None
    if cfg.teacher == "previous_iteration":   # the teacher keeps the weights of before the update
        update_teacher(student, teacher, 0.0)
    optimizer.step()                                          # update(gs)
    momentum = float(sched["momentum"][step])
    if momentum < 1.0:
        update_teacher(student, teacher, momentum)            # gt.params = l*gt.params + (1-l)*gs.params
    return {"step": step, "loss": loss_value, "precision": proc.precision.name,
            "lr": float(sched["lr"][step]), "wd": float(sched["wd"][step]), "momentum": momentum,
            "teacher_temp": loss_fn.teacher_temp(step), **stats}


def masked_step(views, step, model, optimizer, sched, cfg, proc, model_forward=None) -> dict:
    """One step of a masked image model (BEiT, SplitMask) on the first global crop of each
    image: draw the masks for the global batch, the model's objective, an AdamW step.
    ``model_forward`` is its DDP wrapper when several processes train, else the model itself.
    With ``cfg.accumulate = N > 1``, N micro-batches' forward and backward passes, each loss
    weighed by the micro-batch's share of what the step's loss averages over
    (``model.loss_units``: BEiT's masked patches)."""
    views, rows = augmented(views[:1], step, cfg, proc)
    set_lr_and_wd(optimizer, sched, step)
    # drop path draws from the global generator: seed it per step, so a resumed run repeats
    # the uninterrupted one's draws (the data loader's iterator, re-created on resume, takes
    # a draw from that generator too)
    torch.manual_seed(seed_for(cfg.seed, step, 2, proc.rank))
    g = torch.Generator().manual_seed(seed_for(cfg.seed, step, 1))
    local = rows.stop - rows.start
    full = model.draw_masks(g, local * proc.world)
    masks = [m[rows].to(proc.device) for m in full]
    parts = micro_batches(local, cfg.accumulate)
    n = len(parts)
    shares = [1.0] if n == 1 else micro_shares(model, full, local, proc.world, parts)
    forward = model_forward or model
    optimizer.zero_grad(set_to_none=True)
    loss_value, totals = 0.0, {}
    for i, (part, share) in enumerate(zip(parts, shares)):
        with no_sync_unless(i == n - 1, forward):
            with proc.precision.autocast(proc.device.type):
                loss, stats = forward(views[0][part], *[m[part] for m in masks])
            loss = loss * share
            loss.backward()
        loss_value += loss.item()
        for k, v in stats.items():                  # logged: the mean over the micro-batches
            totals[k] = totals.get(k, 0.0) + v / n
    loss_value, *values = global_mean([loss_value, *totals.values()], step, proc)
    stats = dict(zip(totals, values))
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    optimizer.step()
    return {"step": step, "loss": loss_value, "precision": proc.precision.name,
            "lr": float(sched["lr"][step]), "wd": float(sched["wd"][step]), **stats}


def micro_shares(model, masks, local: int, world: int, parts) -> list[float]:
    """Each micro-batch's share of a masked image model's loss: the units its loss is a mean
    over (``model.loss_units``), counted in those rows of every process, over the whole global
    batch's. ``masks`` are the global batch's, process ``p`` holding rows ``p * local`` on."""
    total = max(model.loss_units(*masks), 1)
    return [sum(model.loss_units(*[m[p * local + part.start:p * local + part.stop] for m in masks])
                for p in range(world)) / total for part in parts]


# -- the loop ---------------------------------------------------------------------------------

class DINOTrainer:
    """Everything one run needs; ``run()`` trains until the step budget is spent."""

    clock = staticmethod(time.perf_counter)      # seconds; the time budget's clock

    def __init__(self, cfg: Config, out_dir, resume=False, progress=True, on_step=None,
                 overwrite=False):
        self.started = self.clock()
        # torch's thread count: cfg.threads, or fitted to the other processes' load, measured
        # from now on (dino_lite.threads)
        self.threads = AdaptiveThreads()
        self.rank, self.world, self.device = distributed_setup()
        self.out = Path(out_dir)
        self.progress, self.on_step = progress and self.rank == 0, on_step
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"the run folder {self.out} is an existing file; pass a folder")
        if self.rank == 0:
            RunLock(self.out).check()       # refuse early when another run trains into out_dir
        ckpt = None
        if resume == "auto":            # notebooks: continue a run that exists, else start one
            resume = (self.out / CHECKPOINT).exists()
        if resume:
            if not (self.out / CHECKPOINT).exists():
                raise FileNotFoundError(f"--resume: there is no checkpoint {self.out / CHECKPOINT} "
                                        f"to continue from; leave out --resume to start a new run")
            ckpt = load_training_checkpoint(self.out / CHECKPOINT)
            if "precision" in ckpt:     # the saved config has the fp32 variant applied, if it was
                cfg = cfg.for_precision(ckpt["precision"]["bf16"], self.device.type)
            cfg = resume_config(Config.from_dict(ckpt["config"]).validate(), cfg)
        elif (self.out / CHECKPOINT).exists() and not overwrite:
            raise FileExistsError(f"{self.out} already holds a training run ({CHECKPOINT}); "
                                  f"continue it with --resume, or start a new run in another --out")
        cfg = cfg.validate()
        # bf16 or fp32, fused or explicit attention: measured on this machine for a new run
        # (precision.py), kept from the checkpoint on resume so the run continues identically
        if ckpt is not None and "precision" in ckpt:
            self.precision = Precision.from_dict(ckpt["precision"])
        else:
            self.precision = for_config(cfg, self.device.type)
        if self.rank == 0 and progress:
            print(self.precision)
        as_run = cfg.for_precision(self.precision.bf16, self.device.type)
        if as_run != cfg:
            cfg = as_run.validate()
            if self.rank == 0 and progress:
                print("fp32 on this CPU: the preset's cheaper fp32 variant applies: " +
                      ", ".join(f"{k}={v}" for k, v in cfg.fp32_variant.items()))
        self.cfg = cfg
        self.proc = Process(self.rank, self.world, self.device, self.precision)
        torch.manual_seed(cfg.seed)

        base = build_dataset(cfg.data, train=True, image_size=cfg.image_size)
        if self.rank == 0 and progress and describe_folder(cfg.data, base):
            print(describe_folder(cfg.data, base))      # a folder: what was found, labelled or not
        if cfg.data_fraction < 1:       # a seeded subset of the images (the small-data study)
            base = torch.utils.data.Subset(base, subset_indices(len(base), cfg.data_fraction, cfg.seed))
        crops = MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local, cfg.global_scale,
                          cfg.local_scale)
        self.dataset = SeededViews(base, crops, cfg.seed)
        self.sampler = EpochSampler(len(base), cfg.batch_size, cfg.seed, self.rank, self.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.sampler.local_batch % cfg.accumulate:
            raise ValueError(f"each of the {self.world} processes' {self.sampler.local_batch} "
                             f"images does not split into accumulate={cfg.accumulate} equal "
                             f"micro-batches; pick a batch_size divisible by processes x accumulate")
        self.loader = torch.utils.data.DataLoader(
            self.dataset, self.sampler.local_batch, sampler=self.sampler, num_workers=cfg.num_workers,
            collate_fn=collate_views, pin_memory=self.device.type == "cuda",
            generator=torch.Generator())     # not the global RNG: resume stays exact

        if cfg.method == "dino":
            self.student, self.teacher = build_student_teacher(cfg, self.precision.fused_attention)
        else:       # one network, trained directly: kept as both, so checkpoints read the same
            self.student = self.teacher = build_method(cfg, self.precision.fused_attention)
        if self.world > 1 and self.device.type == "cuda":   # BatchNorm over the global batch
            self.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.teacher = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)
        self.student.to(self.device)
        self.teacher.to(self.device)
        if self.device.type == "cuda" and cfg.arch.startswith("resnet"):   # faster convolutions
            self.student.to(memory_format=torch.channels_last)
            self.teacher.to(memory_format=torch.channels_last)
        if cfg.compile:                 # in place, so state_dict keys keep their names
            self.student.backbone.compile()
            self.teacher.backbone.compile()
        # the student's forward pass: with several processes, through DDP, which averages the
        # gradients over them; the student itself holds the weights (checkpoints, EMA, clipping)
        self.student_forward = self.student
        if self.world > 1:
            self.student_forward = torch.nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(cfg, self.student)
        self._say(self.threads.start(cfg.threads))

        # the most steps the run may take: its epochs, or --max-steps; --minutes fits within
        self.step_cap = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)
        if ckpt is not None:
            total = ckpt["total_steps"]
            saved = Config.from_dict(ckpt["config"])
            if any(getattr(saved, k) != getattr(cfg, k) for k in LENGTH_KEYS + ("minutes",)):
                total = self.step_cap       # a new length: lay the rest out over it
                if total < ckpt["step"]:
                    raise ValueError(f"--resume: the run is at step {ckpt['step']}, past the "
                                     f"{total} steps of the new length")
                if self.rank == 0:
                    print(f"resuming at step {ckpt['step']}: the schedules are laid out again "
                          f"over {total} steps (were {ckpt['total_steps']})")
        else:
            total = self._probe_budget() if cfg.minutes else self.step_cap
        self.total_steps = total
        self.sched, self.loss_fn = self.lay_out(total)
        self.step = 0
        # --minutes: the run re-measures its pace once, on its own steps (budget.refit_step)
        self.refit_at = budget.refit_step(self.steps_per_epoch, total) if cfg.minutes and ckpt is None else None
        if ckpt is not None:
            self.student.load_state_dict(ckpt["student"])
            self.teacher.load_state_dict(ckpt["teacher"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.loss_fn.load_state_dict(ckpt["loss"])
            self.step = ckpt["step"]
            torch.set_rng_state(ckpt["rng"])
            if "cuda_rng" in ckpt and self.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        self._log = None
        self._stop = None

    def lay_out(self, total_steps: int):
        """The per-step schedules and the loss (its teacher-temperature warm-up) over
        ``total_steps``; returns ``(sched, loss_fn)``."""
        sched = make_schedules(self.cfg, total_steps, self.cfg.batch_size, self.steps_per_epoch)
        return sched, build_loss(self.cfg, total_steps, sched).to(self.device)

    def train_step(self, views, step, student, teacher, loss_fn, optimizer, sched=None,
                   student_forward=None) -> dict:
        """One step of the configured method (:func:`dino_step` or :func:`masked_step`) on
        ``views`` with the given networks; ``sched`` defaults to the run's schedules."""
        sched = self.sched if sched is None else sched
        if self.cfg.method == "dino":
            return dino_step(views, step, student, teacher, loss_fn, optimizer, sched, self.cfg,
                             self.proc, student_forward)
        return masked_step(views, step, student, optimizer, sched, self.cfg, self.proc,
                           student_forward)

    # -- the --minutes time budget (dino_lite.budget) ---------------------------------------
    def _probe_budget(self) -> int:
        """The steps that fit in the budget, from a few throw-away steps on copies of the
        networks (their own optimiser, schedules and loss; the run's state is not touched)."""
        student, teacher = copy.deepcopy(self.student), copy.deepcopy(self.teacher)
        optimizer = build_optimizer(self.cfg, student)
        n = sum(budget.PROBE_STEPS)
        sched = make_schedules(self.cfg, n, self.cfg.batch_size, self.steps_per_epoch)
        loss_fn = build_loss(self.cfg, n, sched).to(self.device)
        self.sampler.set_epoch(0)
        per_step = budget.probe(
            lambda i, views: self.train_step(views, i, student, teacher, loss_fn, optimizer, sched),
            iter(self.loader), self.clock)
        return self._fit_budget(0, per_step, f"{per_step * 1000:.0f} ms/step (probe)")

    def _fit_budget(self, done: int, per_step: float, how: str) -> int:
        """``done`` steps plus those of ``per_step`` seconds that fit in the rest of the budget
        (counted from the trainer's creation), the same on every rank."""
        steps = budget.agree(budget.steps_that_fit(self.cfg.minutes, self.clock() - self.started,
                                                   per_step, done, self.step_cap), self.device)
        if self.rank == 0:
            print(f"time budget {self.cfg.minutes:g} min: {how} -> {steps} steps")
        return steps

    def _refit_budget(self, run_start: float):
        """Fit the budget again from the pace of the run's own steps so far and lay the
        schedules out over the new count; the centers carry over."""
        per_step = (self.clock() - run_start) / self.step
        self.total_steps = self._fit_budget(
            self.step, per_step, f"{per_step * 1000:.0f} ms/step over the first {self.step} steps")
        centers = self.loss_fn.state_dict()
        self.sched, self.loss_fn = self.lay_out(self.total_steps)
        self.loss_fn.load_state_dict(centers)

    # -- the run --------------------------------------------------------------------------
    def _say(self, line: str | None):
        """Print ``line`` (a change of the thread count) on rank 0; nothing for None."""
        if line and self.rank == 0:
            print(line, file=sys.stderr)

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "loss": self.loss_fn.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "config": self.cfg.to_dict(),
                "precision": self.precision.to_dict(), "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)}
                   if self.device.type == "cuda" else {})}

    def save(self):
        """Write the checkpoint (rank 0), after the log lines of the steps it holds are on disk."""
        if self.rank == 0:
            if self._log is not None:
                sync(self._log)
            save_checkpoint(self.state(), self.out / CHECKPOINT)

    def _open_log(self):
        """The log, holding exactly the records of the steps before ``self.step`` (all the
        checkpoint's steps on resume; none on a fresh run), open for appending line by line."""
        return open_log(self.out / LOG, self.step)

    def _on_signal(self, signum, frame):
        """Ctrl-C (SIGINT) or SIGTERM: finish the step under way, then save and stop (see run());
        a second one stops at once, keeping the last checkpoint."""
        if self._stop:
            raise Terminated if self._stop == signal.SIGTERM else KeyboardInterrupt
        self._stop = signum
        if self.rank == 0:
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            print(f"\n{name}: stopping after this step (again to stop now, without saving)",
                  file=sys.stderr)

    def _stop_requested(self):
        """The stop signal any process got (SIGTERM before SIGINT), else None; all processes
        agree, so they stop at the same step."""
        stop = int(self._stop or 0)
        if self.world > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = int(flag.item())
        return stop or None

    def run(self, until: int | None = None) -> list[dict]:
        """Train to ``total_steps``, or pause after step ``until`` of the same schedule (the
        checkpoint is saved there, and a resumed run continues as if never paused); returns the
        per-step records (also in ``log.jsonl``).

        The run folder is locked while the run writes to it (:class:`~dino_lite.rundir.RunLock`).
        Ctrl-C (SIGINT) lets the step under way finish, saves the checkpoint and raises
        KeyboardInterrupt: the saved state is that of a step boundary, so a resumed run continues
        exactly as an uninterrupted one would. SIGTERM does the same and raises
        :class:`Terminated` (a KeyboardInterrupt)."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.out) if self.rank == 0 else None
        if lock is not None:
            note = lock.acquire()
            if note:
                print(note, file=sys.stderr)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._stop = None
        try:
            return self._run(until)
        finally:
            self.threads.close()
            for s, handler in handlers.items():
                signal.signal(s, handler)
            if lock is not None:
                lock.release()

    def _run(self, until: int | None) -> list[dict]:
        if self.rank == 0:
            clean_temp_files(self.out / CHECKPOINT)   # left by writes that were killed
        if self.rank == 0 and self.world > 1 and self.device.type == "cpu" and any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.student.modules()):
            print("note: on CPU each process's BatchNorm normalises over its own share of the "
                  "batch (torch's SyncBatchNorm needs a GPU), so this run follows a 1-process run "
                  "closely but not exactly; see docs/robustness.md", file=sys.stderr)
        if self.rank == 0:
            # the config as run (bf16 "auto" included) and what "auto" resolved to on this machine
            (self.out / "config.json").write_text(json.dumps(
                {**self.cfg.to_dict(), "resolved_precision": self.precision.to_dict()}, indent=2))
        log = self._log = self._open_log() if self.rank == 0 else None
        # one warning if the teacher collapses (dino_lite.collapse), judged over this run's
        # records: a resumed run's earlier ones too
        watch = CollapseWatch(self.cfg, read_records(self.out / LOG) if log and self.step else ())
        history = []
        pause_at = math.inf if until is None else until
        end = min(pause_at, self.total_steps)       # the last step of this call
        bar = tqdm(total=end, initial=min(self.step, end), desc="DINO", disable=not self.progress,
                   dynamic_ncols=True)
        self.student.train()
        self.teacher.train()
        start = self.clock()
        mid_step = False      # True while the state is between two steps' (not to be saved)
        try:
            if self.rank == 0 and self.step >= self.total_steps:
                print(f"the run in {self.out} is complete ({self.step} steps); to extend it, "
                      f"resume with a larger --max-steps or --epochs")
            while self.step < end:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start_batch)
                self.dataset.epoch = epoch
                for views, _ in self.loader:
                    mid_step = True
                    rec = self.train_step(views, self.step, self.student, self.teacher,
                                          self.loss_fn, self.optimizer, self.sched,
                                          student_forward=self.student_forward)
                    rec["epoch"] = epoch
                    rec["threads"] = torch.get_num_threads()       # the step ran on these
                    rec["time"] = round(self.clock() - start, 3)   # s since (re)start
                    alarm = watch.check(rec, self.total_steps) if self.rank == 0 else None
                    if alarm:
                        rec["collapse"] = alarm
                        tqdm.write(alarm["message"], file=sys.stderr)
                    self.step += 1
                    history.append(rec)
                    if log:
                        log.write(json.dumps(rec) + "\n")
                    mid_step = False
                    self._say(self.threads.check())     # another process took or left a core?
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False,
                                    **({"H_t": f"{rec['teacher_entropy']:.2f}"} if "teacher_entropy" in rec else {}))
                    if self.on_step:
                        self.on_step(rec)
                    if self.step == self.refit_at:
                        self._refit_budget(start)
                        end = bar.total = min(pause_at, self.total_steps)
                    if self.step % self.steps_per_epoch == 0 or self.step in (end, self.total_steps):
                        self.save()
                    stop = self._stop_requested()
                    if stop:
                        raise Terminated if stop == signal.SIGTERM else KeyboardInterrupt
                    if self.step >= end:
                        break
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}. The last good checkpoint is kept at "
                                     f"{self.out / CHECKPOINT} (if one was written); try a lower "
                                     f"lr.") from None
        except KeyboardInterrupt as stop:
            bar.close()
            how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
            if mid_step:      # a second Ctrl-C inside a step: its half-made state is not saved
                msg = (f"{how} during step {self.step}; the last checkpoint "
                       f"{self.out / CHECKPOINT} is kept, continue with --resume")
            else:
                self.save()
                msg = f"{how} at step {self.step}; checkpoint saved, continue with --resume"
            if self.rank == 0:
                print(msg, file=sys.stderr)
            raise
        finally:
            bar.close()
            if log:
                log.close()
            self._log = None
        return history


def train(cfg: Config, out_dir, resume=False, progress=True, on_step=None, overwrite=False,
          until=None):
    """Train with ``cfg`` into ``out_dir``; returns the trainer (its history is in the log).
    ``until`` pauses the run after that step of its schedule (see :meth:`DINOTrainer.run`).
    ``resume=True`` continues the run's checkpoint (an error without one); ``resume="auto"``
    continues it when it exists and starts the run otherwise. A new run (``resume=False``) into
    a folder that holds a checkpoint is refused, unless ``overwrite=True`` replaces that run."""
    trainer = DINOTrainer(cfg, out_dir, resume=resume, progress=progress, on_step=on_step,
                          overwrite=overwrite)
    trainer.history = trainer.run(until)
    return trainer


def read_log(out_dir) -> list[dict]:
    """The per-step records of a run directory."""
    return read_records(Path(out_dir) / LOG)

"""DINO (Caron et al. 2021): a student matches an EMA teacher's centred, sharpened outputs over
multi-crop views. :func:`dino_step` is the paper's Algorithm 1; iBOT's masked patch prediction and
DINOv2's KoLeo are loss terms beside it (:func:`loss_terms`).

``cfg.teacher`` swaps the EMA for the paper's other teachers (student copy, previous iteration,
previous epoch): each is a per-step EMA coefficient (:func:`teacher_momentum`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..augment import patch_masks
from ..data import seed_for
from ..loss import CENTERINGS, LOSSES, DINOLoss, koleo_loss
from ..models import build_student_teacher, update_teacher
from ..schedules import cosine_schedule
from ..step import augmented, clip_gradients, global_mean, micro_batches, no_sync_unless, set_lr_and_wd
from .base import Method

TEACHERS = ("momentum", "student_copy", "previous_iteration", "previous_epoch")


def dino_step(views, step, student, teacher, loss_fn, optimizer, sched, cfg, proc,
              student_forward=None) -> dict:
    """One DINO step on ``views`` (one batch per crop, the 2 global crops first); returns the
    step's log record. ``student_forward`` is the student's DDP wrapper when several processes
    train (it averages their gradients), else the student itself.

    With ``cfg.accumulate = N > 1`` the student's passes run on N micro-batches before the one
    optimiser step; the teacher's targets, the EMA and the center span the whole batch."""
    views, rows = augmented(views, step, cfg, proc)           # x1, x2 = augment(x), augment(x)
    set_lr_and_wd(optimizer, sched, step)
    hide, predict = ibot_masks(step, rows, cfg, proc) if cfg.ibot else (None, None)
    parts = micro_batches(len(views[0]), cfg.accumulate)
    with proc.precision.autocast(proc.device.type), torch.no_grad():    # t1, t2 = gt(x1), gt(x2)
        t = [teacher([v[part] for v in views[:2]], predict=mask_rows(predict, part))
             for part in parts]
    t_out = [torch.cat(view) for view in zip(*(ti.output for ti in t))]   # the whole batch's
    p_t = loss_fn.teacher_distributions(t_out, step)          # centred and sharpened
    forward = student_forward or student
    optimizer.zero_grad(set_to_none=True)
    logged = {}
    for i, (part, ti) in enumerate(zip(parts, t)):
        with no_sync_unless(i == len(parts) - 1, forward):
            with proc.precision.autocast(proc.device.type):   # s1, s2 = gs(x1), gs(x2)
                s = forward([v[part] for v in views], hide=mask_rows(hide, part),
                            predict=mask_rows(predict, part))
            # loss = H(t1, s2)/2 + H(t2, s1)/2, plus the enabled extra terms
            loss, terms = loss_terms(s, ti, [p[part] for p in p_t], [o[part] for o in t_out],
                                     loss_fn, step, cfg, len(parts), predict)
            loss.backward()                                   # loss.backward()
        for k, v in {"loss": loss.item(), **terms}.items():
            logged[k] = logged.get(k, 0.0) + v
    record = log_record(logged, p_t, step, sched, loss_fn, proc)
    clip_gradients(student, cfg)
    if step < sched["freeze_last_layer"]:      # the prototypes stay fixed over the first epoch(s)
        for p in student.head.last_layer.parameters():
            p.grad = None
    if cfg.teacher == "previous_iteration":   # the teacher keeps the weights of before the update
        update_teacher(student, teacher, 0.0)
    optimizer.step()                                          # update(gs)
    if record["momentum"] < 1.0:                              # gt.params = l*gt.params + (1-l)*gs.params
        update_teacher(student, teacher, record["momentum"])
    loss_fn.update_center(t_out)                              # C = m*C + (1-m)*cat([t1, t2]).mean(dim=0)
    if predict is not None:                                   # iBOT's patch center likewise
        loss_fn.patch.update_center(torch.cat([ti.patches for ti in t]))
    return record


def loss_terms(s, t, targets, t_out, loss_fn, step, cfg, n, predict):
    """The loss of one micro-batch (1/n of the step's): DINO's cross-entropy over the (teacher,
    other student) view pairs, plus iBOT's and KoLeo's weighted terms when enabled; and the
    values the log shows (``kl``; the extra terms unweighted)."""
    logged = {"kl": loss_fn.kl(targets, s.output) / n}
    loss = loss_fn.objective(s.output, t_out, step, targets) / n
    if t.patches is not None:
        # iBOT: at the patches the student saw hidden, it predicts the teacher's patch outputs
        # (a mean over the step's predicted patches, of which this micro-batch holds some)
        patch = loss_fn.patch.objective(s.patches, t.patches, loss_fn.teacher_temp(step),
                                        step_count=int(predict.sum()))
        loss = loss + cfg.ibot * patch
        logged["patch_loss"] = patch.item()
    if cfg.koleo:
        # DINOv2's KoLeo on the student's features of each global crop (this process's batch)
        koleo = sum(koleo_loss(f) for f in s.features[:2])
        loss = loss + cfg.koleo * koleo / n
        logged["koleo"] = koleo.item() / n
    return loss, logged


def log_record(logged, p_t, step, sched, loss_fn, proc) -> dict:
    """The step's log record; the loss and the teacher's statistics averaged over the processes
    (a non-finite loss stops the run here, before the optimiser step)."""
    stats = {**loss_fn.teacher_diagnostics(p_t), "kl": logged["kl"]}
    keys = ("teacher_entropy", "teacher_batch_entropy", "kl")
    loss, *means = global_mean([logged["loss"], *(stats[k] for k in keys)], step, proc)
    return {"step": step, "loss": loss, "precision": proc.precision.name,
            "lr": float(sched["lr"][step]), "wd": float(sched["wd"][step]),
            "momentum": float(sched["momentum"][step]), "teacher_temp": loss_fn.teacher_temp(step),
            **dict(zip(keys, means)), "max_entropy": stats["max_entropy"],
            **{k: logged[k] for k in ("patch_loss", "koleo") if k in logged}}


def ibot_masks(step: int, rows: slice, cfg, proc):
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


def mask_rows(masks, part: slice, crops: int = 2):
    """Rows ``part`` of each global crop's block of a ``[crops x batch, patches]`` mask (iBOT's);
    None stays None."""
    if masks is None:
        return None
    return torch.cat([m[part] for m in masks.chunk(crops)])


def teacher_momentum(cfg, total_steps: int, steps_per_epoch: int | None) -> np.ndarray:
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


class DINOMethod(Method):
    """DINO, with the ablation table's switches (teacher, centering, loss, predictor) and the
    iBOT and KoLeo terms."""

    @staticmethod
    def validate(cfg):
        for k in ("head_hidden", "head_bottleneck", "head_layers"):
            if getattr(cfg, k) < 1:
                raise ValueError(f"{k} must be positive, got {getattr(cfg, k)}")
        if cfg.out_dim < 2:        # one prototype: every softmax is 1 and the loss is always 0
            raise ValueError(f"out_dim (the number of prototypes) must be >= 2, got {cfg.out_dim}")
        for k in ("out_temp_student", "teacher_temp", "warmup_teacher_temp"):   # softmax divisors
            if not getattr(cfg, k) > 0:
                raise ValueError(f"{k} is a softmax temperature and must be > 0, got {getattr(cfg, k)}")
        for k in ("center_momentum", "momentum_teacher"):
            if not 0 <= getattr(cfg, k) <= 1:
                raise ValueError(f"{k} must be in [0, 1], got {getattr(cfg, k)}")
        for name, allowed in (("teacher", TEACHERS), ("centering", CENTERINGS), ("loss", LOSSES)):
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
        for k in ("koleo", "ibot"):
            if getattr(cfg, k) < 0:
                raise ValueError(f"{k} is a loss weight >= 0, got {getattr(cfg, k)}")
        if cfg.ibot and not cfg.arch.startswith("vit"):
            raise ValueError(f"ibot (masked patch prediction) needs a ViT, got arch={cfg.arch!r}")
        if not 0 <= cfg.mask_prob <= 1:
            raise ValueError(f"mask_prob is a probability in [0, 1], got {cfg.mask_prob}")
        if not isinstance(cfg.mask_ratio, (tuple, list)) or len(cfg.mask_ratio) != 2 or not 0 <= cfg.mask_ratio[0] <= cfg.mask_ratio[1] <= 1:
            raise ValueError(f"mask_ratio is (low, high) with 0 <= low <= high <= 1, got {cfg.mask_ratio}")
        if cfg.accumulate > 1 and cfg.loss == "infonce":
            raise ValueError(f"accumulate={cfg.accumulate} with loss=infonce: its InfoNCE contrasts "
                             f"each image with the rest of the batch, which micro-batches would "
                             f"shrink; use accumulate=1")

    @staticmethod
    def networks(cfg, fused_attention, tokenizer=None):
        return build_student_teacher(cfg, fused_attention)

    @staticmethod
    def schedules(cfg, total_steps, steps, steps_per_epoch):
        return {"momentum": teacher_momentum(cfg, total_steps, steps_per_epoch),
                "freeze_last_layer": steps(cfg.freeze_last_layer),
                "teacher_temp_warmup": steps(cfg.warmup_teacher_temp_epochs)}

    @staticmethod
    def loss_state(cfg, total_steps, sched):
        """The temperatures, the center, the ablation switches and, with iBOT on, the patch loss
        (and its center)."""
        return DINOLoss(cfg.out_dim, total_steps, warmup_teacher_temp=cfg.warmup_teacher_temp,
                        teacher_temp=cfg.teacher_temp,
                        warmup_teacher_temp_steps=sched["teacher_temp_warmup"],
                        student_temp=cfg.out_temp_student, center_momentum=cfg.center_momentum,
                        centering=cfg.centering, sharpening=cfg.sharpening, loss=cfg.loss,
                        patch=bool(cfg.ibot))

    step = staticmethod(dino_step)

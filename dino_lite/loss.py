"""The DINO loss: the student's distribution over K prototypes must match the teacher's.

For every pair (teacher view t, student view s) with t != s the loss is the cross-entropy
H(P_t, P_s) = -sum_k P_t[k] log P_s[k], where the student is softened by ``student_temp`` and the
teacher is *centred* (a running mean C is subtracted) and *sharpened* (a low ``teacher_temp``).
Centering alone pushes P_t towards uniform, sharpening alone towards one-hot; together they
balance, which is what keeps DINO from collapsing.

The ablation table swaps parts of this for the other methods' (``DINOLoss(centering=...,
loss=...)``; their objectives are in :mod:`dino_lite.baselines`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .baselines import info_nce_loss, mse_loss, sinkhorn_knopp
from .schedules import teacher_temperature_schedule

CENTERINGS = ("center", "sinkhorn_knopp", "none")    # DINO's center, SwAV's equipartition, none
LOSSES = ("ce", "mse", "infonce")                     # DINO's, BYOL's, MoCo v2's


def _pairs(n_teacher, n_student):
    """Every (teacher view, student view) pair of *different* views; the same crop seen by
    both would be trivially matched, so it is skipped."""
    pairs = [(t, s) for t in range(n_teacher) for s in range(n_student) if s != t]
    if not pairs:
        raise ValueError("the loss needs at least two views (one teacher and one other student view)")
    return pairs


def cross_entropy_loss(student_logits, targets, student_temp=0.1):
    """Mean over view pairs of H(target_t, softmax(student_s / student_temp))."""
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    pairs = _pairs(len(targets), len(log_probs))
    return sum((-(targets[t] * log_probs[s]).sum(-1)).mean() for t, s in pairs) / len(pairs)


def dino_loss(student_logits, teacher_logits, center, student_temp=0.1, teacher_temp=0.04):
    """Mean cross-entropy over all (teacher view, student view) pairs with different views.

    ``student_logits`` and ``teacher_logits`` are lists of ``[batch, K]`` tensors, one per view,
    global views first, so teacher view ``i`` and student view ``i`` are the same crop. The
    teacher side is detached: no gradient ever flows into the teacher.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1)
               for t in teacher_logits]
    return cross_entropy_loss(student_logits, targets, student_temp)


def koleo_loss(features, eps=1e-8):
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2): -mean log distance from each
    L2-normalised feature to its nearest neighbour in the batch. It pushes a batch's features
    apart evenly over the sphere, which is what a k-NN classifier on those features needs."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest]) + eps).mean()


def masked_patch_loss(student_logits, teacher_logits, center, student_temp=0.1, teacher_temp=0.04):
    """iBOT's masked image modelling loss: the mean over masked patches of H(P_t, P_s).

    Row i of the ``[n, K]`` logits is one patch the student saw only as the mask token and the
    teacher saw whole: the student must infer, from the context, what the teacher says about it.
    The teacher's patch distribution is centred (with its own center) and sharpened as in
    :func:`dino_loss`; the teacher side is detached.
    """
    target = F.softmax((teacher_logits.detach().float() - center) / teacher_temp, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1).mean()


def ema_center_(center, teacher_logits, momentum):
    """``C <- m C + (1 - m) mean(teacher logits)`` in place, the mean over all processes."""
    batch = torch.cat([t.float() for t in teacher_logits])
    batch_sum = batch.sum(0, keepdim=True)
    count = torch.tensor(float(len(batch)), device=batch.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    center.mul_(momentum).add_(batch_sum / count * (1 - momentum))


class PatchLoss(nn.Module):
    """Holds the patch center of :func:`masked_patch_loss` across steps (iBOT keeps the patch
    tokens' center apart from the CLS center) and updates it after each loss."""

    def __init__(self, out_dim, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_logits, teacher_logits, teacher_temp):
        loss = self.objective(student_logits, teacher_logits, teacher_temp)
        self.update_center(teacher_logits)
        return loss

    def objective(self, student_logits, teacher_logits, teacher_temp, step_count=None):
        """The loss without the center update. ``step_count`` is the number of patches this
        process predicts in the whole step when these are only some of them (a micro-batch of
        gradient accumulation): the mean over these is then weighed by their share, so the
        micro-batches' losses add up to the mean over the step's patches."""
        loss = masked_patch_loss(student_logits, teacher_logits, self.center, self.student_temp,
                                 teacher_temp)
        count = len(student_logits)
        if step_count is not None and step_count != count:
            loss = loss * (count / step_count)
            count = step_count
        if dist.is_available() and dist.is_initialized():
            # processes hide different numbers of patches: weigh this one's mean by its share,
            # so that DDP's gradient average is the gradient of the mean over all patches
            count = torch.tensor([float(count)], device=loss.device)
            total = count.clone()
            dist.all_reduce(total)
            loss = loss * count[0] * dist.get_world_size() / total[0]
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits):
        ema_center_(self.center, [teacher_logits], self.center_momentum)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the rows of ``probs``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


class DINOLoss(nn.Module):
    """Holds what the loss needs across steps: the teacher center and the temperature schedule.
    ``forward`` is :meth:`objective`, then the center's update (:meth:`update_center`).

    The ablation switches (:data:`CENTERINGS`, :data:`LOSSES`): SwAV's equipartition instead of
    the center, or none; ``sharpening=False`` gives the teacher the student's temperature; BYOL's
    MSE and MoCo v2's InfoNCE compare the outputs directly, without centering or temperatures
    (the center is still tracked for the diagnostics). ``patch=True`` adds iBOT's masked patch
    prediction: ``.patch``, a :class:`PatchLoss` with its own center.
    """

    def __init__(self, out_dim, total_steps, *, warmup_teacher_temp=0.04, teacher_temp=0.04,
                 warmup_teacher_temp_steps=0, student_temp=0.1, center_momentum=0.9,
                 centering="center", sharpening=True, loss="ce", patch=False):
        super().__init__()
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering, self.loss = centering, loss
        self.register_buffer("center", torch.zeros(1, out_dim))
        if not sharpening:
            warmup_teacher_temp = teacher_temp = student_temp
        self.teacher_temps = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, total_steps, warmup_teacher_temp_steps)
        self.patch = PatchLoss(out_dim, student_temp, center_momentum) if patch else None

    def teacher_temp(self, step: int) -> float:
        return float(self.teacher_temps[min(step, len(self.teacher_temps) - 1)])

    @torch.no_grad()
    def targets(self, teacher_logits, step: int):
        """The teacher's distributions P_t, one ``[batch, K]`` tensor per global view."""
        temp = self.teacher_temp(step)
        if self.centering == "sinkhorn_knopp":
            return [sinkhorn_knopp(t, temp) for t in teacher_logits]
        center = self.center if self.centering == "center" else 0.0
        return [F.softmax((t.float() - center) / temp, dim=-1) for t in teacher_logits]

    def forward(self, student_logits, teacher_logits, step: int):
        loss = self.objective(student_logits, teacher_logits, step)
        self.update_center(teacher_logits)
        return loss

    def objective(self, student_logits, teacher_logits, step: int, targets=None):
        """The loss without the center update. ``targets`` are the teacher's distributions
        for these images when computed beforehand (:meth:`targets`, over a whole batch of which
        these are a micro-batch); by default they are computed here."""
        if self.loss == "mse":
            return mse_loss(student_logits, teacher_logits)
        if self.loss == "infonce":
            return info_nce_loss(student_logits, teacher_logits)
        if targets is None:
            targets = self.targets(teacher_logits, step)
        return cross_entropy_loss(student_logits, targets, self.student_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits):
        ema_center_(self.center, teacher_logits, self.center_momentum)

    @torch.no_grad()
    def diagnostics(self, student_logits, teacher_logits, step: int) -> dict:
        """Teacher entropy and KL(teacher || student), the two curves of the paper's Fig. 7, and
        the entropy of the batch-mean teacher distribution. A collapsed teacher says the same
        thing for every image, so the two entropies meet: both at ln K (uniform collapse) or
        both near 0 (one prototype wins); a healthy one is sharp per image, spread over the batch.

        Call it *before* ``forward`` so that it sees the center the loss used. For MSE and
        InfoNCE, P_t is a probe (:meth:`teacher_distributions`).
        """
        p_t = self.teacher_distributions(teacher_logits, step)
        stats = self.teacher_diagnostics(p_t)
        max_entropy = stats.pop("max_entropy")
        return {**stats, "kl": self.kl(p_t, student_logits), "max_entropy": max_entropy}

    @torch.no_grad()
    def teacher_distributions(self, teacher_logits, step: int):
        """P_t, one ``[batch, K]`` tensor per global view: the loss's targets (:meth:`targets`)
        for the cross-entropy; for MSE and InfoNCE the centred, sharpened softmax (a probe)."""
        if self.loss == "ce":
            return self.targets(teacher_logits, step)
        return [F.softmax((t.float() - self.center) / self.teacher_temp(step), -1)
                for t in teacher_logits]

    @staticmethod
    @torch.no_grad()
    def teacher_diagnostics(p_t) -> dict:
        """The per-image and the batch-mean teacher entropy of distributions ``p_t``, and ln K."""
        ent = torch.stack([entropy(p) for p in p_t]).mean()
        batch_ent = torch.stack([entropy(p.mean(0, keepdim=True)) for p in p_t]).mean()
        return {"teacher_entropy": float(ent), "teacher_batch_entropy": float(batch_ent),
                "max_entropy": float(np.log(p_t[0].shape[-1]))}

    @torch.no_grad()
    def kl(self, p_t, student_logits) -> float:
        """KL(teacher || student), the mean over the (teacher view, other student view) pairs."""
        log_p_s = [F.log_softmax(s.float() / self.student_temp, -1) for s in student_logits]
        kls = [(p_t[t] * (torch.log(p_t[t].clamp_min(1e-12)) - log_p_s[s])).sum(-1).mean()
               for t, s in _pairs(len(p_t), len(log_p_s))]
        return float(torch.stack(kls).mean())

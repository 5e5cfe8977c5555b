"""The DINO loss: the student's distribution over K prototypes must match the teacher's.

For every pair (teacher view t, student view s) with t != s the loss is the cross-entropy
H(P_t, P_s) = -sum_k P_t[k] log P_s[k], where the student is softened by ``student_temp`` and the
teacher is *centred* (a running mean C is subtracted) and *sharpened* (a low ``teacher_temp``).
Centering alone pushes P_t towards uniform, sharpening alone towards one-hot; together they
balance, which is what keeps DINO from collapsing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .schedules import teacher_temperature_schedule


def dino_loss(student_logits, teacher_logits, center, student_temp=0.1, teacher_temp=0.04):
    """Mean cross-entropy over all (teacher view, student view) pairs with different views.

    ``student_logits`` and ``teacher_logits`` are lists of ``[batch, K]`` tensors, one per view,
    global views first, so teacher view ``i`` and student view ``i`` are the same crop. The
    teacher side is detached: no gradient ever flows into the teacher.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1)
               for t in teacher_logits]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    total, pairs = 0.0, 0
    for ti, p_t in enumerate(targets):
        for si, log_p_s in enumerate(log_probs):
            if si == ti:          # same crop seen by both: trivially matched, skip it
                continue
            total = total + (-(p_t * log_p_s).sum(-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss needs at least two views (one teacher and one other student view)")
    return total / pairs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the rows of ``probs``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


class DINOLoss(nn.Module):
    """Holds what the loss needs across steps: the teacher center and the temperature schedule.

    ``forward`` returns the loss for one step and updates the center afterwards with
    ``C <- m C + (1 - m) mean(teacher logits)``, averaged over all processes when distributed.
    """

    def __init__(self, out_dim, total_steps, warmup_teacher_temp=0.04, teacher_temp=0.04,
                 warmup_teacher_temp_steps=0, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, total_steps, warmup_teacher_temp_steps)

    def teacher_temp(self, step: int) -> float:
        return float(self.teacher_temps[min(step, len(self.teacher_temps) - 1)])

    def forward(self, student_logits, teacher_logits, step: int):
        loss = dino_loss(student_logits, teacher_logits, self.center, self.student_temp,
                         self.teacher_temp(step))
        self.update_center(teacher_logits)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits):
        batch = torch.cat([t.float() for t in teacher_logits])
        batch_sum = batch.sum(0, keepdim=True)
        count = torch.tensor(float(len(batch)), device=batch.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count * (1 - self.center_momentum))

    @torch.no_grad()
    def diagnostics(self, student_logits, teacher_logits, step: int) -> dict:
        """Teacher entropy and KL(teacher || student), the two curves of the paper's Fig. 7.

        Call it *before* ``forward`` so that it sees the center the loss used.
        """
        p_t = [F.softmax((t.float() - self.center) / self.teacher_temp(step), -1)
               for t in teacher_logits]
        log_p_s = [F.log_softmax(s.float() / self.student_temp, -1) for s in student_logits]
        ent = torch.stack([entropy(p) for p in p_t]).mean()
        kls = [(p * (torch.log(p.clamp_min(1e-12)) - log_p_s[i])).sum(-1).mean()
               for j, p in enumerate(p_t) for i in range(len(log_p_s)) if i != j]
        return {"teacher_entropy": float(ent), "kl": float(torch.stack(kls).mean()),
                "max_entropy": float(np.log(p_t[0].shape[-1]))}

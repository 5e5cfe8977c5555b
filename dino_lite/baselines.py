"""The methods DINO's ablation table compares it with, as parts swapped into DINO
(:mod:`dino_lite.ablate` names the rows): BYOL's predictor and MSE loss, MoCo v2's InfoNCE, and
SwAV's Sinkhorn-Knopp equipartition in place of the center (:class:`dino_lite.loss.DINOLoss`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _pairs(n_teacher, n_student):
    """Every (teacher view, student view) pair of different views, as DINO's loss compares them."""
    pairs = [(t, s) for t in range(n_teacher) for s in range(n_student) if s != t]
    if not pairs:
        raise ValueError("the loss needs at least two views (one teacher and one other student view)")
    return pairs


def predictor_mlp(dim, hidden_dim):
    """BYOL's predictor: a 2-layer MLP with BatchNorm, from the output space back to itself.
    Only the student has one, so the student must *predict* the teacher rather than copy it."""
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, dim))


def mse_loss(student_out, teacher_out):
    """BYOL's loss: squared distance of L2-normalised outputs (= 2 - 2 cos), over view pairs."""
    pairs = _pairs(len(teacher_out), len(student_out))
    s_n = [F.normalize(s.float(), dim=-1) for s in student_out]
    t_n = [F.normalize(t.detach().float(), dim=-1) for t in teacher_out]
    return sum(((s_n[s] - t_n[t]) ** 2).sum(-1).mean() for t, s in pairs) / len(pairs)


def _all_gather(x):
    """Concatenate ``x`` from every process (no gradient); this process's rows come at
    ``rank * len(x)``."""
    if not (dist.is_available() and dist.is_initialized()):
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts), dist.get_rank() * len(x)


def info_nce_loss(student_out, teacher_out, temperature=0.2):
    """MoCo v2's contrastive loss: the student view must pick its own image's teacher view out
    of the teacher's whole (global) batch; the other images are the negatives."""
    pairs = _pairs(len(teacher_out), len(student_out))
    s_n = [F.normalize(s.float(), dim=-1) for s in student_out]
    gathered = [_all_gather(F.normalize(t.detach().float(), dim=-1)) for t in teacher_out]
    total = 0.0
    for t, s in pairs:
        keys, offset = gathered[t]
        labels = torch.arange(len(s_n[s]), device=keys.device) + offset
        total = total + F.cross_entropy(s_n[s] @ keys.T / temperature, labels)
    return total / len(pairs)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits, temp=0.04, iterations=3):
    """SwAV's targets: ``exp(logits / temp)`` rescaled so that every prototype receives an equal
    share of the (global) batch and every image's row sums to one. This equipartition replaces
    centering as the force against collapse."""
    logits = teacher_logits.float() / temp
    peak = logits.max()
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - peak).T                      # [K, batch]
    batch = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if distributed:
        dist.all_reduce(batch)
        dist.all_reduce(total)
    q /= total
    k = q.shape[0]
    for _ in range(iterations):
        rows = q.sum(1, keepdim=True)                   # mass per prototype
        if distributed:
            dist.all_reduce(rows)
        q /= rows * k
        q /= q.sum(0, keepdim=True) * batch             # mass per image
    return (q * batch).T

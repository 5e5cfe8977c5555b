"""The collapse lab: DINO's student/teacher loop on toy data, fast enough for a slider.

"Images" are fixed random vectors, "views" are noisy copies of them, the networks are small MLPs
with DINO's head; the loss, the center and the EMA teacher are the package's own. In a second
this shows the paper's Fig. 7 effect: centering alone drifts to a uniform teacher (entropy ln K),
sharpening alone to a one-hot teacher (entropy 0), and only the two together keep a teacher
that is neither, with the student still learning from it (KL(teacher || student) > 0).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .loss import DINOLoss
from .models import DINOHead, MultiCropWrapper, update_teacher


def collapse_run(steps=300, centering=True, sharpening=True, teacher_temp=0.04,
                 center_momentum=0.9, student_temp=0.1, out_dim=64, n_images=512, dim=32,
                 batch=64, noise=0.5, lr=1e-3, momentum=0.99, seed=0) -> dict:
    """Train a toy DINO and return per-step ``teacher_entropy`` (h), ``kl``, ``loss`` (H) and
    ``teacher_batch_entropy`` (entropy of the batch-mean teacher distribution) arrays.

    ``centering=False`` keeps the center at zero (it is equivalent to ``center_momentum=1``);
    ``sharpening=False`` sets the teacher temperature equal to the student's.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = torch.randn(n_images, dim, generator=g)
    backbone = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, 128))
    student = MultiCropWrapper(backbone, DINOHead(128, out_dim, hidden_dim=256, bottleneck_dim=32))
    teacher = copy.deepcopy(student).requires_grad_(False)
    loss_fn = DINOLoss(out_dim, steps, teacher_temp=teacher_temp if sharpening else student_temp,
                       warmup_teacher_temp=teacher_temp if sharpening else student_temp,
                       student_temp=student_temp,
                       center_momentum=center_momentum if centering else 1.0)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    hist = {"teacher_entropy": [], "kl": [], "loss": [], "teacher_batch_entropy": []}
    for step in range(steps):
        x = images[torch.randint(0, n_images, (batch,), generator=g)]
        views = [x + noise * torch.randn(x.shape, generator=g) for _ in range(2)]
        with torch.no_grad():
            t_out = teacher(views).output
        s_out = student(views).output
        stats = loss_fn.diagnostics(s_out, t_out, step)
        loss = loss_fn(s_out, t_out, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_teacher(student, teacher, momentum)
        hist["teacher_entropy"].append(stats["teacher_entropy"])
        hist["kl"].append(stats["kl"])
        hist["teacher_batch_entropy"].append(stats["teacher_batch_entropy"])
        hist["loss"].append(loss.item())
    out = {k: np.array(v) for k, v in hist.items()}
    out["max_entropy"] = float(np.log(out_dim))
    return out

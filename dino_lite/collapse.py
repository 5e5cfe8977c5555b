"""Collapse: the rule that says a teacher has collapsed, the warning training gives by it, the
spread of a backbone's features (:func:`feature_spread`, the dimensional kind), and the collapse
lab (DINO's student/teacher loop on toy data, fast enough for a slider).

The rule (:func:`collapse_verdict`) reads the two teacher entropies every training step logs:
a collapsed teacher gives every image the same distribution, so the entropy of the batch-mean
distribution falls to the per-image entropy. ``ablate`` judges its rows by it at the end of a
run; training (:class:`CollapseWatch`) warns once when it holds over a sustained window.

The lab: "images" are fixed random vectors, "views" are noisy copies of them, the networks are
small MLPs with DINO's head; the loss, the center and the EMA teacher are the package's own. In
a second this shows the paper's Fig. 7 effect: centering alone drifts to a uniform teacher
(entropy ln K), sharpening alone to a one-hot teacher (entropy 0), and only the two together
keep a teacher that is neither, with the student still learning from it (KL(teacher || student) > 0).
"""

from __future__ import annotations

import copy
from collections import deque

import numpy as np
import torch
from torch import nn

from .loss import DINOLoss
from .models import DINOHead, MultiCropWrapper, update_teacher

# collapsed: the teacher's output tells the images of a batch apart by less than this many nats
# (the mutual information between image and prototype). An absolute threshold, whatever K: a
# fraction of ln K would call a working short run with K = 4096 collapsed (0.46 nats while its
# k-NN is twice random init's), because early in training the teacher is still near uniform.
COLLAPSE_NATS = 0.2
# the warning during training: the rule over the last WARN_SHARE of the run's steps (as ablate
# judges the end of a run), and over no fewer than WARN_MIN_STEPS, so a dip of a few steps is
# not a collapse
WARN_SHARE = 0.1
WARN_MIN_STEPS = 20
_ENTROPIES = ("teacher_entropy", "teacher_batch_entropy", "max_entropy")


def teacher_information(history: list[dict], tail: float = 0.1) -> float:
    """How much the teacher's output tells the images of a batch apart, in nats, averaged over
    the last ``tail`` of the run: the entropy of the batch-mean teacher distribution minus the
    mean per-image entropy (the mutual information between image and prototype in a batch).
    It is 0 when every image gets the same distribution, uniform or one-hot alike."""
    last = history[-max(1, int(len(history) * tail)):]
    return sum(r["teacher_batch_entropy"] - r["teacher_entropy"] for r in last) / len(last)


def collapse_verdict(history: list[dict], tail: float = 0.1) -> bool:
    """Collapsed when the teacher's information (:func:`teacher_information`) is below
    :data:`COLLAPSE_NATS`: the teacher gives (almost) every image the same distribution."""
    return teacher_information(history, tail) < COLLAPSE_NATS


def feature_spread(features, chunk: int = 65536) -> dict:
    """How many directions a set of features (one row per image) spreads over: the other
    collapse. A teacher can tell images apart (:func:`teacher_information`) while the backbone's
    features vary along almost one direction ("dimensional collapse"): each image's feature is
    the same large vector plus small differences, which cosine k-NN still reads but which a fresh
    linear layer, as fine-tuning starts, sees as one number. Returned:

    - ``effective_rank``: exp of the entropy of the covariance's eigenvalues, each as its share
      of the total variance; ``dims`` if every direction varies alike, 1 if one direction holds
      all of it;
    - ``top_share``: the largest eigenvalue's share of the variance;
    - ``mean_cosine``: the mean cosine similarity between two different images' features (near
      1: the features share one large common vector; rows of zeros left out, nan if fewer than
      two are left);
    - ``dims`` and ``images``.

    Computed in chunks of rows, so a memory-mapped ``[N, D]`` array (``embed``'s ``OUT.npy``)
    is never read whole."""
    n, d = features.shape
    if n < 2:
        raise ValueError(f"the spread of features needs at least 2 rows, got {n}")
    total, outer, unit, directed = np.zeros(d), np.zeros((d, d)), np.zeros(d), 0
    for i in range(0, n, chunk):
        x = np.asarray(features[i:i + chunk], dtype=np.float64)
        total += x.sum(0)
        outer += x.T @ x
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit += (x / np.where(norms > 0, norms, 1)).sum(0)
        directed += int((norms > 0).sum())          # a zero vector has no direction: no cosine
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    eig = np.clip(np.linalg.eigvalsh(cov), 0, None)
    if eig.sum() > 0:
        share = eig / eig.sum()
        nonzero = share[share > 0]
        rank, top = float(np.exp(-(nonzero * np.log(nonzero)).sum())), float(share.max())
    else:                                            # identical rows: no direction varies
        rank, top = 0.0, 0.0
    return {"effective_rank": rank, "top_share": top,
            "mean_cosine": (float((unit @ unit - directed) / (directed * (directed - 1)))
                            if directed > 1 else float("nan")),
            "dims": d, "images": n}


def collapse_kind(history: list[dict]) -> str:
    """Which way a collapsed teacher went: ``"uniform"`` (its per-image entropy nearer ln K: the
    same flat distribution for every image, centering winning) or ``"one-hot"`` (nearer 0: one
    prototype wins for every image, sharpening winning)."""
    entropy = sum(r["teacher_entropy"] for r in history) / len(history)
    return "uniform" if entropy > history[-1]["max_entropy"] / 2 else "one-hot"


def collapse_fix(kind: str, cfg) -> str:
    """The settings that move a teacher back from ``kind`` of collapse, with ``cfg``'s values."""
    knobs = []
    if kind == "uniform":
        if not cfg.sharpening:
            knobs.append("turn sharpening on (sharpening=true)")
        knobs += [f"lower teacher_temp (now {cfg.teacher_temp:g}) to sharpen the teacher",
                  f"raise center_momentum (now {cfg.center_momentum:g}) to center less"]
    else:
        if cfg.centering == "none":
            knobs.append("turn centering on (centering=center)")
        knobs += [f"lower center_momentum (now {cfg.center_momentum:g}) to center more",
                  f"raise teacher_temp (now {cfg.teacher_temp:g}) to sharpen less"]
    if cfg.teacher == "momentum":
        knobs.append(f"raise momentum_teacher (now {cfg.momentum_teacher:g}) towards 1 for a "
                     f"slower teacher")
    return "; ".join(knobs)


class CollapseWatch:
    """Watches a training run's records and warns once when the teacher has collapsed over a
    sustained window: :func:`collapse_verdict` over the last ``max(WARN_MIN_STEPS, WARN_SHARE x
    total steps)`` records, the rule ``ablate`` judges the end of a run by. Records without the
    teacher entropies (the masked image models) are ignored. ``previous`` are the records of a
    resumed run's earlier steps (a warning among them is not repeated)."""

    def __init__(self, cfg, previous=()):
        self.cfg = cfg
        self.recent = deque()
        self.warned = False
        for rec in previous:
            self.warned = self.warned or "collapse" in rec
            self._keep(rec)

    def _keep(self, rec):
        if all(k in rec for k in _ENTROPIES):
            self.recent.append({k: rec[k] for k in _ENTROPIES})

    def check(self, rec: dict, total_steps: int) -> dict | None:
        """Add the step's record; the first time the rule holds over the window, the warning:
        ``{"kind", "information", "window", "fix", "message"}`` (the message is one line)."""
        if not all(k in rec for k in _ENTROPIES):
            return None
        self._keep(rec)
        window = max(WARN_MIN_STEPS, int(WARN_SHARE * total_steps))
        while len(self.recent) > window:
            self.recent.popleft()
        history = list(self.recent)
        if self.warned or len(history) < window or not collapse_verdict(history, tail=1.0):
            return None
        self.warned = True
        kind = collapse_kind(history)
        info = teacher_information(history, tail=1.0)
        entropy = sum(r["teacher_entropy"] for r in history) / window
        what = ("the same flat distribution for every image" if kind == "uniform"
                else "one prototype wins for every image")
        fix = collapse_fix(kind, self.cfg)
        message = (f"warning: the teacher has collapsed ({kind}) at step {rec.get('step', '?')}: "
                   f"over the last {window} steps it told images apart by {info:.2f} nats "
                   f"(collapsed below {COLLAPSE_NATS:g}), its entropy {entropy:.2f} of ln K = "
                   f"{history[-1]['max_entropy']:.2f}: {what}. To fix: {fix}")
        return {"kind": kind, "information": info, "window": window, "fix": fix,
                "message": message}


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

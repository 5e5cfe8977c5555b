"""Fine-tuning: a backbone plus a new linear head, trained end to end with labels.

This is how both papers compare pre-training methods whose frozen features differ in kind (the
masked image models' features are weak under k-NN and linear probes, El-Nouby et al. 2021), and,
from random weights, the "supervised" baseline every pre-training must beat. Small ViTs only
learn with the recipe BEiT and DeiT fine-tune with:

- random resized crops and flips of the training images;
- label smoothing (the target puts ``1 - e`` on the label and ``e`` spread over all classes);
- AdamW, a linear warm-up, then a cosine decay of the learning rate, per step;
- drop path (stochastic depth), rising linearly over the blocks to ``drop_path``;
- layer-wise learning-rate decay for pre-trained encoders: block ``i`` of ``L`` learns at
  ``layer_decay ** (L + 1 - i)`` times the head's rate, so the early blocks, which pre-training
  shaped most generally, move least (BEiT, Sec. 2.6; timm's ``param_groups_layer_decay``).

The top-1 on the held-out split is recorded after every epoch: :func:`converged` reads that curve
and says whether the fine-tuning reached its plateau, the condition for comparing two encoders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.optim import param_groups_layer_decay
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from .augment import IMAGENET_MEAN, IMAGENET_STD
from .config import Config
from .evaluate import eval_splits, evaluation_precision
from .schedules import cosine_schedule

# the plateau rule: the last TAIL of the epochs raise the best top-1 by less than TOLERANCE
CONVERGED_TAIL, CONVERGED_TOLERANCE, CONVERGED_MIN_POINTS = 0.2, 0.01, 5
PRETRAINED_LAYER_DECAY = 0.75   # BEiT's ViT-B value is 0.65; our encoders have 4 to 12 blocks


def converged(curve: list[float], tail: float = CONVERGED_TAIL,
              tolerance: float = CONVERGED_TOLERANCE) -> bool | None:
    """Whether a top-1 curve (one value per epoch, 0 to 1) has reached its plateau: the best
    value of its last ``tail`` share of epochs exceeds the best before them by less than
    ``tolerance`` (1 point). None when the curve is too short to tell (under 5 points)."""
    if len(curve) < CONVERGED_MIN_POINTS:
        return None
    cut = len(curve) - max(1, math.ceil(tail * len(curve)))
    return max(curve[cut:]) - max(curve[:cut]) < tolerance


def convergence_rule() -> str:
    """The rule :func:`converged` applies, in words (printed with every result)."""
    return (f"converged: the last {CONVERGED_TAIL:.0%} of the epochs raise the best held-out "
            f"top-1 by less than {100 * CONVERGED_TOLERANCE:g} point")


def with_drop_path(vit, rate: float):
    """Stochastic depth on a timm ViT's residual branches, rising linearly from 0 at the first
    block to ``rate`` at the last (the backbones evaluation builds have none)."""
    depth = len(vit.blocks)
    for i, blk in enumerate(vit.blocks):
        p = rate * i / max(depth - 1, 1)
        blk.drop_path1 = DropPath(p) if p > 0 else torch.nn.Identity()
        blk.drop_path2 = DropPath(p) if p > 0 else torch.nn.Identity()
    return vit


def classifier(backbone, num_classes: int, drop_path: float):
    """The backbone with a new linear head: a timm ViT gets its own classifier (so its parameter
    groups for layer decay cover the head), a ResNet a linear layer after its pooled features."""
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(num_classes)
        return with_drop_path(backbone, drop_path)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.embed_dim, num_classes))
    return model


def param_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW's parameter groups: no weight decay on biases, norms, tokens and position
    embeddings; on a ViT each group's ``lr_scale`` decays with depth (1.0: no decay)."""
    if hasattr(model, "group_matcher"):
        return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                        no_weight_decay_list=("cls_token", "pos_embed"))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


@torch.no_grad()
def correct_predictions(model, dataset, precision, device, batch_size: int = 256) -> torch.Tensor:
    """Whether ``model``'s top class is the label, image by image ([len(dataset)] bool). Its mean
    is the top-1; kept per image, two models scored on the same images can be compared pair by
    pair (:func:`dino_lite.smalldata.paired_gap`)."""
    model.eval()
    hits = []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size):
        with precision.autocast(device.type):
            hits.append(model(x.to(device)).argmax(1).cpu() == torch.as_tensor(y))
    return torch.cat(hits)


def training_batches(cfg: Config, data=None, batch_size: int = 64, crop_scale=(0.25, 1.0), seed: int = 0):
    """The fine-tuning's training loader (random resized crops and flips at ``cfg.image_size``,
    shuffled by ``seed``, incomplete last batch dropped), the held-out split and the number of
    classes. Also what `smalldata --dry-run` times, so its estimate pays for loading too."""
    size = cfg.image_size
    train_tf = T.Compose([T.ToImage(), T.RandomResizedCrop(size, tuple(crop_scale), antialias=True),
                          T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_set, test_set = eval_splits(cfg, data, train_tf)
    num_classes = (len(getattr(train_set, "classes", None) or [])
                   or getattr(train_set, "num_classes", 0)
                   or int(max(int(y) for _, y in train_set)) + 1)
    loader = torch.utils.data.DataLoader(train_set, batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise ValueError(f"fine-tuning batch size {batch_size} is larger than the {len(train_set)} "
                         f"training images; pass a smaller --batch-size")
    return loader, test_set, num_classes


def finetune(backbone, cfg: Config, data=None, *, epochs: int = 30, lr: float = 1e-3,
             batch_size: int = 64, weight_decay: float = 0.05, warmup_epochs: float = 3,
             layer_decay: float = PRETRAINED_LAYER_DECAY, drop_path: float = 0.1, label_smoothing: float = 0.1,
             min_lr: float = 1e-6, crop_scale=(0.25, 1.0), max_steps: int | None = None,
             progress: bool = False, seed: int = 0) -> dict:
    """Fine-tune ``backbone`` (changed in place: pass a copy to keep it) with a new head on the
    training split of ``data`` (default ``cfg.data``) at ``cfg.image_size`` px.

    ``lr`` is the peak learning rate per 256 images, scaled linearly with ``batch_size``.
    ``max_steps`` cuts the run short (tests, quick looks); the schedule is laid out over it.
    Returns ``top1`` (held-out, after the last step), ``correct`` (after the last step, 1 or 0
    per held-out image, in the data set's order), ``curve`` (held-out top-1 and mean training
    loss after each epoch), ``converged`` (:func:`converged` on that curve; None when too short
    to tell), ``steps`` and ``precision``.
    """
    if epochs < 1 or (max_steps is not None and max_steps < 1):
        raise ValueError(f"fine-tuning needs epochs >= 1 and max_steps >= 1, got {epochs}, {max_steps}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1: no decay), got {layer_decay}")
    if not 0 <= label_smoothing < 1 or not 0 <= drop_path < 1:
        raise ValueError(f"label_smoothing and drop_path must be in [0, 1), got "
                         f"{label_smoothing} and {drop_path}")
    torch.manual_seed(seed)
    loader, test_set, num_classes = training_batches(cfg, data, batch_size, crop_scale, seed)
    device = next(backbone.parameters()).device
    precision = evaluation_precision(backbone, cfg)
    model = classifier(backbone, num_classes, drop_path).to(device)
    steps = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    peak = lr * batch_size / 256
    schedule = cosine_schedule(peak, min_lr, steps, round(warmup_epochs * len(loader)))
    groups = param_groups(model, weight_decay, layer_decay)
    opt = torch.optim.AdamW(groups, lr=peak)

    curve, step, losses = [], 0, []
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress)
    while step < steps:
        model.train()
        for x, y in loader:
            for g in opt.param_groups:
                g["lr"] = schedule[step] * g["lr_scale"]
            with precision.autocast(device.type):
                logits = model(x.to(device))
            loss = F.cross_entropy(logits.float(), torch.as_tensor(y).to(device),
                                   label_smoothing=label_smoothing)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}; "
                                         f"lower the learning rate (now {lr:g} per 256 images)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step >= steps:
                break
        hits = correct_predictions(model, test_set, precision, device)
        acc = hits.float().mean().item()
        curve.append({"epoch": len(curve) + 1, "step": step, "top1": acc,
                      "train_loss": float(np.mean(losses))})
        losses = []
        bar.set_postfix(top1=f"{acc:.3f}", refresh=False)
    bar.close()
    return {"top1": curve[-1]["top1"], "correct": hits.int().tolist(), "curve": curve, "steps": steps,
            "converged": converged([c["top1"] for c in curve]), "precision": precision.name}


def curve_figure(curves: dict, title: str = "fine-tuning"):
    """A figure of held-out top-1 (%) against epoch, one line per label in ``curves`` (label ->
    list of per-epoch top-1 in 0..1, or a list of such lists: their mean is drawn, each run
    faintly)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, runs) in enumerate(curves.items()):
        runs = runs if runs and isinstance(runs[0], (list, tuple)) else [runs]
        colour = f"C{i}"
        for run in runs if len(runs) > 1 else []:
            ax.plot(range(1, len(run) + 1), [100 * v for v in run], color=colour, alpha=0.25, lw=1)
        length = min(len(r) for r in runs)
        mean = [100 * sum(r[e] for r in runs) / len(runs) for e in range(length)]
        ax.plot(range(1, length + 1), mean, color=colour, lw=2, marker="o", ms=3, label=label)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig

"""What the masked image models (BEiT, SplitMask) share: the config checks, the optimisation
they were published with, and their step.

Such a model is one ``nn.Module`` holding every trained part and the tokenizer (a buffer, so it
is saved), with ``draw_masks(generator, global_batch)`` (a tuple of ``[global_batch, patches]``
bool masks, drawn for the whole global batch so 1 and N processes see the same), ``forward(images,
*masks) -> (loss, stats)`` on the first global crop of each image, ``loss_units(*masks)`` (what
the loss is a mean over, for gradient accumulation) and ``.backbone``, the encoder. It is both
student and teacher of the loop: no EMA, no loss state.
"""

from __future__ import annotations

import torch

from ..data import seed_for
from ..models import backbone_for
from ..step import augmented, clip_gradients, global_mean, micro_batches, no_sync_unless, set_lr_and_wd
from ..tokenizers import KINDS as TOKENIZERS
from .base import Method

# BEiT's optimisation: it replaces the preset's values (tuned for DINO), never explicit ones.
# Masked image models see one crop per image (the first global crop): no multi-crop.
BEIT_RECIPE = dict(
    lr=1.5e-3 * 256 / 2048,            # BEiT: 1.5e-3 at batch 2048, scaled linearly (per 256 here)
    min_lr=1e-5, weight_decay=0.05, weight_decay_end=0.05, adam_betas=(0.9, 0.98),
    drop_path=0.1, clip_grad=3.0, optimizer="adamw", n_local=0)


def masked_step(views, step, model, optimizer, sched, cfg, proc, model_forward=None) -> dict:
    """One step of a masked image model on the first global crop of each image: draw the masks
    for the global batch, the model's objective, an AdamW step. ``model_forward`` is its DDP
    wrapper when several processes train, else the model itself. With ``cfg.accumulate = N > 1``,
    N micro-batches' forward and backward passes, each loss weighed by the micro-batch's share of
    what the step's loss averages over (``model.loss_units``: BEiT's masked patches)."""
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
    clip_gradients(model, cfg)
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


class MaskedMethod(Method):
    """A masked image model: :meth:`model` builds its module around a backbone and a tokenizer."""
    defaults = BEIT_RECIPE
    needs_tokenizer = True
    trains_cls_attention = False      # the losses read the patch tokens only

    @staticmethod
    def validate(cfg):
        if not cfg.arch.startswith("vit"):
            raise ValueError(f"{cfg.method} is a masked image model and needs a ViT, got arch={cfg.arch!r}")
        if cfg.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {cfg.tokenizer!r}")
        if cfg.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {cfg.vocab_size}")
        if not 0 < cfg.beit_mask_ratio < 1:
            raise ValueError(f"beit_mask_ratio must be in (0, 1), got {cfg.beit_mask_ratio}")
        if cfg.tokenizer_images < 1:
            raise ValueError(f"tokenizer_images must be >= 1, got {cfg.tokenizer_images}")
        if cfg.split not in ("block", "uniform"):
            raise ValueError(f"split must be 'block' or 'uniform', got {cfg.split!r}")
        if cfg.decoder_depth < 1 or cfg.infonce_temp <= 0:
            raise ValueError("decoder_depth must be >= 1 and infonce_temp > 0, got "
                             f"{cfg.decoder_depth} and {cfg.infonce_temp}")

    @classmethod
    def networks(cls, cfg, fused_attention, tokenizer=None):
        grid = (cfg.global_size // cfg.patch_size,) * 2
        model = cls.model(cfg, backbone_for(cfg, fused_attention), tokenizer, grid, fused_attention)
        return model, model

    @staticmethod
    def model(cfg, backbone, tokenizer, grid, fused_attention) -> torch.nn.Module:
        raise NotImplementedError

    @staticmethod
    def step(views, step, student, teacher, loss_fn, optimizer, sched, cfg, proc,
             student_forward=None):
        return masked_step(views, step, student, optimizer, sched, cfg, proc, student_forward)

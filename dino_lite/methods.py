"""The training methods behind one loop: DINO and two masked image models.

``cfg.method`` picks one. The trainer (:mod:`dino_lite.train`) owns everything that does not
depend on the method: data and views, the optimiser and its schedules, the time budget, logging,
checkpoints, exact resume, the stop on a non-finite loss and torchrun. A method supplies the
networks and one step's objective:

- ``dino`` (:func:`dino_lite.train.dino_step`): student and EMA teacher over
  multi-crop views, the paper's Algorithm 1; its loss state (the centers) lives in ``loss_fn``.
- ``beit`` (:class:`dino_lite.beit.BEiT`) and ``splitmask`` (:class:`dino_lite.splitmask.SplitMask`):
  one ``nn.Module`` holding every trained part and the tokenizer (a buffer, so it is saved),
  with this interface:

  * ``draw_masks(generator, global_batch)`` -> tuple of ``[global_batch, patches]`` bool masks,
    drawn from a seeded generator for the whole global batch (each process takes its rows, so
    1 and N processes see the same masks);
  * ``forward(images, *masks)`` -> ``(loss, stats)``: the objective on this process's images
    (the first global crop of each), ``stats`` a dict of floats for the log;
  * ``encoder()`` -> the backbone, also reachable as ``.backbone``;
  * ``loss_units(*masks)`` -> what the loss is a mean over, counted in ``masks`` (BEiT: the
    masked patches), for gradient accumulation (``accumulate > 1``) to weigh its micro-batches;
    SplitMask has none: its InfoNCE needs the whole batch, so it does not accumulate.

  The trainer keeps the module as both ``student`` and ``teacher``, so a checkpoint's
  ``teacher`` entry holds ``backbone.*`` weights, which ``knn``, ``linear``, ``finetune`` and
  ``attention`` load as for DINO. There is no EMA and no loss state.
"""

from __future__ import annotations

import torch

from .beit import BEiT
from .config import METHODS
from .data import build_dataset, eval_transform
from .models import backbone_for
from .splitmask import SplitMask
from .tokenizers import build_tokenizer


def build_tokenizer_for(cfg):
    """The config's tokenizer; data-driven kinds read ``cfg.tokenizer_images`` of the images the
    run pre-trains on (with ``cfg.data_fraction < 1``, the same seeded subset as the trainer)."""
    dataset = None
    if cfg.tokenizer != "random_projection":
        from .train import subset_indices       # train imports this module
        dataset = build_dataset(cfg.data, train=True, transform=eval_transform(cfg.global_size),
                                image_size=cfg.image_size)
        if cfg.data_fraction < 1:
            dataset = torch.utils.data.Subset(
                dataset, subset_indices(len(dataset), cfg.data_fraction, cfg.seed))
    return build_tokenizer(cfg.tokenizer, vocab_size=cfg.vocab_size, patch_size=cfg.patch_size,
                           seed=cfg.seed, dataset=dataset, n_images=cfg.tokenizer_images)


def build_method(cfg, fused_attention: bool = True) -> torch.nn.Module:
    """The masked image model of ``cfg.method`` (``beit`` or ``splitmask``), freshly initialised."""
    if cfg.method not in METHODS or cfg.method == "dino":
        raise ValueError(f"build_method builds the masked image models {METHODS[1:]}, got "
                         f"{cfg.method!r} (DINO's networks come from models.build_student_teacher)")
    backbone = backbone_for(cfg, fused_attention)
    grid = (cfg.global_size // cfg.patch_size,) * 2
    tokenizer = build_tokenizer_for(cfg)
    if cfg.method == "beit":
        return BEiT(backbone, tokenizer, grid, mask_ratio=cfg.beit_mask_ratio)
    return SplitMask(backbone, tokenizer, grid, split=cfg.split, decoder_depth=cfg.decoder_depth,
                     temperature=cfg.infonce_temp, fused_attention=fused_attention)

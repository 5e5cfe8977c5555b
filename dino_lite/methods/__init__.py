"""The training methods behind one loop, by name: ``cfg.method`` picks one of :data:`REGISTRY`.

Each implements :class:`~dino_lite.methods.base.Method` in a module of its own:

- ``dino`` (:mod:`.dino`): a student and its EMA teacher over multi-crop views, the paper's
  Algorithm 1 (:func:`~dino_lite.methods.dino.dino_step`), with iBOT's and KoLeo's terms;
- ``beit`` (:mod:`.beit`) and ``splitmask`` (:mod:`.splitmask`): masked image models, one
  network each around a patch tokenizer (their shared step: :mod:`.masked`);
- ``mae`` (:mod:`.mae`): a masked autoencoder, the encoder on the visible patches only and a
  light decoder reconstructing the hidden patches' pixels (the masked models' step, no tokenizer).

The loop (:mod:`dino_lite.train`) owns all that does not depend on the method: data, optimiser,
schedules, precision, the time budget, logging, checkpoints, exact resume, torchrun.
"""

from __future__ import annotations

import torch

from ..data import Transformed, build_dataset, eval_transform, subset_indices
from ..tokenizers import build_tokenizer
from .base import Method
from .beit import BEiTMethod
from .dino import DINOMethod
from .mae import MAEMethod
from .splitmask import SplitMaskMethod

REGISTRY: dict[str, type[Method]] = {"dino": DINOMethod, "beit": BEiTMethod,
                                     "splitmask": SplitMaskMethod, "mae": MAEMethod}


def get_method(name: str) -> type[Method]:
    """The method registered as ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"method must be one of {tuple(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def run_folder(cfg) -> str:
    """A training run's default folder: ``runs/PRESET``, and ``-METHOD`` for a method other than
    DINO."""
    return f"runs/{cfg.name}" + ("" if cfg.method == "dino" else f"-{cfg.method}")


def build_tokenizer_for(cfg, images=None):
    """The config's tokenizer; data-driven kinds read ``cfg.tokenizer_images`` of the images the
    run pre-trains on: ``images``, the run's training images (the trainer's, already reduced to
    ``cfg.data_fraction``), else those built here the same way."""
    dataset = None
    if cfg.tokenizer != "random_projection":
        if images is None:
            dataset = build_dataset(cfg.data, train=True, transform=eval_transform(cfg.global_size),
                                    image_size=cfg.image_size)
            if cfg.data_fraction < 1:
                dataset = torch.utils.data.Subset(
                    dataset, subset_indices(len(dataset), cfg.data_fraction, cfg.seed))
        else:
            dataset = Transformed(images, eval_transform(cfg.global_size))
    return build_tokenizer(cfg.tokenizer, vocab_size=cfg.vocab_size, patch_size=cfg.patch_size,
                           seed=cfg.seed, dataset=dataset, n_images=cfg.tokenizer_images)


def build_networks(cfg, fused_attention: bool = True, images=None):
    """``(student, teacher)`` of ``cfg.method``, freshly initialised; a tokenizer (fitted on
    ``images``, see :func:`build_tokenizer_for`) only for a method that needs one."""
    method = get_method(cfg.method)
    tokenizer = build_tokenizer_for(cfg, images) if method.needs_tokenizer else None
    return method.networks(cfg, fused_attention, tokenizer)


def build_method(cfg, fused_attention: bool = True) -> torch.nn.Module:
    """The trained network of ``cfg.method``: DINO's student, a masked image model's module."""
    return build_networks(cfg, fused_attention)[0]


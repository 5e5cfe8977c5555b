"""MAE (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"): hide most of the
patches, encode only the visible ones, and reconstruct the pixels of the hidden ones.

One step, on one crop per image:

1. 75% of the patches of each image are hidden, uniformly at random (the same number in every
   image, so the visible ones form a rectangular batch);
2. the encoder (``.backbone``, the ViT evaluation uses) runs on the *visible* patches only, each
   with its position embedding: a quarter of the tokens, so the step is cheap, and the encoder
   never sees a placeholder for what is missing;
3. a light decoder gets the encoded tokens back in their places, one learned mask token at every
   hidden place, a position embedding of its own, and a few transformer blocks;
4. a linear layer predicts each patch's pixels, and the loss is the mean squared error at the
   hidden patches only, against each patch's pixels normalised by their own mean and variance
   (MAE's ``norm_pix_loss``, which the paper found to give better features).

No tokenizer and no teacher: the target is the image itself. The decoder is thrown away after
pre-training; only the encoder is evaluated and fine-tuned.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ..models import backbone_for, vit_visible_tokens
from .base import Method
from .masked import masked_step

MASK_RATIO = 0.75          # the paper's share of hidden patches

# MAE's optimisation (the paper's Table 8): AdamW, base lr 1.5e-4 per 256 images, betas
# (0.9, 0.95), weight decay 0.05; no drop path and no gradient clipping in pre-training.
MAE_RECIPE = dict(lr=1.5e-4, min_lr=0.0, weight_decay=0.05, weight_decay_end=0.05,
                  adam_betas=(0.9, 0.95), drop_path=0.0, clip_grad=0.0, optimizer="adamw",
                  n_local=0)


def random_masks(generator: torch.Generator, batch: int, patches: int, ratio: float) -> torch.Tensor:
    """``[batch, patches]`` bool, True where hidden: ``round(ratio x patches)`` patches per image,
    chosen uniformly (the ranks of uniform noise)."""
    hidden = round(ratio * patches)
    ranks = torch.rand(batch, patches, generator=generator).argsort(1).argsort(1)
    return ranks < hidden


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, patches, patch * patch * 3]``, patches in row-major order (the
    order of the ViT's patch tokens)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def normalised_pixels(images: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """The reconstruction targets: each patch's pixels minus their mean, over their standard
    deviation (the unbiased variance, as MAE's reference computes it)."""
    x = patchify(images, patch)
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + eps).sqrt()


class MAE(nn.Module):
    """Encoder (``.backbone``, a timm ViT) + light decoder + pixel head; see the module doc."""

    def __init__(self, backbone, grid: tuple[int, int], patch: int, mask_ratio: float = MASK_RATIO,
                 decoder_depth: int = 2, fused_attention: bool = True):
        super().__init__()
        patches = grid[0] * grid[1]
        if not 1 <= round(mask_ratio * patches) < patches:
            raise ValueError(f"mask ratio {mask_ratio} of a {grid[0]} x {grid[1]} grid hides "
                             f"{round(mask_ratio * patches)} patches: MAE needs at least one "
                             f"hidden and one visible")
        width, heads = backbone.embed_dim, backbone.blocks[0].attn.num_heads
        self.backbone, self.grid, self.patch, self.mask_ratio = backbone, grid, patch, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, patches, width))   # learned (the paper: fixed sin-cos)
        self.decoder = nn.Sequential(*[Block(width, heads, qkv_bias=True) for _ in range(decoder_depth)])
        for blk in self.decoder:
            blk.attn.fused_attn = fused_attention
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, patch * patch * 3)
        for p in (self.mask_token, self.decoder_pos, self.head.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.head.bias)

    def encoder(self):
        return self.backbone

    def draw_masks(self, generator: torch.Generator, batch: int) -> tuple[torch.Tensor]:
        """The hidden patches of a (global) batch: ``([batch, patches] bool,)``."""
        return (random_masks(generator, batch, self.grid[0] * self.grid[1], self.mask_ratio),)

    def loss_units(self, mask) -> int:
        """What the loss is a mean over: the hidden patches."""
        return int(mask.sum())

    def predict(self, images, mask):
        """The predicted pixels of every patch, ``[b, patches, patch * patch * 3]``."""
        b, n = mask.shape
        keep = (~mask).nonzero()[:, 1].view(b, -1)        # each row's visible patches, in order
        encoded = vit_visible_tokens(self.backbone, images, keep)[:, self.backbone.num_prefix_tokens:]
        x = self.mask_token.to(encoded.dtype).expand(b, n, -1)
        x = x.scatter(1, keep.unsqueeze(-1).expand_as(encoded), encoded)   # back in their places
        return self.head(self.decoder_norm(self.decoder(x + self.decoder_pos)))

    def forward(self, images, mask):
        """``(loss, stats)`` for normalised ``images`` ``[b, 3, H, W]`` and ``mask`` ``[b, patches]``:
        the mean over the hidden patches of the squared error per pixel."""
        error = (self.predict(images, mask).float() - normalised_pixels(images.float(), self.patch)) ** 2
        loss = error.mean(-1)[mask].mean()
        return loss, {"masked_share": mask.float().mean().item()}


class MAEMethod(Method):
    defaults = MAE_RECIPE
    trains_cls_attention = False      # the decoder reads the patch tokens only

    @staticmethod
    def validate(cfg):
        if not cfg.arch.startswith("vit"):
            raise ValueError(f"mae is a masked image model and needs a ViT, got arch={cfg.arch!r}")
        if cfg.decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {cfg.decoder_depth}")

    @staticmethod
    def networks(cfg, fused_attention, tokenizer=None):
        grid = (cfg.global_size // cfg.patch_size,) * 2
        model = MAE(backbone_for(cfg, fused_attention), grid, cfg.patch_size,
                    decoder_depth=cfg.decoder_depth, fused_attention=fused_attention)
        return model, model

    @staticmethod
    def step(views, step, student, teacher, loss_fn, optimizer, sched, cfg, proc,
             student_forward=None):
        return masked_step(views, step, student, optimizer, sched, cfg, proc, student_forward)

"""BEiT (Bao et al. 2021): predict the discrete tokens of masked patches from their context.

One step, on one crop per image:

1. the tokenizer turns every patch into a token id (the targets; no gradient);
2. about 40% of the patches, in random blocks (:func:`masking.block_masks`), are hidden: inside
   the encoder their patch embeddings are replaced by one learned mask token, before the position
   embedding is added, so the network knows *where* a patch is missing but not what it shows;
3. a linear head over the vocabulary reads the encoder's output at each hidden patch;
4. the loss is the cross-entropy between those logits and the hidden patches' tokens.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..masking import block_masks
from ..models import vit_tokens
from .masked import MaskedMethod


class BEiT(nn.Module):
    """Encoder (``.backbone``, a timm ViT) + mask token + linear head over V; see the module doc."""

    def __init__(self, backbone, tokenizer, grid: tuple[int, int], mask_ratio: float = 0.4):
        super().__init__()
        patches = grid[0] * grid[1]
        if round(mask_ratio * patches) < 1:
            raise ValueError(f"mask ratio {mask_ratio} masks no patch of the {grid[0]} x {grid[1]} "
                             f"grid (round({mask_ratio} x {patches}) = 0): the loss would be 0 at "
                             f"every step; use more than {0.5 / patches:.3g}")
        width = backbone.embed_dim
        self.backbone, self.tokenizer, self.grid, self.mask_ratio = backbone, tokenizer, grid, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.head = nn.Linear(width, tokenizer.vocab_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def encoder(self):
        return self.backbone

    def draw_masks(self, generator: torch.Generator, batch: int) -> tuple[torch.Tensor]:
        """The hidden patches of a (global) batch: ``([batch, patches] bool,)``."""
        return (block_masks(generator, batch, self.grid, self.mask_ratio),)

    def loss_units(self, mask) -> int:
        """What the loss is a mean over: the masked patches (gradient accumulation weighs each
        micro-batch's loss by its share of them)."""
        return int(mask.sum())

    def forward(self, images, mask):
        """``(loss, stats)`` for normalised ``images`` ``[b, 3, H, W]`` and ``mask`` ``[b, patches]``."""
        targets = self.tokenizer(images)[mask]                        # [n masked]
        tokens = vit_tokens(self.backbone, images, mask, self.mask_token)
        logits = self.head(tokens[:, self.backbone.num_prefix_tokens:][mask]).float()
        # the mean over the masked patches of the *global* batch (block masks hide a varying
        # number per image): this process's sum over the global count, times the number of
        # processes because DDP averages their gradients; 0 (not NaN) if nothing was masked
        count, world = torch.tensor(float(len(targets)), device=logits.device), 1
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            dist.all_reduce(count)
        loss = F.cross_entropy(logits, targets, reduction="sum") * world / count.clamp(min=1)
        accuracy = (logits.argmax(-1) == targets).float().mean().item() if len(targets) else 0.0
        return loss, {"mim_accuracy": accuracy, "masked_share": mask.float().mean().item()}


class BEiTMethod(MaskedMethod):
    @staticmethod
    def validate(cfg):
        MaskedMethod.validate(cfg)
        side = cfg.global_size // cfg.patch_size    # BEiT masks round(ratio x patches): 0 trains nothing
        if round(cfg.beit_mask_ratio * side * side) < 1:
            raise ValueError(
                f"beit_mask_ratio={cfg.beit_mask_ratio} masks no patch of the {side} x {side} "
                f"grid of a {cfg.global_size} px crop (round({cfg.beit_mask_ratio} x "
                f"{side * side}) = 0), so the loss would be 0 at every step; use more than "
                f"{0.5 / (side * side):.3g}")

    @staticmethod
    def model(cfg, backbone, tokenizer, grid, fused_attention):
        return BEiT(backbone, tokenizer, grid, mask_ratio=cfg.beit_mask_ratio)

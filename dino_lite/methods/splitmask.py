"""SplitMask (El-Nouby et al. 2021): two halves of an image, each predicting the other.

One step, on one crop per image:

1. the tokenizer turns every patch into a token id (the targets; no gradient);
2. the patches are split into two disjoint sets A and B (:func:`masking.split_masks`: a 50% block
   mask and its complement; or, the paper's small-data variant, two uniform quarters);
3. for each branch, the shared ViT encoder sees *only* that branch's patch tokens, each with its
   own position embedding and no mask tokens (so it costs half a BEiT forward);
4. a shallow decoder (2 transformer blocks at the encoder's width) receives the encoded tokens at
   their positions plus a learned mask token at every other position, adds its own position
   embedding, and a linear head predicts the tokens of the patches the branch did not see
   (cross-entropy);
5. each branch's decoder outputs are average-pooled into one vector per image; the two vectors
   of one image are a positive pair for InfoNCE (temperature 0.2), the other images of the
   global batch (gathered from every process, gradients kept) the negatives;
6. the loss is the sum: CE(A -> B) + CE(B -> A) + InfoNCE.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..masking import split_masks
from ..models import vit_visible_tokens
from .masked import MaskedMethod


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every process concatenated in rank order; gradients flow back to each process's
    own rows (``torch.distributed.nn.all_gather``). The identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``a`` and ``b`` (``[local batch, D]``): row i of ``a``
    must pick row i of ``b`` among all rows of ``b`` in the global batch by cosine similarity /
    temperature, and vice versa; the mean of both cross-entropies."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(len(a), device=a.device) + rank * len(a)
    return (F.cross_entropy(a @ all_b.T / temperature, labels)
            + F.cross_entropy(b @ all_a.T / temperature, labels)) / 2


class SplitMask(nn.Module):
    """Encoder (``.backbone``, a timm ViT) + shallow decoder + linear head over V; see the module doc."""

    def __init__(self, backbone, tokenizer, grid: tuple[int, int], split: str = "block",
                 decoder_depth: int = 2, temperature: float = 0.2, fused_attention: bool = True):
        super().__init__()
        width, heads = backbone.embed_dim, backbone.blocks[0].attn.num_heads
        self.backbone, self.tokenizer, self.grid = backbone, tokenizer, grid
        self.split, self.temperature = split, temperature
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], width))
        self.decoder = nn.Sequential(*[Block(width, heads, qkv_bias=True) for _ in range(decoder_depth)])
        for blk in self.decoder:
            blk.attn.fused_attn = fused_attention
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, tokenizer.vocab_size)
        for p in (self.mask_token, self.decoder_pos, self.head.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.head.bias)

    def encoder(self):
        return self.backbone

    def draw_masks(self, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches each branch sees in a (global) batch: ``(visible_a, visible_b)``."""
        return split_masks(generator, batch, self.grid, self.split)

    def branch(self, images, visible, targets):
        """One direction: encode the ``visible`` patches, decode the full grid, predict the tokens
        of the patches not visible. Returns (cross-entropy, pooled decoder output ``[b, D]``)."""
        b, n = visible.shape
        keep = visible.nonzero()[:, 1].view(b, -1)            # each row's visible patch indices
        encoded = vit_visible_tokens(self.backbone, images, keep)[:, self.backbone.num_prefix_tokens:]
        x = self.mask_token.to(encoded.dtype).expand(b, n, -1)
        x = x.scatter(1, keep.unsqueeze(-1).expand_as(encoded), encoded)
        x = self.decoder_norm(self.decoder(x + self.decoder_pos))
        hidden = ~visible
        logits = self.head(x[hidden]).float()
        return F.cross_entropy(logits, targets[hidden]), x.float().mean(1)

    def forward(self, images, visible_a, visible_b):
        """``(loss, stats)`` for normalised ``images`` and the two branches' visible patches."""
        targets = self.tokenizer(images)
        ce_a, pooled_a = self.branch(images, visible_a, targets)
        ce_b, pooled_b = self.branch(images, visible_b, targets)
        contrast = info_nce(pooled_a, pooled_b, self.temperature)
        return ce_a + ce_b + contrast, {"mim_loss": (ce_a + ce_b).item() / 2, "infonce": contrast.item()}


class SplitMaskMethod(MaskedMethod):
    @staticmethod
    def validate(cfg):
        MaskedMethod.validate(cfg)
        if cfg.accumulate > 1:
            raise ValueError(f"accumulate={cfg.accumulate} with SplitMask: its InfoNCE contrasts "
                             f"each image with the rest of the batch, which micro-batches would "
                             f"shrink; use accumulate=1")

    @staticmethod
    def model(cfg, backbone, tokenizer, grid, fused_attention):
        return SplitMask(backbone, tokenizer, grid, split=cfg.split, decoder_depth=cfg.decoder_depth,
                         temperature=cfg.infonce_temp, fused_attention=fused_attention)

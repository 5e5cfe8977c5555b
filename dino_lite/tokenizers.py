"""Patch tokenizers: the discrete targets BEiT and SplitMask predict.

A tokenizer is a vocabulary of V unit vectors e_i (the codebook), each of the size of one
flattened patch (3 x p x p). A patch x of a normalised image, L2-normalised, gets the token
t = argmax_i x^T e_i: the codeword it points closest to. El-Nouby et al. 2021 find that how the
codebook is made hardly matters for fine-tuning (iNat-19: 75.2 / 75.2 / 75.3 / 75.0 for random
projection, random patches, k-means, DALL-E's dVAE); three of those are here:

- ``random_projection`` (the paper's default): V random Gaussian vectors;
- ``random_patches``: V patches sampled from training images;
- ``kmeans``: V centroids of training patches (spherical k-means: cosine assignment, the same
  rule as the argmax above).

The codebook is a buffer, so it travels in the model's ``state_dict`` and hence the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import IMAGENET_MEAN, IMAGENET_STD

KINDS = ("random_projection", "random_patches", "kmeans")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[batch, 3, H, W]`` -> ``[batch, patches, 3 * p * p]``, patches in row-major order (the
    order of a ViT's tokens), each flattened channel-major."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[batch, patches, 3 * p * p]`` -> ``[batch, 3, H, W]``."""
    b, p, (gh, gw) = patches.shape[0], patch_size, grid
    x = patches.reshape(b, gh, gw, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, gh * p, gw * p)


class Tokenizer(nn.Module):
    """Maps the patches of normalised images to token ids with a fixed codebook ``[V, 3 p p]``."""

    def __init__(self, vocab_size: int, patch_size: int, kind: str = "random_projection"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"tokenizer must be one of {KINDS}, got {kind!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.vocab_size, self.patch_size, self.kind = vocab_size, patch_size, kind
        self.register_buffer("codebook", torch.zeros(vocab_size, 3 * patch_size ** 2))

    @torch.no_grad()
    def fit(self, generator: torch.Generator, patches: torch.Tensor | None = None,
            kmeans_iters: int = 10) -> "Tokenizer":
        """Fill the codebook, deterministically given ``generator``. ``patches``
        (``[n, 3 p p]``, from training images) are needed for ``random_patches`` and ``kmeans``."""
        v, d = self.codebook.shape
        if self.kind == "random_projection":
            book = torch.randn(v, d, generator=generator)
        else:
            if patches is None or len(patches) < v:
                raise ValueError(f"the {self.kind} tokenizer needs at least vocab_size={v} training "
                                 f"patches, got {0 if patches is None else len(patches)}")
            patches = F.normalize(patches.float(), dim=-1)
            book = patches[torch.randperm(len(patches), generator=generator)[:v]].clone()
            if self.kind == "kmeans":
                book = spherical_kmeans(patches, book, kmeans_iters)
        self.codebook.copy_(F.normalize(book, dim=-1))
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids ``[batch, patches]`` (long) of normalised images ``[batch, 3, H, W]``."""
        with torch.autocast(images.device.type, enabled=False):   # bf16 would flip near-ties
            x = F.normalize(patchify(images.float(), self.patch_size), dim=-1)
            return (x @ self.codebook.T).argmax(-1)

    def extra_repr(self):
        return f"kind={self.kind}, vocab_size={self.vocab_size}, patch_size={self.patch_size}"


def spherical_kmeans(x: torch.Tensor, centroids: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Lloyd's iterations with cosine assignment on unit vectors ``x``; a centroid left without
    points keeps its position."""
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(-1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=len(centroids)).unsqueeze(1)
        centroids = torch.where(counts > 0, F.normalize(sums, dim=-1), centroids)
    return centroids


def sample_patches(dataset, patch_size: int, n_images: int, generator: torch.Generator) -> torch.Tensor:
    """Every patch of ``n_images`` images drawn from ``dataset`` (items ``(image, label)``, images
    normalised tensors), ``[n_images x patches, 3 p p]``."""
    idx = torch.randperm(len(dataset), generator=generator)[:n_images].tolist()
    images = torch.stack([dataset[i][0] for i in idx])
    return patchify(images, patch_size).flatten(0, 1)


def build_tokenizer(kind: str, vocab_size: int, patch_size: int, seed: int,
                    dataset=None, n_images: int = 512) -> Tokenizer:
    """A fitted tokenizer; the data-driven kinds read patches of ``n_images`` images of ``dataset``."""
    g = torch.Generator().manual_seed(seed)
    patches = None
    if kind != "random_projection":
        if dataset is None:
            raise ValueError(f"the {kind} tokenizer needs training images")
        patches = sample_patches(dataset, patch_size, min(n_images, len(dataset)), g)
    return Tokenizer(vocab_size, patch_size, kind).fit(g, patches)


# -- pictures ------------------------------------------------------------------------------
def _to_rgb(x: torch.Tensor) -> np.ndarray:
    """Normalised ``[3, H, W]`` -> an ``[H, W, 3]`` float array in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def codebook_image(tokenizer: Tokenizer, n: int = 64, cols: int = 8, gap: int = 1) -> np.ndarray:
    """The first ``n`` codewords as small RGB tiles in a grid, ``[H, W, 3]`` in [0, 1]. A unit
    codeword has no scale of its own; each tile is stretched to its own range."""
    p = tokenizer.patch_size
    words = tokenizer.codebook[:n].float().cpu().reshape(-1, 3, p, p)
    rows = -(-len(words) // cols)
    out = np.ones((rows * (p + gap) - gap, cols * (p + gap) - gap, 3))
    for i, w in enumerate(words):
        lo, hi = w.min(), w.max()
        tile = ((w - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).numpy()
        r, c = divmod(i, cols)
        out[r * (p + gap):r * (p + gap) + p, c * (p + gap):c * (p + gap) + p] = tile
    return out


def redraw(tokenizer: Tokenizer, image: torch.Tensor) -> np.ndarray:
    """``image`` (normalised ``[3, H, W]``) drawn back from its tokens: each patch replaced by its
    token's codeword, scaled to the patch's norm, ``[H, W, 3]`` in [0, 1]. What survives is what
    the targets of BEiT and SplitMask carry about the image."""
    p = tokenizer.patch_size
    x = patchify(image.unsqueeze(0).float().cpu(), p)[0]
    words = tokenizer.codebook.float().cpu()[tokenizer(image.unsqueeze(0).cpu())[0]]
    drawn = words * x.norm(dim=-1, keepdim=True)
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    return _to_rgb(unpatchify(drawn.unsqueeze(0), p, grid)[0])


def codebook_figure(tokenizer: Tokenizer, image: torch.Tensor | None = None):
    """A matplotlib figure: the codebook, and with ``image`` the image beside its redrawing."""
    import matplotlib.pyplot as plt
    panels = 1 if image is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    axes = axes[0]
    axes[0].imshow(codebook_image(tokenizer))
    axes[0].set_title(f"{tokenizer.kind} codebook")
    if image is not None:
        axes[1].imshow(_to_rgb(image))
        axes[1].set_title("image")
        axes[2].imshow(redraw(tokenizer, image))
        axes[2].set_title("redrawn from its tokens")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig

"""A PCA view of patch features: the first three principal components of the last block's patch
tokens, shown as the red, green and blue of each patch (the figure of the DINOv2 paper).

Attention maps show where the CLS token looks; this view shows what the patches themselves
encode. The patch tokens of ALL given images are stacked into one matrix (one row per patch) and
one PCA is fitted to it, so a colour means the same direction of feature space in every image:
patches with similar features get similar colours, across images too (the legs of two different
animals come out the same colour when the network has learnt "leg").

Optionally, as in DINOv2, the first component separates object from background: patches on the
background side are blacked out and a second PCA, fitted on the object's patches only, colours
the object's parts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOW, HIGH = 0.01, 0.99          # each component's colour scale spans these quantiles of its values


@torch.no_grad()
def patch_tokens(vit, images, batch_size: int = 64) -> torch.Tensor:
    """The last block's patch tokens after the final norm, as ``[B, h, w, D]`` (float32).

    ``images`` is a ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` tensors of one size; the
    CLS token and any register tokens (``vit.num_prefix_tokens`` of them) are dropped.
    """
    if not hasattr(vit, "forward_features") or not hasattr(vit, "patch_embed"):
        raise ValueError("the PCA view needs a ViT backbone: a ResNet has no patch tokens "
                         "(use a vit_* architecture)")
    sizes = sorted({tuple(x.shape[-2:]) for x in images})
    if len(sizes) > 1:
        raise ValueError(f"the PCA view fits one PCA over all images' patches and needs images of "
                         f"one size; got {', '.join(f'{h}x{w}' for h, w in sizes)} px: resize them first")
    p = vit.patch_embed.patch_size[0]
    (H, W), = sizes
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} px is not a multiple of the patch size {p}")
    x = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
    vit.eval()
    device = next(vit.parameters()).device
    prefix = getattr(vit, "num_prefix_tokens", 1)        # CLS + register tokens
    tokens = [vit.forward_features(x[i:i + batch_size].to(device))[:, prefix:].float().cpu()
              for i in range(0, len(x), batch_size)]
    return torch.cat(tokens).reshape(len(x), H // p, W // p, -1)


def fit_pca(features: torch.Tensor, k: int = 3):
    """PCA of the rows of ``features`` ``[N, D]``: ``(coords [N, k], explained [k])``.

    The rows are centred and the top ``k`` right singular vectors of the centred matrix are the
    principal directions; ``coords`` are the rows projected on them and ``explained`` each
    component's share of the total variance. A component's sign is arbitrary (v and -v span the
    same line), so it is fixed by a rule: the coordinate largest in absolute value is positive.
    """
    X = features.double()
    X = X - X.mean(0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    coords = U[:, :k] * S[:k]                          # = X @ V[:, :k]
    flip = torch.sign(coords.gather(0, coords.abs().argmax(0, keepdim=True)))
    explained = S[:k] ** 2 / (S ** 2).sum().clamp_min(1e-30)
    return (coords * flip).float(), explained.float()


def to_unit(coords: torch.Tensor) -> torch.Tensor:
    """Map each column to [0, 1] between its 1st and 99th percentile (clipped outside): robust to
    the few patches with extreme values that a min-max scale would let squash all the others."""
    lo = torch.quantile(coords, LOW, dim=0)
    hi = torch.quantile(coords, HIGH, dim=0)
    return ((coords - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def pca_rgb(vit, images, foreground: bool = False) -> dict:
    """The PCA view of ``images``: one PCA over the patches of all images, three components as RGB.

    Returns ``rgb`` (``[B, h, w, 3]`` in 0..1; colours are per-component percentile-scaled, see
    :func:`to_unit`), ``explained`` (the three components' shares of the variance) and
    ``foreground`` (``[B, h, w]`` bool, all True without the foreground step).

    ``foreground=True`` keeps the patches on one side of the first component's mean (its value
    0 after centring) as the object: the side holding FEWER patches (objects usually fill less
    than half of a photo; the component's sign itself says nothing). Background patches are black,
    and the colours come from a second PCA fitted on the object's patches only.
    """
    feats = patch_tokens(vit, images)
    b, h, w, d = feats.shape
    flat = feats.reshape(-1, d)
    coords, explained = fit_pca(flat, 3)
    keep = torch.ones(len(flat), dtype=torch.bool)
    if foreground:
        keep = coords[:, 0] > 0
        if keep.sum() > len(keep) / 2:                 # the smaller side is the object
            keep = ~keep
        if keep.sum() < 3:
            raise ValueError("the foreground step kept fewer than 3 patches; drop it")
        coords, explained = fit_pca(flat[keep], 3)
    rgb = torch.zeros(len(flat), 3)
    rgb[keep] = to_unit(coords)
    return {"rgb": rgb.reshape(b, h, w, 3), "explained": explained.tolist(),
            "foreground": keep.reshape(b, h, w)}


def upsample_rgb(rgb: torch.Tensor, size) -> np.ndarray:
    """``[h, w, 3]`` patch colours to an ``[H, W, 3]`` image, each patch a flat square (nearest)."""
    up = F.interpolate(rgb.permute(2, 0, 1)[None], size=tuple(size), mode="nearest")
    return up[0].permute(1, 2, 0).numpy()


CAPTION = ("colours: the first three principal components of the last block's patch features as "
           "red, green, blue, from one PCA over the patches of all {n} images; similar colours = "
           "similar features, across images too")


def pca_figure(images: torch.Tensor, result: dict, names=None, max_images: int = 8, title=None):
    """Images in the top row, their PCA colours (:func:`pca_rgb`'s ``result``) below, at image
    size (nearest: one flat colour per patch), with a caption saying what the colours mean."""
    import matplotlib.pyplot as plt
    from .attention import to_rgb
    n = min(len(images), max_images)
    size = images.shape[-2:]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.9), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(to_rgb(images[i]))
        axes[0, i].set_title(names[i] if names else f"image {i}", fontsize=7)
        axes[1, i].imshow(upsample_rgb(result["rgb"][i], size))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    ev = ", ".join(f"{e:.0%}" for e in result["explained"])
    fg = " (object patches only; background black)" if not bool(result["foreground"].all()) else ""
    axes[1, 0].set_ylabel("PCA of patches", fontsize=8)
    fig.suptitle(title or "PCA of the last block's patch features", fontsize=9)
    caption = CAPTION.format(n=len(result["rgb"])) + fg
    fig.text(0.5, 0.02, f"{caption}.\nvariance explained by R, G, B: {ev}", ha="center",
             fontsize=7, wrap=True)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.86, bottom=0.16, wspace=0.05, hspace=0.12)
    return fig

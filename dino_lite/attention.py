"""Self-attention read-out and the paper's attention-mask evaluation.

A ViT's CLS token gathers information from the patches through self-attention; in DINO-trained
ViTs the last block's CLS-to-patch attention of each head segments the object without any label.
Here: maps per head and block, masks keeping the smallest set of patches holding 60% of a map's
mass, and the Jaccard index of those masks against ground-truth object masks.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import eval_transform, load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CMAP = "inferno"                     # the one colour map of every attention figure
GAMMA = 0.5                          # its square-root scale: weak maps stay visible beside sharp heads
MASK_COLOUR = "tab:orange"           # the 60%-mass mask
OUTLINE_COLOUR = "cyan"              # the true object outline


@contextmanager
def _capture_attention(vit):
    """Switch timm's fused attention off and record every block's softmax attention matrix."""
    records, handles, fused = [], [], []
    for blk in vit.blocks:
        fused.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(
            lambda mod, inp, out: records.append(out.detach().float())))
    try:
        yield records
    finally:
        for blk, f in zip(vit.blocks, fused):
            blk.attn.fused_attn = f
        for h in handles:
            h.remove()


@torch.no_grad()
def all_attentions(vit, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention matrices of every block: a list of ``[B, heads, tokens, tokens]`` tensors."""
    if not hasattr(vit, "blocks"):
        raise ValueError("attention maps need a ViT backbone (this one has no transformer blocks)")
    vit.eval()
    with _capture_attention(vit) as records:
        vit(images)
    return list(records)


def cls_attention(attn: torch.Tensor, grid: tuple[int, int], prefix_tokens: int = 1) -> torch.Tensor:
    """CLS query over the patch tokens, as ``[B, heads, h, w]`` maps, from one block's matrix."""
    b, heads = attn.shape[:2]
    return attn[:, :, 0, prefix_tokens:].reshape(b, heads, *grid)


def attention_maps(vit, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Per-head CLS-to-patch attention of block ``layer`` (default: the last), ``[B, heads, h, w]``."""
    attn = all_attentions(vit, images)[layer]
    p = vit.patch_embed.patch_size[0]
    return cls_attention(attn, (images.shape[-2] // p, images.shape[-1] // p),
                         getattr(vit, "num_prefix_tokens", 1))


def mass_mask(maps: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Keep the smallest set of patches that holds ``mass`` of each map's attention.

    ``maps`` is ``[..., h, w]``; returns a boolean mask of the same shape. Patches are taken in
    decreasing attention until their cumulative share reaches ``mass``.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    flat = maps.flatten(-2)
    flat = flat / flat.sum(-1, keepdim=True).clamp_min(1e-12)
    vals, idx = flat.sort(-1, descending=True)
    before = vals.cumsum(-1) - vals                      # share held by strictly larger patches
    keep_sorted = before < mass - 1e-6
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    return keep.view(maps.shape)


def upsample(x: torch.Tensor, size, mode="nearest") -> torch.Tensor:
    """Resize ``[..., h, w]`` maps or masks to ``size`` (h, w)."""
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=size, mode=mode)
    return y.reshape(*lead, *y.shape[-2:])


def jaccard(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Intersection over union of boolean masks over the last two dims (pixels outside ``valid``
    are ignored). An empty union counts as a perfect match."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        pred, target = pred & valid, target & valid
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def centre_prior(grid: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A Gaussian bump at the image centre: the 'objects are in the middle' baseline map."""
    ys = torch.linspace(-0.5, 0.5, grid[0])[:, None]
    xs = torch.linspace(-0.5, 0.5, grid[1])[None, :]
    return torch.exp(-(ys ** 2 + xs ** 2) / (2 * sigma ** 2))


def centre_mask_like(masks: torch.Tensor) -> torch.Tensor:
    """For each ``[..., h, w]`` boolean mask, a mask of as many patches, the ones nearest the
    image centre: the 'objects are in the middle' baseline at the area the map chose."""
    h, w = masks.shape[-2:]
    order = centre_prior((h, w)).flatten().argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(h * w)               # 0 for the most central patch
    counts = masks.flatten(-2).sum(-1, keepdim=True)
    return (rank < counts).view(masks.shape)


def object_mass(maps: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The share of each ``[B, h, w]`` map's attention that lands on the object ``gt`` ([B, H, W]).

    Unlike the Jaccard it does not punish a map for being sharp: a head that puts all its weight
    on two patches of the object scores 1 here but a low Jaccard. Chance is the object's area.
    """
    a = upsample(maps, gt.shape[-2:])             # each pixel carries its patch's weight
    if valid is not None:
        a = a * valid
    return (a * gt).flatten(-2).sum(-1) / a.flatten(-2).sum(-1).clamp_min(1e-12)


def object_head(maps: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> int:
    """The head whose attention lands most on the object: the largest mean :func:`object_mass`
    over these ``[B, heads, h, w]`` maps. Which head that is changes from run to run, so it is
    picked on images *other* than those it is then scored on: picked and scored on the same
    images, the best of several heads looks better than it is (the maximum of noisy means)."""
    shares = torch.stack([object_mass(maps[:, h], gt, valid).mean() for h in range(maps.shape[1])])
    return int(shares.argmax())


def score_maps(maps: torch.Tensor, gt: torch.Tensor, valid=None, mass: float = 0.6) -> dict:
    """Jaccard of 60%-mass masks against ground truth ``gt`` ([B, H, W] bool).

    ``jaccard``: mask from the head-averaged map; ``jaccard_best_head``: the best single head per
    image; ``object_mass``: the head-averaged map's share of attention on the object, against
    ``object_area``, the object's share of the image (what a uniform map scores). All are means
    over images, 0 to 1; ``per_image`` and ``per_image_best_head`` hold the two Jaccards of each
    image (for standard errors and paired differences). ``jaccard_centre_prior`` (and
    ``per_image_centre_prior``) scores, per image, the patches nearest the centre, as many as the
    head-averaged mask holds: what the map's area alone would score on centred objects.

    The best head per image is an oracle: the maximum of several noisy scores flatters it. The
    fair single head is ``jaccard_held_out_head``: the head with the best mean Jaccard on the odd
    images is scored on the even ones and vice versa (``held_out_heads``: the head scored on the
    even images, then on the odd), against ``jaccard_held_out_head_prior``, the centre prior of
    that head's mask area (``None`` for a single image).
    """
    size = gt.shape[-2:]
    patches = mass_mask(maps.mean(1), mass)
    mean_mask = upsample(patches, size).bool()
    head_masks = upsample(mass_mask(maps, mass), size).bool()
    j_mean = jaccard(mean_mask, gt, valid)
    j_prior = jaccard(upsample(centre_mask_like(patches), size).bool(), gt, valid)
    j_heads = jaccard(head_masks, gt[:, None], None if valid is None else valid[:, None])
    area = object_mass(torch.ones_like(maps[:, 0]), gt, valid)
    held = _held_out_head(maps, gt, valid, j_heads, mass, size) if len(maps) > 1 else {
        "jaccard_held_out_head": None, "jaccard_held_out_head_prior": None, "held_out_heads": None}
    return {**held, "jaccard": float(j_mean.mean()), "jaccard_best_head": float(j_heads.max(1).values.mean()),
            "object_mass": float(object_mass(maps.mean(1), gt, valid).mean()),
            "object_area": float(area.mean()), "per_image": j_mean.tolist(),
            "per_image_best_head": j_heads.max(1).values.tolist(),
            "jaccard_centre_prior": float(j_prior.mean()), "per_image_centre_prior": j_prior.tolist()}


def _held_out_head(maps, gt, valid, j_heads, mass, size) -> dict:
    """One head per half of the images, picked on the other half (see :func:`score_maps`)."""
    halves = (torch.arange(0, len(maps), 2), torch.arange(1, len(maps), 2))
    picked = [int(j_heads[other].mean(0).argmax()) for other in halves[::-1]]
    head = torch.empty(len(maps), dtype=torch.long)
    for half, h in zip(halves, picked):
        head[half] = h
    rows = torch.arange(len(maps))
    chosen = j_heads[rows, head]
    own = mass_mask(maps[rows, head], mass)                 # that head's patches, per image
    prior = jaccard(upsample(centre_mask_like(own), size).bool(), gt, valid)
    return {"jaccard_held_out_head": float(chosen.mean()), "jaccard_held_out_head_prior": float(prior.mean()),
            "held_out_heads": picked, "per_image_held_out_head": chosen.tolist(),
            "per_image_held_out_head_prior": prior.tolist()}


def load_mask(path, size: int, trimap: bool = False):
    """A ground-truth mask resized and centre-cropped like its image: (object, valid) bool arrays.

    Binary masks: nonzero is object. Oxford-IIIT Pet trimaps: 1 = pet, 2 = background and
    3 = border, which is left out of the score (``valid`` is False there).
    """
    m = np.asarray(Image.open(path))
    if m.ndim == 3:
        m = m[..., 0]
    t = torch.from_numpy(m.astype(np.int64))[None, None].float()
    h, w = m.shape
    scale = size / min(h, w)
    t = F.interpolate(t, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                      mode="nearest")[0, 0]
    top, left = (t.shape[0] - size) // 2, (t.shape[1] - size) // 2
    t = t[top:top + size, left:left + size].long()
    if trimap:
        return t == 1, t != 3
    return t != 0, torch.ones_like(t, dtype=torch.bool)


def load_image_folder(images_dir, size: int, masks_dir=None, trimap=False, limit=None):
    """Images of a folder, resized and centre-cropped to ``size`` and normalised, with their
    masks (a PNG with the same stem in ``masks_dir``) when given.

    Returns ``(tensor [B,3,S,S], names, masks or None, valid or None)``.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    files = files[:limit] if limit else files
    tf = eval_transform(size)
    x = torch.stack([tf(load_rgb(f)) for f in files])
    if masks_dir is None:
        return x, [f.stem for f in files], None, None
    masks, valid = [], []
    for f in files:
        mp = Path(masks_dir) / f"{f.stem}.png"
        if not mp.exists():
            raise FileNotFoundError(f"no mask {mp} for image {f}")
        m, v = load_mask(mp, size, trimap)
        masks.append(m)
        valid.append(v)
    return x, [f.stem for f in files], torch.stack(masks), torch.stack(valid)


def attention_norm(vmax: float):
    """The colour scale of attention maps: 0 to ``vmax`` on a square-root scale (a sharp head
    reaches 0.5 or more on one patch while a uniform map is 1/64 everywhere; on a linear scale
    the latter would be invisible). The colour bar shows the true values."""
    from matplotlib.colors import PowerNorm
    return PowerNorm(GAMMA, vmin=0.0, vmax=vmax)


def to_rgb(x: torch.Tensor) -> np.ndarray:
    """A normalised ``[3, H, W]`` tensor back to an ``[H, W, 3]`` array in 0..1, for display."""
    from .augment import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay_figure(images: torch.Tensor, maps: torch.Tensor, gt=None, mass: float = 0.6,
                   names=None, max_images: int = 6, random_maps: torch.Tensor | None = None):
    """A matplotlib figure: per image, the photo, the 60%-mass mask of the head-mean map, the
    head-mean map, each head, and (given ``random_maps``) the random-init network's head mean.

    Every map uses one colour map on one scale (:func:`attention_norm`, 0 to the largest patch
    weight shown; maps are the CLS token's attention over the patches, each summing to 1), with
    one colour bar: a head that looks brighter attends harder. ``gt`` ([B, H, W] bool) adds the
    true object outline.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = min(len(images), max_images)
    heads = maps.shape[1]
    size = images.shape[-2:]
    columns = [("image", None), (f"{mass:.0%} mask of the mean", None), ("trained: mean", None)]
    columns += [(f"head {h}", h) for h in range(heads)]
    if random_maps is not None:
        columns.append(("random init: mean", None))
    shown = [maps[:n].amax((1, 2, 3)), maps[:n].mean(1).amax((1, 2))]
    if random_maps is not None:
        shown.append(random_maps[:n].mean(1).amax((1, 2)))
    vmax = float(torch.stack(shown).max())
    fig, axes = plt.subplots(n, len(columns), figsize=(1.45 * len(columns) + 1.2, 1.55 * n + 0.9),
                             squeeze=False)
    for i in range(n):
        img = to_rgb(images[i])
        avg = maps[i].mean(0)
        mask = upsample(mass_mask(avg, mass), size).numpy()
        axes[i, 0].imshow(img)
        axes[i, 1].imshow(img)
        axes[i, 1].imshow(np.ma.masked_where(mask < 0.5, mask), cmap=ListedColormap([MASK_COLOUR]),
                          alpha=0.6)
        panels = [avg] + [maps[i, h] for h in range(heads)]
        if random_maps is not None:
            panels.append(random_maps[i].mean(0))
        for ax, p in zip(axes[i, 2:], panels):
            im = ax.imshow(upsample(p, size).numpy(), cmap=CMAP, norm=attention_norm(vmax))
        for ax in axes[i]:
            if gt is not None:
                ax.contour(gt[i].float().numpy(), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(names[i] if names else f"image {i}", fontsize=7)
    for ax, (title, _) in zip(axes[0], columns):
        ax.set_title(title, fontsize=7)
    grid = maps.shape[-2:]
    fig.subplots_adjust(left=0.04, right=0.86, top=1 - 0.45 / fig.get_figheight(),
                        bottom=0.5 / fig.get_figheight(), wspace=0.05, hspace=0.08)
    cax = fig.add_axes([0.88, 0.5 / fig.get_figheight(), 0.015, 1 - 0.95 / fig.get_figheight()])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(f"share of the CLS attention per patch, square-root scale\n"
                 f"({grid[0]}x{grid[1]} patches, each map sums to 1; uniform = {1 / grid.numel():.3f})",
                 fontsize=7)
    cb.ax.tick_params(labelsize=6)
    handles = [Patch(color=MASK_COLOUR, alpha=0.6, label=f"patches holding {mass:.0%} of the mean map")]
    if gt is not None:
        handles.append(Line2D([], [], color=OUTLINE_COLOUR, label="true object outline"))
    fig.legend(handles=handles, loc="lower left", ncol=2, fontsize=7, frameon=False,
               bbox_to_anchor=(0.03, 0.0))
    return fig


def shapes_attention_set(size: int, n: int, start: int = 0):
    """``n`` embedded test images from index ``start`` (the first ``n`` by default) at ``size``
    px, normalised, with their object masks. A second set (``start=n``) shares no image with
    the first: pick a head on one, score it on the other (:func:`object_head`)."""
    from .augment import normalize
    from .data import DATA_ROOT
    from .shapes import generate
    images, _, masks = generate("test", 64, cache_dir=DATA_ROOT / "cache")
    if not 0 <= start < len(images) or n < 1:
        raise ValueError(f"the embedded test set has {len(images)} images: start {start}, n {n} selects none")
    x = torch.from_numpy(images[start:start + n]).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(masks[start:start + n])[:, None].float()
    if size != 64:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        m = torch.nn.functional.interpolate(m, size=(size, size), mode="area")
    return normalize(x), [f"test_{start + i}" for i in range(len(x))], m[:, 0] > 0.5, None


@torch.no_grad()
def attention_video(vit, files, size: int, path, width: int = 320, duration: int = 100) -> Path:
    """The head-mean CLS attention of the last block over each frame of ``files`` (in the order
    given), as an animated GIF at ``path``: frames resized to short side ``size`` (sides rounded
    to the patch size, aspect kept), each map scaled to its maximum on the figures' square-root
    colour scale and laid over its frame. One frame is held at a time, plus the GIF's
    thumbnails."""
    from matplotlib import colormaps
    from .retrieval import image_tensor
    cmap, p, thumbs = colormaps[CMAP], vit.patch_embed.patch_size[0], []
    for f in files:
        x = image_tensor(f, size, p)
        m = attention_maps(vit, x[None].to(next(vit.parameters()).device)).mean(1).float().cpu()
        m = upsample(m / m.max().clamp_min(1e-12), x.shape[-2:], "bilinear")[0]
        heat = cmap(m.clamp(0, 1).numpy() ** GAMMA)[..., :3]
        frame = np.asarray(load_rgb(f).resize((x.shape[-1], x.shape[-2]), Image.BILINEAR)) / 255
        img = Image.fromarray((255 * (0.45 * frame + 0.55 * heat)).astype(np.uint8))
        w = min(width, img.size[0])
        thumbs.append(img.resize((w, max(1, round(w * img.size[1] / img.size[0])))))
    if not thumbs:
        raise ValueError("attention video: no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbs[0].save(path, save_all=True, append_images=thumbs[1:], duration=duration, loop=0)
    return path


class AttentionCache:
    """CLS attention maps of every block for a fixed set of images, computed once per image.

    Interactive explorers ask for many (image, layer, head) combinations; each image goes
    through the network only the first time it is shown.
    """

    def __init__(self, vit, images: torch.Tensor):
        self.vit, self.images, self._maps = vit, images, {}
        p = vit.patch_embed.patch_size[0]
        self.grid = (images.shape[-2] // p, images.shape[-1] // p)

    def __call__(self, index: int) -> torch.Tensor:
        """``[layers, heads, h, w]`` maps of image ``index``."""
        if index not in self._maps:
            attns = all_attentions(self.vit, self.images[index:index + 1])
            prefix = getattr(self.vit, "num_prefix_tokens", 1)
            self._maps[index] = torch.stack([cls_attention(a, self.grid, prefix)[0] for a in attns])
        return self._maps[index]


def published_dino(name: str = "vit_small_patch16_224.dino"):
    """The paper's released ViT weights through timm (needs internet the first time).

    Raises ``RuntimeError`` with a clear message when the weights cannot be fetched.
    """
    import timm
    try:
        return timm.create_model(name, pretrained=True, num_classes=0).eval()
    except Exception as err:                     # no network, no hub cache, proxy errors...
        raise RuntimeError(f"could not load the published DINO weights {name!r} "
                           f"(offline or hub unreachable: {type(err).__name__}). "
                           "Use a local checkpoint instead.") from err

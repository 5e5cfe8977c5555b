"""DINO's multi-crop augmentation, split in two for speed.

* ``MultiCrop`` runs per image in the data loader: random resized crops + flips (torchvision v2),
  2 global and ``n_local`` local views as uint8 tensors.
* ``photometric`` runs on whole batches, where the training step runs: colour jitter, grayscale,
  Gaussian blur, solarisation and normalisation with per-image random parameters. On 2 CPU cores
  this is ~50x cheaper than per-image transforms, and on a GPU it runs on the device.

The policies follow the paper: jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2,
blur p=1.0 / 0.1 / 0.5 (global 1 / global 2 / local), solarisation p=0.2 on global 2 only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
# (blur probability, solarise probability) of global view 1, global view 2, local views
POLICY = {"global1": (1.0, 0.0), "global2": (0.1, 0.2), "local": (0.5, 0.0)}


class MultiCrop:
    """Per-image geometric part: 2 global + ``n_local`` local random resized crops, flipped."""

    def __init__(self, global_size=224, local_size=96, n_local=8, global_scale=(0.4, 1.0),
                 local_scale=(0.05, 0.4)):
        def crop(size, scale):
            return T.Compose([T.RandomResizedCrop(size, scale, antialias=True,
                                                  interpolation=T.InterpolationMode.BICUBIC),
                              T.RandomHorizontalFlip()])
        self.global_crop = crop(global_size, global_scale)
        self.local_crop = crop(local_size, local_scale)
        self.n_local = n_local

    def __call__(self, img):
        img = T.functional.to_image(img)
        return ([self.global_crop(img) for _ in range(2)]
                + [self.local_crop(img) for _ in range(self.n_local)])


class BatchRandom:
    """Random numbers for this process's rows of a global batch.

    Every process draws the numbers of the whole global batch from the same seed and keeps its
    own ``rows``, so an image gets the same augmentation on 1 process or on N.
    """

    def __init__(self, seed: int, rows: slice | None = None, total: int | None = None):
        self.generator = torch.Generator().manual_seed(seed)
        self.rows, self.total = rows, total

    def rand(self, n):
        if self.rows is None:
            return torch.rand(n, generator=self.generator)
        return torch.rand(self.total, generator=self.generator)[self.rows]


def _uniform(n, lo, hi, g, device):
    return (g.rand(n) * (hi - lo) + lo).to(device)


def _bernoulli(n, p, g, device):
    return (g.rand(n) < p).to(device)


def _gray(x):
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour_jitter(x, g, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8):
    """Per-image brightness, contrast, saturation and hue jitter on a [B, 3, H, W] batch in [0, 1].

    Hue is a rotation of the chroma plane (YIQ), a linear stand-in for torchvision's HSV shift.
    """
    n, dev = len(x), x.device
    on = _bernoulli(n, p, g, dev).view(n, 1, 1, 1)
    b = _uniform(n, 1 - brightness, 1 + brightness, g, dev).view(n, 1, 1, 1)
    c = _uniform(n, 1 - contrast, 1 + contrast, g, dev).view(n, 1, 1, 1)
    s = _uniform(n, 1 - saturation, 1 + saturation, g, dev).view(n, 1, 1, 1)
    h = _uniform(n, -hue, hue, g, dev) * 2 * math.pi
    y = (x * b).clamp(0, 1)
    m = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - m) * c + m).clamp(0, 1)
    gy = _gray(y)
    y = ((y - gy) * s + gy).clamp(0, 1)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], device=dev, dtype=x.dtype)
    cos, sin = torch.cos(h), torch.sin(h)
    rot = torch.zeros(n, 3, 3, device=dev, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = torch.linalg.inv(to_yiq) @ rot @ to_yiq                      # [n, 3, 3]
    y = torch.einsum("nij,njhw->nihw", mat, y).clamp(0, 1)
    return torch.where(on, y, x)


def random_grayscale(x, g, p=0.2):
    on = _bernoulli(len(x), p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(x, g, p, sigma=(0.1, 2.0)):
    """Per-image Gaussian blur with probability ``p``; sigma is scaled from 224 px to the crop size."""
    n, _, hgt, wid = x.shape
    lo, hi = sigma[0] * wid / 224, sigma[1] * wid / 224
    radius = max(1, math.ceil(3 * hi))
    sig = _uniform(n, lo, hi, g, x.device)
    on = _bernoulli(n, p, g, x.device)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sig[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).to(x.dtype).expand_as(k)
    k = torch.where(on[:, None], k, delta).repeat_interleave(3, 0)        # [3n, taps]
    y = x.reshape(1, 3 * n, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=3 * n)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=3 * n)
    return y.reshape(n, 3, hgt, wid)


def random_rotation(x, g, degrees):
    """Rotate each image by its own angle in [-degrees, degrees] about its centre; the border is
    filled by reflection, so no black corners tell the network how much a view was turned."""
    n = len(x)
    angle = _uniform(n, -degrees, degrees, g, x.device) * math.pi / 180
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def invert_channels(x, g, p):
    """Invert each colour channel of each image (c -> 1 - c) with probability ``p``: whether the
    object is lighter or darker than its surround then changes from view to view."""
    on = torch.stack([_bernoulli(len(x), p, g, x.device) for _ in range(3)], 1).view(-1, 3, 1, 1)
    return torch.where(on, 1 - x, x)


def solarize(x, g, p):
    on = _bernoulli(len(x), p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(on & (x >= 0.5), 1 - x, x)


def normalize(x):
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def photometric(views, generator: BatchRandom, jitter=None, rotation=0.0, invert=0.0):
    """Apply the paper's per-view photometric policy to uint8 view batches; returns float batches.

    ``jitter`` is (brightness, contrast, saturation, hue); None keeps :func:`colour_jitter`'s
    defaults, the paper's. Two knobs the
    paper does not have, both off by default, widen the invariances the views teach: ``rotation``
    (degrees) turns every view by its own random angle first, ``invert`` flips each colour channel
    of a view with that probability after the jitter.
    """
    out = []
    for i, v in enumerate(views):
        blur_p, solar_p = POLICY["global1" if i == 0 else "global2" if i == 1 else "local"]
        x = v.float() / 255
        if rotation:
            x = random_rotation(x, generator, rotation)
        x = colour_jitter(x, generator, *(jitter or ()))
        if invert:
            x = invert_channels(x, generator, invert)
        x = random_grayscale(x, generator)
        x = gaussian_blur(x, generator, blur_p)
        if solar_p:
            x = solarize(x, generator, solar_p)
        out.append(normalize(x))
    return out


def patch_masks(generator: torch.Generator, n, patches, prob=0.5, ratio=(0.1, 0.5)):
    """Masks for iBOT's masked patch prediction, ``[n, patches]`` bool (True = hidden), drawn
    for the whole (global) batch. ``round(prob * n)`` images, chosen at random, are masked; their
    shares of hidden patches are spread evenly over ``ratio`` and dealt out at random, and each
    image's hidden patches are chosen at random. iBOT draws every image's share independently;
    fixing the batch's total keeps tensor shapes the same from step to step, which matters on
    CPU: with shapes that vary, the allocator fragments and steps slow down over a run."""
    k = round(prob * n)
    order = torch.randperm(n, generator=generator)
    shares = ratio[0] + (ratio[1] - ratio[0]) * (torch.arange(k) + 0.5) / max(k, 1)
    hidden = torch.zeros(n)
    hidden[order[:k]] = torch.round(shares * patches)
    rank = torch.rand(n, patches, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < hidden[:, None]

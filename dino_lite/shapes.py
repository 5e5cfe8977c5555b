"""The embedded default dataset: ten shape classes drawn on cluttered, textured backgrounds.

Every image is a pure function of ``(seed, split, index)``, so the dataset needs no download
and every machine sees the same pixels. Classes differ only by *shape*: hue, size, position
and rotation are random, and the background is a random smooth colour field with generic
noise texture plus a few distractor strokes and blobs. Each image comes with the pixel mask of its
labelled object, which is what attention maps are scored against.

Brightness is held fixed on purpose: the background's mean luminance and the object's luminance
are the same in every image, and only the hue is random. With random brightness, a few CPU
minutes of DINO learn "bright object on dark ground" instead of shape, because brightness
order survives the photometric augmentations. Hue does not survive the cpu-demo preset's
full-circle hue jitter, and the pale tints keep it a weak cue (docs/RESULTS.md).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import LUMA
from .threads import available_cpus

CLASSES = ("circle", "square", "triangle", "star", "cross",
           "ring", "crescent", "heart", "arrow", "ell")
SPLIT_SIZES = {"train": 5000, "test": 1000}
_SPLIT_ID = {"train": 0, "test": 1}
SUPERSAMPLE = 4
BACKGROUND_LUMINANCE = 0.4
OBJECT_LUMINANCE = 0.78
OBJECT_SATURATION = 0.12          # pale tints: hue stays visible but is a weak cue
_LUMA = np.array(LUMA, np.float32)          # the weights of the grayscale views


def _polygon(u, v, pts):
    """Even-odd point-in-polygon test, vectorised over the grid (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        x_at = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (u < x_at)
    return inside


def _regular(n, r, phase=np.pi / 2):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star():
    outer, inner = _regular(5, 0.95), _regular(5, 0.4, np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], 1).reshape(-1, 2)


_ARROW = np.array([[-0.9, -0.22], [0.2, -0.22], [0.2, -0.6], [0.9, 0.0],
                   [0.2, 0.6], [0.2, 0.22], [-0.9, 0.22]])
_ELL = np.array([[-0.6, -0.85], [-0.15, -0.85], [-0.15, 0.4], [0.7, 0.4],
                 [0.7, 0.85], [-0.6, 0.85]])


def shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape ``name`` in canonical coordinates (object fits the unit disk)."""
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 0.8 ** 2
    if name == "square":
        return np.maximum(abs(u), abs(v)) <= 0.62
    if name == "triangle":
        return _polygon(u, v, _regular(3, 0.95))
    if name == "star":
        return _polygon(u, v, _star())
    if name == "cross":
        return ((abs(u) <= 0.24) & (abs(v) <= 0.85)) | ((abs(v) <= 0.24) & (abs(u) <= 0.85))
    if name == "ring":
        return (r2 <= 0.85 ** 2) & (r2 >= 0.5 ** 2)
    if name == "crescent":
        return (r2 <= 0.85 ** 2) & ((u - 0.38) ** 2 + v ** 2 >= 0.68 ** 2)
    if name == "heart":
        x, y = u / 0.75, -(v + 0.1) / 0.75
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if name == "arrow":
        return _polygon(u, v, _ARROW)
    if name == "ell":
        return _polygon(u, v, _ELL)
    raise ValueError(f"unknown shape {name!r}; choose from {CLASSES}")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_ID[split], index])


def _background(rng, size):
    """Smooth random colour field plus multi-scale noise ("clouds" and grain).

    The texture is deliberately generic: every image has the same kind of clutter, so the
    one thing two crops of an image share, and other images do not, is the object.
    """
    coarse = rng.uniform(0, 1, (3, 4, 4)).astype(np.float32)
    field = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(size, size),
                                            mode="bicubic", align_corners=True)[0].numpy()
    clouds = rng.normal(0, 1, (1, 1, 12, 12)).astype(np.float32)
    clouds = torch.nn.functional.interpolate(torch.from_numpy(clouds), size=(size, size),
                                             mode="bicubic", align_corners=True)[0, 0].numpy()
    grain = rng.normal(0, 1, (size, size)).astype(np.float32).clip(-2, 2)
    tex = 0.5 * clouds + 0.5 * grain
    gray = field.mean(0, keepdims=True)
    field = gray + rng.uniform(0.2, 0.5) * (field - gray)            # muted colours
    img = 0.5 * field + 0.25 + 0.1 * tex[None] * rng.uniform(0.5, 1.0)
    img += BACKGROUND_LUMINANCE - np.tensordot(_LUMA, img, 1).mean()
    return np.clip(img, 0, 1)


def _colour(rng, luminance, saturation):
    """An RGB colour of random hue whose luminance is ``luminance`` (before clipping to [0, 1])."""
    rgb = rng.uniform(0, 1, 3).astype(np.float32)
    chroma = rgb - rgb @ _LUMA                    # zero-luminance part: the hue
    chroma /= np.abs(chroma).max() + 1e-6
    return np.clip(luminance + saturation * chroma, 0, 1)


def _paint(img, alpha, colour):
    img[:] = img * (1 - alpha[None]) + alpha[None] * np.asarray(colour, np.float32)[:, None, None]


def _coverage(inside, size):
    """Average the supersampled boolean grid down to anti-aliased alpha at ``size``."""
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3)).astype(np.float32)


@lru_cache(maxsize=4)
def _grid(n: int):
    """The supersampled pixel centres in [-1, 1] image coordinates, ``(gy, gx)`` (read-only)."""
    grid = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n * 2 - 1
    grid.flags.writeable = False
    return grid[0], grid[1]


def render(seed: int, split: str, index: int, size: int = 64):
    """Render one example: (uint8 image [size, size, 3], label, bool mask [size, size])."""
    rng = _rng(seed, split, index)
    label = int(rng.integers(len(CLASSES)))
    img = _background(rng, size)
    gy, gx = _grid(size * SUPERSAMPLE)

    for _ in range(int(rng.integers(1, 4))):                             # distractors
        cx, cy, ang = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, np.pi)
        du, dv = gx - cx, gy - cy
        a = du * np.cos(ang) + dv * np.sin(ang)
        b = -du * np.sin(ang) + dv * np.cos(ang)
        if rng.random() < 0.5:   # thin stroke
            inside = (abs(a) <= rng.uniform(0.2, 0.6)) & (abs(b) <= rng.uniform(0.015, 0.04))
        else:                    # small irregular blob
            k = int(rng.integers(5, 8))
            pts = _regular(k, 1.0, rng.uniform(0, 6)) * rng.uniform(0.5, 1.0, (k, 1)) * 0.12
            inside = _polygon(a, b, pts)
        _paint(img, _coverage(inside, size) * 0.8, _colour(rng, rng.uniform(0.2, 0.6), 0.3))

    scale = rng.uniform(0.55, 0.8)                                        # object radius / half-side
    cx, cy = rng.uniform(-1 + scale, 1 - scale, 2)
    ang = rng.uniform(0, 2 * np.pi)
    du, dv = (gx - cx) / scale, (gy - cy) / scale
    u = du * np.cos(ang) + dv * np.sin(ang)
    v = -du * np.sin(ang) + dv * np.cos(ang)
    alpha = _coverage(shape_inside(CLASSES[label], u, v), size)
    _paint(img, alpha, _colour(rng, OBJECT_LUMINANCE, OBJECT_SATURATION))
    image = (img.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    return image, label, alpha > 0.5


def _cache_path(cache_dir, seed, split, size, n):
    key = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:8]   # invalidated when drawing changes
    return Path(cache_dir) / f"shapes-{split}-{size}px-{n}-seed{seed}-{key}.npz"


def generate(split: str = "train", size: int = 64, n: int | None = None, seed: int = 0,
             cache_dir: str | Path | None = None, progress: bool = False):
    """All examples of a split as arrays ``(images [N,H,W,3] uint8, labels [N], masks [N,H,W])``.

    With ``cache_dir`` the arrays are stored as ``.npz`` and reused on the next call.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
    if size < 8:
        raise ValueError(f"image size must be at least 8 px, got {size}")
    n = SPLIT_SIZES[split] if n is None else n
    path = _cache_path(cache_dir, seed, split, size, n) if cache_dir else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["images"], z["labels"], z["masks"]
    from tqdm.auto import tqdm
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    # Each image depends on its index only, so threads can draw them in any order: numpy lets go
    # of the GIL inside its array operations, and two threads draw about 1.5x faster than one.
    with ThreadPoolExecutor(min(len(available_cpus()), 4)) as pool:
        drawn = pool.map(lambda i: render(seed, split, i, size), range(n))
        for i, example in enumerate(tqdm(drawn, total=n, desc=f"drawing shapes/{split}",
                                         disable=not progress, leave=False)):
            images[i], labels[i], masks[i] = example
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, images=images, labels=labels, masks=masks)
        tmp.replace(path)
    return images, labels, masks


class ShapesDataset(torch.utils.data.Dataset):
    """The embedded dataset as a torch Dataset of ``(PIL image, label)``; ``.masks`` holds the masks."""

    classes = list(CLASSES)

    def __init__(self, split="train", size=64, n=None, seed=0, transform=None, cache_dir=None):
        self.images, self.targets, self.masks = generate(split, size, n, seed, cache_dir,
                                                         progress=True)
        self.targets = self.targets.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]

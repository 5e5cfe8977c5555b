"""Video object segmentation by label propagation (the DINO paper's DAVIS-2017 protocol).

Nothing is trained for this. The first frame's mask is given; every later frame's patches take
their labels from patches of earlier frames whose frozen features look alike:

- features: the last block's patch tokens (L2-normalised), frames resized so the short side is
  ``short_side`` pixels (sides rounded to multiples of the patch size);
- sources: the first frame (with its true mask) and the previous ``n_context`` = 7 *predicted*
  frames, kept in a queue, so memory does not grow with the sequence;
- affinity of target patch t to source patch s: exp(cos(t, s) / 0.1), only for sources within a
  square window of ``radius`` = 12 patches around t's position; each target keeps its top 5
  sources over all source frames, normalises their weights and averages their (soft) labels;
- the label map is upsampled bilinearly to pixels, each object's channel rescaled to [0, 1],
  and each pixel takes the best channel.

Scores as the official DAVIS toolkit (davis2017-evaluation, semi-supervised task) computes
them: region similarity J (Jaccard of an object's predicted and true masks; 1 when both are
empty) and boundary accuracy F (the F-measure of the one-pixel boundaries of the two masks, a
boundary pixel counting as matched when the other boundary lies within a disk of
ceil(0.008 x image diagonal) pixels), per object, averaged over the annotated frames without the
first and the last; J&F is their mean. The objects of a sequence are ids 1..n, n the largest id
in the first frame's mask; void pixels (255) count as background, as the toolkit scores the
semi-supervised task. Means over a dataset are over objects. A sequence with nothing to score
(no annotated frame between the first and the last, or no object in the first mask) is named
and counted apart, never averaged in as NaN.
"""

from __future__ import annotations

import math
import resource
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import load_rgb, natural_key
from .retrieval import image_tensor

# The DAVIS colour palette (object i gets colour i; PASCAL VOC's bit-interleaving scheme).
def _palette():
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


PALETTE = _palette()


# --- reading DAVIS ------------------------------------------------------------------------------

def read_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """Object ids and void pixels of an annotation, ``(ids int64 [H, W], void bool [H, W])``.

    - Palette PNGs (DAVIS-2017): the palette indices are the object ids and 255 is void, as the
      DAVIS toolkit reads them.
    - Greyscale PNGs, 8 or 16 bit: a binary DAVIS-2016 mask when every non-zero value is at
      least half the range (128, 32768: 0/255, 0/65535, 0/128 masks), or when the format's top
      value (255, 65535) covers at least as many pixels as all grey levels between 0 and it; the
      object is then every pixel at or above half the range, so that the grey edge of a mask
      resized with interpolation stays one object. Otherwise the values are object ids (and the
      top value void), as the toolkit reads them.
    - RGB(A) PNGs: colours of the DAVIS palette are their indices (distinct colours, distinct
      objects); an RGB image whose three channels are equal is read as greyscale; any other
      colour is an error naming the file.
    """
    with Image.open(path) as im:
        mode = im.mode
        a = np.array(im)
    if mode in ("P", "PA"):
        ids = a[..., 0] if a.ndim == 3 else a
        return _checked_ids(ids, ids == 255, path)
    if mode == "1":
        return a.astype(np.int64), np.zeros(a.shape, bool)
    if mode in ("RGB", "RGBA"):
        rgb = a[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            a = rgb[..., 0]
        else:
            ids = _palette_ids(rgb, path)
            return _checked_ids(ids, ids == 255, path)
    elif a.ndim == 3:                                   # LA: grey and alpha
        a = a[..., 0]
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"annotation {path}: a {mode} image of non-integer values; save object ids "
                         "as a palette or greyscale PNG")
    top = 255 if a.max(initial=0) <= 255 else 65535      # the top value of 8- or 16-bit masks
    half, fg = (top + 1) // 2, a > 0
    at_top = int((a == top).sum())
    if (fg.any() and (a[fg] >= half).all()) or (at_top and at_top >= int((fg & (a < top)).sum())):
        return (a >= half).astype(np.int64), np.zeros(a.shape, bool)
    return _checked_ids(a, a == top, path)


def _checked_ids(a: np.ndarray, void: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    ids = np.where(void, 0, a).astype(np.int64)
    if ids.max(initial=0) > 254:
        raise ValueError(f"annotation {path}: object id {ids.max()} is above 254 (255 is void); "
                         "number the objects 1, 2, ...")
    return ids, void


_PALETTE_CODES = np.array([(r << 16) | (g << 8) | b for r, g, b in
                           zip(PALETTE[0::3], PALETTE[1::3], PALETTE[2::3])])


def _palette_ids(rgb: np.ndarray, path) -> np.ndarray:
    """The DAVIS palette index of every pixel's colour; other colours are an error."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    order = np.argsort(_PALETTE_CODES)
    pos = np.searchsorted(_PALETTE_CODES[order], codes).clip(0, 255)
    known = _PALETTE_CODES[order][pos] == codes
    if not known.all():
        bad = [tuple(int(v) for v in c) for c in np.unique(rgb[~known], axis=0)[:3]]
        raise ValueError(f"annotation {path} is an RGB image with colours outside the DAVIS palette "
                         f"(e.g. {', '.join(map(str, bad))}), so its objects cannot be told apart "
                         "reliably; save object ids as a palette (indexed) or greyscale PNG")
    return order[pos]


def davis_layout(root) -> tuple[Path, Path]:
    """``(JPEGImages dir, Annotations dir)`` of a DAVIS folder, with or without a ``480p/`` level."""
    root = Path(root)
    for sub in ("480p", ""):
        jpeg, ann = root / "JPEGImages" / sub, root / "Annotations" / sub
        if jpeg.is_dir() and ann.is_dir() and any(p.is_dir() for p in jpeg.iterdir()):
            return jpeg, ann
    raise FileNotFoundError(f"{root} is not a DAVIS folder: expected JPEGImages/<sequence>/*.jpg "
                            "and Annotations/<sequence>/*.png (optionally under 480p/)")


def sequence_files(root, sequence) -> tuple[list[Path], dict[str, Path]]:
    """A sequence's frames (in natural order: ``2.jpg`` before ``10.jpg``) and its annotations
    by frame stem."""
    jpeg, ann = davis_layout(root)
    frames = sorted((p for p in (jpeg / sequence).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                    key=natural_key)
    if not frames:
        raise FileNotFoundError(f"no frames in {jpeg / sequence}")
    masks = {p.stem: p for p in (ann / sequence).glob("*.png")}
    if frames[0].stem not in masks:
        raise FileNotFoundError(f"sequence {sequence}: no first-frame mask "
                                f"{ann / sequence / (frames[0].stem + '.png')}")
    return frames, masks


def list_sequences(root) -> list[str]:
    jpeg, _ = davis_layout(root)
    return sorted(p.name for p in jpeg.iterdir() if p.is_dir())


# --- propagation --------------------------------------------------------------------------------

@torch.no_grad()
def patch_features(backbone, x: torch.Tensor) -> torch.Tensor:
    """Last-block patch tokens of one normalised image ``[3, H, W]`` as a ``[D, H/p, W/p]`` map."""
    if not hasattr(backbone, "forward_features"):
        raise TypeError("label propagation needs a ViT backbone (patch tokens)")
    p = backbone.patch_embed.patch_size[0]
    tokens = backbone.forward_features(x[None])[0]
    tokens = tokens[getattr(backbone, "num_prefix_tokens", 1):]
    h, w = x.shape[-2] // p, x.shape[-1] // p
    return tokens.T.reshape(-1, h, w).float()


def soft_labels(mask: np.ndarray | torch.Tensor, object_ids, grid) -> torch.Tensor:
    """One channel per class (background, then ``object_ids``): each patch's share of the pixels
    of that class, ``[C, h, w]`` (area-averaged one-hot)."""
    m = torch.as_tensor(np.asarray(mask))
    onehot = torch.stack([m == 0] + [m == i for i in object_ids]).float()
    return F.adaptive_avg_pool2d(onehot[None], grid)[0]


class LabelPropagation:
    """Propagates labels from the first frame and a queue of recent predictions (see module doc).

    ``first_feats`` ``[D, h, w]`` and ``first_labels`` ``[C, h, w]`` are the reference; each call
    with a new frame's features returns its soft labels ``[C, h, w]`` and queues them.
    """

    def __init__(self, first_feats, first_labels, n_context: int = 7, radius: int = 12,
                 topk: int = 5, temperature: float = 0.1, band: int = 8):
        if first_feats.shape[-2:] != first_labels.shape[-2:]:
            raise ValueError(f"features {tuple(first_feats.shape)} and labels "
                             f"{tuple(first_labels.shape)} have different grids")
        self.first = (F.normalize(first_feats.float(), dim=0), first_labels.float())
        self.queue = deque(maxlen=n_context)
        self.radius, self.topk, self.temperature, self.band = radius, topk, temperature, band

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(feats.float(), dim=0)
        d, h, w = feats.shape
        sources = [self.first] + list(self.queue)
        src_f = torch.stack([s[0] for s in sources])              # [S, D, h, w]
        src_l = torch.stack([s[1] for s in sources])              # [S, C, h, w]
        r = self.radius
        xs = torch.arange(w)
        out = torch.empty(src_l.shape[1], h, w)
        # Target rows in bands: a band only sees source rows within the radius, so the affinity
        # held at once is [S, band * w, (band + 2r) * w], never all patches against all.
        for y0 in range(0, h, self.band):
            y1 = min(h, y0 + self.band)
            s0, s1 = max(0, y0 - r), min(h, y1 + r)
            tgt = feats[:, y0:y1].reshape(d, -1)                  # [D, T]
            src = src_f[:, :, s0:s1].reshape(len(sources), d, -1)  # [S, D, N]
            sim = torch.einsum("dt,sdn->stn", tgt, src)
            ty = torch.arange(y0, y1).repeat_interleave(w)
            tx = xs.repeat(y1 - y0)
            sy = torch.arange(s0, s1).repeat_interleave(w)
            sx = xs.repeat(s1 - s0)
            near = ((ty[:, None] - sy[None]).abs() <= r) & ((tx[:, None] - sx[None]).abs() <= r)
            aff = torch.where(near, sim / self.temperature, torch.tensor(-math.inf))
            aff = aff.permute(1, 0, 2).reshape(len(tgt[0]), -1)   # [T, S * N]
            k = min(self.topk, aff.shape[1])
            top, idx = aff.topk(k, dim=1)
            weight = torch.softmax(top, dim=1)                    # exp(cos / T), normalised
            labels = src_l[:, :, s0:s1].reshape(len(sources), src_l.shape[1], -1)
            labels = labels.permute(0, 2, 1).reshape(-1, src_l.shape[1])  # [S * N, C]
            out[:, y0:y1] = (weight[..., None] * labels[idx]).sum(1).T.reshape(-1, y1 - y0, w)
        self.queue.append((feats, out))
        return out


def labels_to_mask(labels: torch.Tensor, size, object_ids) -> np.ndarray:
    """Soft patch labels ``[C, h, w]`` to a pixel mask of ``size`` (H, W) holding object ids:
    bilinear upsampling, each channel rescaled to [0, 1] (as the reference does), argmax."""
    up = F.interpolate(labels[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    up = torch.where(hi > 0, (up - lo) / (hi - lo).clamp_min(1e-12), up)
    ids = torch.tensor([0] + list(object_ids))
    return ids[up.argmax(0)].numpy()


# --- scores -------------------------------------------------------------------------------------

def region_jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS J: |pred ∩ gt| / |pred ∪ gt| outside void pixels; both empty counts as 1."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    union = (pred | gt).sum()
    return 1.0 if union == 0 else float((pred & gt).sum() / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask as DAVIS marks them: a pixel differing from its right,
    lower or lower-right neighbour (the last row and column compare within themselves)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` pixels (skimage's ``disk``: x² + y² <= r²): for
    each row offset dy of the disk, a horizontal dilation of half-width isqrt(r² - dy²)
    (a window sum over a cumulative sum), shifted by dy."""
    if radius <= 0:
        return b.copy()
    h, w = b.shape
    sums = np.zeros((h, w + 1), np.int32)
    np.cumsum(b, axis=1, out=sums[:, 1:])
    xs, rows, out = np.arange(w), {}, np.zeros_like(b, dtype=bool)
    for dy in range(-radius, radius + 1):
        if abs(dy) >= h:
            continue
        k = math.isqrt(radius * radius - dy * dy)
        if k not in rows:
            rows[k] = sums[:, np.minimum(xs + k + 1, w)] > sums[:, np.maximum(xs - k, 0)]
        if dy >= 0:                                  # pixel y takes row y - dy
            out[dy:] |= rows[k][:h - dy]
        else:
            out[:dy] |= rows[k][-dy:]
    return out


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = 0.008) -> float:
    """DAVIS F: precision and recall of boundary pixels, each matched if the other boundary lies
    within ceil(``bound_th`` x image diagonal) pixels; their harmonic mean."""
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    keep = np.ones(pred.shape, bool) if void is None else ~void
    fg_b = seg2bmap(pred.astype(bool) & keep)
    gt_b = seg2bmap(gt.astype(bool) & keep)
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0                                  # precision or recall is 0
    # only boundary pixels are matched, to boundary pixels: their bounding box is enough
    ys, xs = np.nonzero(fg_b | gt_b)
    box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    fg_b, gt_b = fg_b[box], gt_b[box]
    precision = (fg_b & _dilate(gt_b, int(bound_pix))).sum() / n_fg
    recall = (gt_b & _dilate(fg_b, int(bound_pix))).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


# --- a generated test video ---------------------------------------------------------------------

def moving_shapes_video(frames: int = 12, size=(64, 96), seed: int = 0):
    """A small video with exact masks: a disc (object 1) and a square (object 2) drifting over a
    smooth textured background; the square passes in front of the disc.

    Returns ``(frames [T, H, W, 3] uint8, masks [T, H, W] int64)``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.stack([np.sin(xx / 7 + c) * np.cos(yy / 9 - c) for c in (0, 1, 2)], -1) + 1) * 60 + 40
    noise = rng.normal(0, 8, (h, w, 3))
    colours = {1: np.array([230, 60, 40]), 2: np.array([40, 90, 230])}
    video, masks = [], []
    for t in range(frames):
        a = t / max(1, frames - 1)
        img = base.copy() + noise
        m = np.zeros((h, w), np.int64)
        cy, cx, rad = h * 0.45, w * (0.25 + 0.4 * a), h * 0.22
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2
        side = int(h * 0.3)
        y0, x0 = int(h * (0.6 - 0.35 * a)), int(w * (0.75 - 0.3 * a))
        square = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
        for obj, region in ((1, disc), (2, square)):
            img[region] = colours[obj] + rng.normal(0, 6, (region.sum(), 3))
            m[region] = obj
        video.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(m)
    return np.stack(video), np.stack(masks)


def write_davis(root, name="shapes", frames: int = 12, size=(64, 96), seed: int = 0, level=""):
    """Write :func:`moving_shapes_video` in the DAVIS layout (palette masks), for tests/demos."""
    video, masks = moving_shapes_video(frames, size, seed)
    jpeg = Path(root) / "JPEGImages" / level / name
    ann = Path(root) / "Annotations" / level / name
    jpeg.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    for t, (img, m) in enumerate(zip(video, masks)):
        Image.fromarray(img).save(jpeg / f"{t:05d}.jpg", quality=95)
        _save_indexed(m, ann / f"{t:05d}.png")
    return Path(root)


def _save_indexed(mask: np.ndarray, path):
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    im.save(path)


# --- running a sequence -------------------------------------------------------------------------

def overlay(img: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The frame with each object tinted in its palette colour."""
    pal = np.array(PALETTE, np.uint8).reshape(256, 3)
    a = np.asarray(img).astype(np.float32)
    col = pal[mask].astype(np.float32)
    obj = (mask > 0)[..., None]
    return Image.fromarray(np.where(obj, (1 - alpha) * a + alpha * col, a).astype(np.uint8))


def segment_sequence(root, sequence, backbone=None, out=None, short_side: int = 480,
                     n_context: int = 7, radius: int = 12, topk: int = 5,
                     temperature: float = 0.1, video=None, gif_width: int = 320) -> dict:
    """Segment one DAVIS sequence from its first frame's mask and score it.

    ``backbone=None`` is the trivial baseline that repeats the first frame's mask. With ``out``,
    writes ``out/<sequence>/<frame>.png`` (object ids as palette indices, the frame's size) and
    ``out/<sequence>/overlay/<frame>.jpg``; with ``video`` (a folder), the propagated masks over
    the frames as an animated GIF ``video/<sequence>.gif``. Only the queue of recent frames is
    held in memory (plus the GIF's thumbnails). Returns per-object J and F (module doc), their
    means (None, with the reason in ``not_scored``, when the sequence has nothing to score),
    frames and seconds.
    """
    frames, masks = sequence_files(root, sequence)
    first_path = masks[frames[0].stem]
    first, _ = read_mask(first_path)
    _check_size(first_path, first, frames[0])
    n_objects = int(first.max(initial=0))
    object_ids = list(range(1, n_objects + 1))             # as the toolkit counts them
    annotated = [p for p in frames if p.stem in masks]
    scored = {p.stem for p in annotated[1:-1]}             # DAVIS leaves out the first and last
    result = {"sequence": sequence, "objects": {}, "frames": len(frames), "seconds": 0.0,
              "J": None, "F": None, "not_scored": None, "video": None}
    if not object_ids:
        return {**result, "not_scored": f"the first frame's mask {first_path.name} holds no object"}
    if not scored:
        result["not_scored"] = (f"{len(annotated)} annotated frame{'s' * (len(annotated) != 1)}: "
                                "DAVIS scores those between the first and the last")
    if out is not None:
        seq_dir = Path(out) / sequence
        (seq_dir / "overlay").mkdir(parents=True, exist_ok=True)
    prop, thumbs = None, []
    if backbone is not None:
        device = next(backbone.parameters()).device
        p = backbone.patch_embed.patch_size[0]
        backbone.eval()
    j = {i: [] for i in object_ids}
    f = {i: [] for i in object_ids}
    start = time.perf_counter()
    for t, path in enumerate(frames):
        img = load_rgb(path)
        size = (img.size[1], img.size[0])
        if t == 0:
            pred = first
            if backbone is not None:
                feats = patch_features(backbone, image_tensor(path, short_side, p).to(device)).cpu()
                prop = LabelPropagation(feats, soft_labels(_resize_mask(first, feats.shape[-2:], p),
                                                           object_ids, feats.shape[-2:]),
                                        n_context, radius, topk, temperature)
        elif backbone is None:
            pred = first
        else:
            x = image_tensor(path, short_side, p).to(device)
            labels = prop(patch_features(backbone, x).cpu())
            pred = labels_to_mask(labels, x.shape[-2:], object_ids)
            pred = np.array(Image.fromarray(pred.astype(np.uint8)).resize(img.size, Image.NEAREST))
        if path.stem in scored:
            gt, _ = read_mask(masks[path.stem])     # void counts as background (the toolkit's)
            _check_size(masks[path.stem], gt, path, size)
            for i in object_ids:
                j[i].append(region_jaccard(pred == i, gt == i))
                f[i].append(boundary_f(pred == i, gt == i))
        if out is not None or video is not None:
            ov = overlay(img, pred)
        if out is not None:
            _save_indexed(pred, seq_dir / f"{path.stem}.png")
            ov.save(seq_dir / "overlay" / f"{path.stem}.jpg", quality=85)
        if video is not None:
            width = min(gif_width, size[1])
            thumbs.append(ov.resize((width, max(1, round(width * size[0] / size[1])))))
    result["seconds"] = time.perf_counter() - start
    if video is not None and thumbs:
        Path(video).mkdir(parents=True, exist_ok=True)
        result["video"] = str(Path(video) / f"{sequence}.gif")
        thumbs[0].save(result["video"], save_all=True, append_images=thumbs[1:], duration=100, loop=0)
    if scored:
        result["objects"] = {i: {"J": float(np.mean(j[i])), "F": float(np.mean(f[i]))} for i in object_ids}
        result["J"] = float(np.mean([o["J"] for o in result["objects"].values()]))
        result["F"] = float(np.mean([o["F"] for o in result["objects"].values()]))
    return result


def _check_size(mask_path, mask: np.ndarray, frame_path, size=None):
    """An annotation must have its frame's size (DAVIS scores pixel by pixel)."""
    if size is None:
        with Image.open(frame_path) as im:
            size = (im.size[1], im.size[0])
    if mask.shape != tuple(size):
        raise ValueError(f"annotation {mask_path} is {mask.shape[1]}x{mask.shape[0]} px but its frame "
                         f"{frame_path} is {size[1]}x{size[0]} px; annotations must have their "
                         "frame's size")


def _resize_mask(mask: np.ndarray, grid, patch: int) -> np.ndarray:
    """The first mask at the feature map's pixel size (grid x patch), nearest neighbour."""
    h, w = grid[0] * patch, grid[1] * patch
    return np.array(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))


def peak_memory_mb() -> float:
    """This process's peak resident memory so far (MB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_davis(root, backbone=None, sequences=None, out=None, progress=print, **kw) -> dict:
    """:func:`segment_sequence` over ``sequences`` (default: all), with dataset means over the
    objects of the sequences that could be scored (``None`` when none could), the count of those
    sequences and objects, the others by name with the reason, frames per second of the whole
    loop and the peak resident memory."""
    names = sequences or list_sequences(root)
    results, frames, seconds = [], 0, 0.0
    for name in names:
        r = segment_sequence(root, name, backbone, out, **kw)
        results.append(r)
        frames += r["frames"]
        seconds += r["seconds"]
        if progress and r["not_scored"]:
            progress(f"{name}: not scored ({r['not_scored']})")
        elif progress:
            progress(f"{name}: J {r['J']:.3f} F {r['F']:.3f} J&F {(r['J'] + r['F']) / 2:.3f} "
                     f"({r['frames']} frames, {r['frames'] / r['seconds']:.1f} frames/s)")
    objects = [o for r in results if not r["not_scored"] for o in r["objects"].values()]
    J = float(np.mean([o["J"] for o in objects])) if objects else None
    Fm = float(np.mean([o["F"] for o in objects])) if objects else None
    return {"J": J, "F": Fm, "JF": None if J is None else (J + Fm) / 2, "sequences": results,
            "sequences_scored": sum(not r["not_scored"] for r in results), "objects": len(objects),
            "not_scored": {r["sequence"]: r["not_scored"] for r in results if r["not_scored"]},
            "frames": frames, "frames_per_s": frames / seconds if seconds else None,
            "peak_memory_mb": peak_memory_mb()}

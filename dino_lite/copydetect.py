"""Copy detection: find the original of a strongly edited copy among many images.

The paper's recipe (Copydays "strong" subset): each image is described by the CLS token
concatenated with the GeM-pooled (generalised mean, p = 4) patch tokens of the last block; the
descriptors are PCA-whitened with statistics learned on a separate set of images, L2-normalised,
and the database is ranked by cosine similarity. Scored with mAP as in :mod:`retrieval`.

:func:`make_copies` builds such a benchmark from any image folder: queries are edited copies
(crops, rotations, flips, rescaling, blur, low-quality JPEG, colour changes, overlaid text and
shapes, and combinations of these) of database images that sit among distractors.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from .data import ImageLoadError, load_rgb
from .retrieval import list_images


# --- descriptors --------------------------------------------------------------------------------

def gem(tokens: torch.Tensor, p: float = 4.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over the token axis of ``[B, N, D]``: (mean x^p)^(1/p) after clamping to
    ``eps`` (GeM needs positive values). p = 1 is average pooling; large p tends to max pooling."""
    return tokens.clamp(min=eps).pow(p).mean(1).pow(1.0 / p)


def cls_gem_features(backbone, x: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """The copy-detection descriptor of a batch: last-block CLS token and GeM-pooled patch tokens
    (both after the final norm), concatenated. A CNN without tokens returns its pooled output."""
    if not hasattr(backbone, "forward_features"):
        return backbone(x)
    tokens = backbone.forward_features(x)
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    return torch.cat([tokens[:, 0], gem(tokens[:, prefix:], p)], -1)


class Whitening:
    """PCA whitening: centre, rotate onto the principal axes and divide each by its standard
    deviation, so the training features have identity covariance. Components whose variance is
    below ``eps`` times the largest are dropped (fewer images than dimensions), and so are those
    below ``floor`` times the features' mean squared norm (rounding noise between identical images).

    Fewer than two components left is an error: on one axis every normalised descriptor is +-1
    and on none 0, so the ranking would be the database's index order."""

    def __init__(self, feats: torch.Tensor, eps: float = 1e-6, floor: float = 1e-10):
        x = feats.double()
        if len(x) < 2:
            raise ValueError("whitening needs at least two feature vectors")
        self.mean = x.mean(0)
        cov = (x - self.mean).T @ (x - self.mean) / (len(x) - 1)
        eigval, eigvec = torch.linalg.eigh(cov)                     # ascending
        keep = eigval > max(eps * float(eigval.max()), floor * float(x.pow(2).sum(1).mean()), 1e-30)
        kept = int(keep.sum())
        if kept < 2:
            raise ValueError(f"the whitening features span {kept} direction{'' if kept == 1 else 's'}"
                             f" of variance ({len(x)} feature vectors: identical or too few images); "
                             "whitening needs at least 2, and learns well from hundreds of varied images")
        eigval, eigvec = eigval[keep].flip(0), eigvec[:, keep].flip(1)
        self.projection = eigvec / eigval.sqrt()                   # [D, kept]

    @property
    def dim(self) -> int:
        return self.projection.shape[1]

    def __call__(self, feats: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        y = ((feats.double() - self.mean) @ self.projection).float()
        return F.normalize(y, dim=-1) if normalize else y


# --- benchmark maker ----------------------------------------------------------------------------

EDITS = ("crop", "rotate", "flip", "scale", "blur", "jpeg", "colour", "text", "shapes")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                        # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _rand_colour(rng):
    return tuple(rng.randrange(256) for _ in range(3))


def apply_edit(img: Image.Image, edit: str, rng: random.Random) -> Image.Image:
    """One strong edit drawn from ``rng`` (a ``random.Random``; same state, same pixels)."""
    w, h = img.size
    if edit == "crop":                       # keep 25-60% of the area, anywhere
        f = rng.uniform(0.5, 0.78)
        cw, ch = max(8, int(w * f)), max(8, int(h * f))
        x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    if edit == "rotate":
        angle = rng.choice([90, 180, 270]) if rng.random() < 0.3 else rng.uniform(-35, 35)
        return img.rotate(angle, expand=True, fillcolor=_rand_colour(rng),
                          resample=Image.Resampling.BILINEAR)
    if edit == "flip":
        return ImageOps.mirror(img) if rng.random() < 0.7 else ImageOps.flip(img)
    if edit == "scale":                      # shrink hard (and stretch one side a little)
        s = rng.uniform(0.25, 0.6)
        return img.resize((max(8, int(w * s * rng.uniform(0.8, 1.25))), max(8, int(h * s))),
                          Image.Resampling.BILINEAR)
    if edit == "blur":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 4.0) * max(w, h) / 256))
    if edit == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(3, 15))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if edit == "colour":
        kind = rng.choice(["gray", "hue", "enhance", "invert"])
        if kind == "gray":
            return ImageOps.grayscale(img).convert("RGB")
        if kind == "invert":
            return ImageOps.invert(img)
        if kind == "hue":
            hsv = img.convert("HSV")
            hch, s, v = hsv.split()
            shift = rng.randrange(40, 216)
            hch = hch.point(lambda t: (t + shift) % 256)
            return Image.merge("HSV", (hch, s, v)).convert("RGB")
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.4, 1.6))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.4, 1.8))
        return ImageEnhance.Color(img).enhance(rng.uniform(0.0, 2.5))
    if edit == "text":
        img = img.copy()
        draw = ImageDraw.Draw(img)
        words = ["COPY", "dino", "SALE", "2026", "lorem ipsum", "#meme", "sample", "OK!"]
        for _ in range(rng.randint(1, 3)):
            size = max(8, int(min(w, h) * rng.uniform(0.12, 0.3)))
            draw.text((rng.randrange(max(1, w - size)), rng.randrange(max(1, h - size))),
                      rng.choice(words), fill=_rand_colour(rng), font=_font(size))
        return img
    if edit == "shapes":
        img = img.copy()
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(2, 5)):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            x1 = x0 + int(w * rng.uniform(0.1, 0.35))
            y1 = y0 + int(h * rng.uniform(0.1, 0.35))
            shape = rng.choice([draw.rectangle, draw.ellipse])
            shape((x0, y0, x1, y1), fill=_rand_colour(rng))
        return img
    raise ValueError(f"unknown edit {edit!r}; choose from {EDITS}")


def strong_copy(img: Image.Image, rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A copy with a combination of 2 to 4 distinct edits, in a random order."""
    edits = rng.sample(EDITS, rng.randint(2, 4))
    for e in edits:
        img = apply_edit(img, e, rng)
    return img, edits


MIN_SIDE = 8                # the edits (crops, shrinks) keep at least 8 px per side
OUTPUTS = ("ground_truth.csv", "edits.csv", "database", "queries", "whitening")


def make_copies(images_dir, out_dir, seed: int = 0, originals: int = 50, copies: int = 2,
                distractors: int = 150, whitening: int = 100) -> dict:
    """Write a copy-detection benchmark made from the images under ``images_dir`` (recursively):

    - ``database/``: ``originals`` images plus ``distractors`` others, under anonymous shuffled names;
    - ``queries/``: ``copies`` strongly edited copies of each original;
    - ``whitening/``: ``whitening`` further images, disjoint from both, for learning PCA whitening;
    - ``ground_truth.csv`` (``query,match``) and ``edits.csv`` (the edits of each query).

    Everything is drawn from ``random.Random(seed)``: the same seed and images give identical
    files. The files are written to ``out_dir/.make-copies.partial`` and moved into place when all
    are written, replacing those of an earlier run: a run that fails leaves the earlier benchmark
    as it was. Returns the counts and paths.
    """
    for name, value, least in (("originals", originals, 1), ("copies", copies, 1),
                               ("distractors", distractors, 0), ("whitening", whitening, 0)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if out_dir.resolve() == images_dir.resolve() or images_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"the output folder {out_dir} is inside {images_dir}: a rerun would take "
                         "the benchmark's own images as its sources; pass another --out")
    files = sorted(list_images(images_dir)[0])          # one folder, or one subfolder per class
    need = originals + distractors + whitening
    if len(files) < need:
        raise ValueError(f"{images_dir} has {len(files)} images; {originals} originals + "
                         f"{distractors} distractors + {whitening} whitening images need {need}")
    rng = random.Random(seed)
    chosen = rng.sample(files, need)
    orig = chosen[:originals]
    small = [(f, size) for f in orig if min(size := _image_size(f)) < MIN_SIDE]
    if small:
        (f, (w, h)), more = small[0], len(small) - 1
        raise ValueError(f"{f} is {w}x{h} px: the edits need originals of at least {MIN_SIDE} px "
                         f"on each side" + (f" ({more} more of the chosen originals are smaller)"
                                            if more else "") + f"; remove such images from {images_dir}")
    partial = out_dir / ".make-copies.partial"
    if partial.exists():
        shutil.rmtree(partial)                               # left by an interrupted run
    try:
        rows = _write_benchmark(partial, rng, orig, chosen[originals:originals + distractors],
                                chosen[originals + distractors:], copies)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _replace_outputs(partial, out_dir)
    return {"queries": rows, "database": originals + distractors, "distractors": distractors,
            "whitening": whitening, "out": str(out_dir),
            "ground_truth": str(out_dir / "ground_truth.csv")}


def _image_size(path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding it."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:               # PIL raises several types; the path is what the user needs
        raise ImageLoadError(f"cannot read image {path}: {e}") from e


def _write_benchmark(out_dir: Path, rng, orig, distr, white, copies) -> int:
    """The benchmark's files into the empty ``out_dir``; returns the number of queries."""
    for sub in ("database", "queries", "whitening"):
        (out_dir / sub).mkdir(parents=True)
    db = orig + distr
    slots = list(range(len(db)))
    rng.shuffle(slots)
    db_name = {i: f"db_{slots[i]:05d}.jpg" for i in range(len(db))}
    for i, f in enumerate(db):
        load_rgb(f).save(out_dir / "database" / db_name[i], quality=90)
    for i, f in enumerate(white):
        load_rgb(f).save(out_dir / "whitening" / f"w_{i:05d}.jpg", quality=90)
    rows, edit_rows, q = [], [], 0
    order = [(i, c) for i in range(len(orig)) for c in range(copies)]
    rng.shuffle(order)                                       # query numbers say nothing
    for i, _ in order:
        img, edits = strong_copy(load_rgb(orig[i]), rng)
        name = f"q_{q:05d}.jpg"
        img.save(out_dir / "queries" / name, quality=90)
        rows.append((name, db_name[i]))
        edit_rows.append((name, "+".join(edits)))
        q += 1
    with open(out_dir / "ground_truth.csv", "w", newline="") as f:
        csv.writer(f).writerows([("query", "match"), *rows])
    with open(out_dir / "edits.csv", "w", newline="") as f:
        csv.writer(f).writerows([("query", "edits"), *edit_rows])
    return len(rows)


def _replace_outputs(new: Path, out_dir: Path) -> None:
    """Move the benchmark in ``new`` to ``out_dir``, replacing an earlier run's. The old ground
    truth leaves first and the new one arrives last, so even a kill between two renames leaves no
    ground truth beside images it does not describe."""
    old = out_dir / ".make-copies.old"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in OUTPUTS:
        if (out_dir / name).exists() or (out_dir / name).is_symlink():
            os.replace(out_dir / name, old / name)
    for name in reversed(OUTPUTS):
        os.replace(new / name, out_dir / name)
    shutil.rmtree(old)
    new.rmdir()

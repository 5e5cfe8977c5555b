"""Image retrieval with frozen features: cosine ranking, average precision, mAP, precision@k.

The DINO paper's second emerging property (after k-NN classification): nearest neighbours in
the frozen feature space retrieve images of the same landmark (revisited Oxford and Paris). The
protocol is plain: embed every query and database image (the L2-normalised CLS token,
optionally averaged over a few image scales), rank the database by cosine similarity to each
query, and score the ranking with average precision.

Relevance comes either from class folders (a database image is relevant when it has the query's
class) or from a ground-truth CSV with the header ``query,match`` and one row per relevant pair;
an optional third column ``kind`` may say ``junk`` for images the revisited protocol removes
from the ranking before scoring (neither right nor wrong).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from .augment import IMAGENET_MEAN, IMAGENET_STD
from .data import MAX_ASPECT, cap_aspect, load_rgb, walk_once

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MULTISCALE = (1.0, 1 / math.sqrt(2), 0.5)


# --- scoring ------------------------------------------------------------------------------------

def average_precision(order, positives, junk=()) -> float:
    """AP of one ranking: the mean, over the relevant items, of the precision at each one's rank.

    ``order`` lists database indices best first; ``positives`` and ``junk`` are sets of indices.
    Junk items are deleted from the ranking first, so they move nobody up or down. Relevant items
    missing from ``order`` count as never retrieved (precision 0). No positives: NaN.
    """
    positives, junk = set(int(i) for i in positives), set(int(i) for i in junk)
    if not positives:
        return float("nan")
    hits, total, rank = 0, 0.0, 0
    for idx in order:
        idx = int(idx)
        if idx in junk:
            continue
        rank += 1
        if idx in positives:
            hits += 1
            total += hits / rank
    return total / len(positives)


def rank_database(queries: torch.Tensor, database: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of L2-normalised rows and, per query, the database indices best first."""
    sim = F.normalize(queries.float(), dim=-1) @ F.normalize(database.float(), dim=-1).T
    return sim, sim.argsort(dim=1, descending=True, stable=True)


def score_rankings(order: torch.Tensor, positive: torch.Tensor, junk: torch.Tensor | None = None,
                   ks=(1, 5, 10)) -> dict:
    """mAP, mean precision@k and recall@k of rankings ``order`` [Q, N] against boolean relevance
    ``positive`` [Q, N] (and ``junk`` [Q, N]); queries without any relevant item are skipped.

    Returns fractions (0 to 1) plus ``ap`` (per query, NaN where skipped) and ``queries`` (the
    number scored). Junk items are removed from each ranking before precision and recall too.
    """
    if order.shape != positive.shape:
        raise ValueError(f"ranking {tuple(order.shape)} and relevance {tuple(positive.shape)} differ")
    junk = torch.zeros_like(positive) if junk is None else junk
    aps, prec, rec = [], {k: [] for k in ks}, {k: [] for k in ks}
    for q in range(len(order)):
        pos = positive[q].nonzero().flatten().tolist()
        aps.append(average_precision(order[q].tolist(), pos, junk[q].nonzero().flatten().tolist()))
        if not pos:
            continue
        kept = order[q][~junk[q][order[q]]]                # the ranking without junk
        rel = positive[q][kept].float()
        for k in ks:
            prec[k].append(float(rel[:k].sum()) / k)
            rec[k].append(float(rel[:k].sum()) / len(pos))
    scored = [a for a in aps if not math.isnan(a)]
    if not scored:
        raise ValueError("no query has a relevant database image: check the ground truth")
    out = {"mAP": float(np.mean(scored)), "queries": len(scored), "ap": aps}
    for k in ks:
        out[f"precision@{k}"] = float(np.mean(prec[k]))
        out[f"recall@{k}"] = float(np.mean(rec[k]))
    return out


def chance_map(positive: torch.Tensor, junk: torch.Tensor | None = None) -> float:
    """The mAP a uniformly random ranking scores in expectation: the baseline for :func:`score_rankings`.

    For one query with ``m`` relevant items among ``n`` (junk removed), the item at rank ``k`` is
    relevant with probability m/n and then has, on average, 1 + (k-1)(m-1)/(n-1) relevant items
    at or above it, so E[AP] = (H_n + (m-1)/(n-1) (n - H_n)) / n with H_n = 1 + 1/2 + ... + 1/n:
    H_n / n for a single relevant item (far below 1/n times ten), m/n plus a little for many.
    Queries without a relevant item are skipped, as :func:`score_rankings` skips them.
    """
    junk = torch.zeros_like(positive) if junk is None else junk
    keep = ~junk.bool()
    ns = keep.sum(1).double()
    ms = (positive.bool() & keep).sum(1).double()
    aps = []
    for n, m in zip(ns.tolist(), ms.tolist()):
        if m == 0:
            continue
        h = float(sum(1.0 / k for k in range(1, int(n) + 1)))
        aps.append((h + (m - 1) / max(n - 1, 1) * (n - h)) / n)
    if not aps:
        raise ValueError("no query has a relevant database image: check the ground truth")
    return float(np.mean(aps))


# --- relevance ----------------------------------------------------------------------------------

def _is_image(path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder) -> tuple[list[Path], list[str] | None]:
    """Every image under ``folder``, its subfolders included, and their classes when every image
    sits in a subfolder (the class is the first-level folder's name), else ``None``: a folder
    that holds images directly *and* subfolders gives all of them, classless (a ground truth names
    them by their paths relative to ``folder``). Hidden files and folders (``.name``) are skipped;
    folder links are followed once (:func:`dino_lite.data.walk_once`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    direct = [p for p in entries if p.is_file() and _is_image(p)]
    subdirs = [p.name for p in entries if p.is_dir()]
    nested = walk_once(folder, {d: i for i, d in enumerate(subdirs)}, _is_image)
    files = direct + [Path(p) for p, _ in nested
                      if not any(part.startswith(".") for part in Path(p).relative_to(folder).parts)]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its subfolders")
    if direct:
        return files, None
    return files, [Path(f).relative_to(folder).parts[0] for f in files]


def relevance_from_classes(query_classes, db_classes) -> torch.Tensor:
    """``[Q, N]`` boolean: database image n is relevant to query q when their classes match."""
    names = sorted(set(query_classes) | set(db_classes))
    idx = {c: i for i, c in enumerate(names)}
    q = torch.tensor([idx[c] for c in query_classes])
    d = torch.tensor([idx[c] for c in db_classes])
    return q[:, None] == d[None, :]


def read_ground_truth(path, query_names, db_names) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance ``(positive, junk)`` [Q, N] from a CSV ``query,match[,kind]`` (names relative to
    the query and database folders; ``kind`` is ``positive`` (default) or ``junk``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} does not exist")
    qi = {n: i for i, n in enumerate(query_names)}
    di = {n: i for i, n in enumerate(db_names)}
    positive = torch.zeros(len(query_names), len(db_names), dtype=torch.bool)
    junk = torch.zeros_like(positive)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"query", "match"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV with the header 'query,match' "
                             f"(got {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            q, m, kind = row["query"], row["match"], (row.get("kind") or "positive").strip()
            if q not in qi:
                raise ValueError(f"{path}:{line}: query {q!r} is not among the query images")
            if m not in di:
                raise ValueError(f"{path}:{line}: match {m!r} is not among the database images")
            if kind not in ("positive", "junk"):
                raise ValueError(f"{path}:{line}: kind must be 'positive' or 'junk', got {kind!r}")
            (junk if kind == "junk" else positive)[qi[q], di[m]] = True
    return positive, junk & ~positive


def relative_names(files, root) -> list[str]:
    """File names as the ground truth writes them: relative to ``root``, with forward slashes."""
    return [Path(f).relative_to(root).as_posix() for f in files]


# --- features -----------------------------------------------------------------------------------

def image_tensor(path, size: int, multiple: int = 1, max_aspect: float | None = None,
                 cropped: list | None = None) -> torch.Tensor:
    """One image resized (aspect kept, shorter side ``size``, both sides rounded to a multiple of
    the patch size), as a normalised ``[3, H, W]`` tensor. No crop (an edit may live at a border),
    except, with ``max_aspect``, of an image more elongated than that, whose centre at
    ``max_aspect`` : 1 is used (:func:`dino_lite.data.cap_aspect`); ``cropped``, if given,
    collects ``(path, (w, h))`` of those."""
    img = load_rgb(path)
    capped = img if max_aspect is None else cap_aspect(img, max_aspect)
    if capped is not img and cropped is not None:
        cropped.append((path, img.size))
    w, h = capped.size
    s = size / min(w, h)
    hw = [max(multiple, round(v * s / multiple) * multiple) for v in (h, w)]
    tf = T.Compose([T.ToImage(), T.Resize(hw, antialias=True), T.ToDtype(torch.float32, scale=True),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return tf(capped)


def _patch(backbone) -> int:
    pe = getattr(backbone, "patch_embed", None)
    return int(pe.patch_size[0]) if pe is not None else 1


def embed_images(backbone, files, size: int, scales=(1.0,), features=None,
                 batch_size: int = 64, precision=None) -> torch.Tensor:
    """L2-normalised features of every image: ``features(backbone, x)`` (default: the CLS token)
    at each scale of ``size``, averaged over scales, then normalised again. An image more
    elongated than 4:1 is cut to its central 4:1 part first, with a warning naming it: resized by
    its short side, a 1000 x 2 px image would become 32,000 patches.

    Images of the same resized shape are batched together; the rest go one at a time.
    ``precision`` (a :class:`dino_lite.precision.Precision`) is the evaluation precision, by
    default this machine's decision for the backbone.
    """
    from .evaluate import evaluation_precision
    features = features or (lambda net, x: net(x))
    backbone.eval()
    device = next(backbone.parameters()).device
    # chosen outside no_grad: the first call per width may time a training step, backward included
    prec = precision or evaluation_precision(backbone)
    with torch.no_grad():
        return _embed(backbone, files, size, scales, features, batch_size, prec, device)


def _embed(backbone, files, size, scales, features, batch_size, prec, device):
    multiple = _patch(backbone)
    total, cropped = None, []
    for s in scales:
        tensors = [image_tensor(f, max(multiple, round(size * s)), multiple, MAX_ASPECT, cropped)
                   for f in files]
        if cropped and s == scales[0]:
            warnings.warn(f"{len(cropped)} image(s) more elongated than {MAX_ASPECT}:1 were "
                          f"centre-cropped to {MAX_ASPECT}:1 before resizing: " + ", ".join(
                              f"{p} ({w}x{h} px)" for p, (w, h) in cropped[:3])
                          + (" ..." if len(cropped) > 3 else ""), stacklevel=3)
        out = [None] * len(tensors)
        groups = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                x = torch.stack([tensors[i] for i in chunk]).to(device)
                with prec.autocast(device.type):
                    f = features(backbone, x).float().cpu()
                for i, row in zip(chunk, f):
                    out[i] = row
        feats = F.normalize(torch.stack(out), dim=-1)
        total = feats if total is None else total + feats
    return F.normalize(total, dim=-1)


def pixel_features(files, side: int = 16) -> torch.Tensor:
    """The raw-pixel baseline: each image squashed to ``side`` x ``side`` RGB, flattened, minus its
    own mean, L2-normalised (cosine similarity of thumbnails)."""
    tf = T.Compose([T.ToImage(), T.Resize((side, side), antialias=True),
                    T.ToDtype(torch.float32, scale=True)])
    x = torch.stack([tf(load_rgb(f)).flatten() for f in files])
    return F.normalize(x - x.mean(1, keepdim=True), dim=-1)


# --- figure -------------------------------------------------------------------------------------

def retrieval_figure(query_files, db_files, order, positive, queries=None, top: int = 5,
                     junk=None, thumb: int = 96):
    """Rows of a query and its ``top`` matches, each framed green (relevant), red (not) or grey
    (junk). ``queries`` picks the rows (default: the first four)."""
    import matplotlib.pyplot as plt
    queries = list(range(min(4, len(query_files)))) if queries is None else list(queries)
    fig, axes = plt.subplots(len(queries), top + 1, figsize=(1.5 * (top + 1), 1.6 * len(queries)),
                             squeeze=False)
    for row, q in enumerate(queries):
        axes[row, 0].imshow(load_rgb(query_files[q]).resize((thumb, thumb)))
        axes[row, 0].set_title(f"query {Path(query_files[q]).name}"[:22], fontsize=6)
        for col in range(top):
            ax = axes[row, col + 1]
            if col >= order.shape[1]:
                ax.axis("off")
                continue
            n = int(order[q, col])
            ax.imshow(load_rgb(db_files[n]).resize((thumb, thumb)))
            is_junk = junk is not None and bool(junk[q, n])
            ok = bool(positive[q, n])
            color = "grey" if is_junk else ("limegreen" if ok else "red")
            ax.set_title(f"#{col + 1} {'junk' if is_junk else ('right' if ok else 'wrong')}",
                         fontsize=6, color=color)
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig

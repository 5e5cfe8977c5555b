"""Features of a folder of images, written to files: what ``python -m dino_lite embed`` does.

Every image under the folder, at any depth, is resized and centre-cropped as k-NN evaluation
does (:func:`dino_lite.data.eval_transform`), passed through the backbone and pooled: the CLS token (``cls``, the feature k-NN reads), the mean of the patch
tokens (``mean``), every patch token (``patch``), or copy detection's CLS + GeM descriptor
(``cls_gem``). Two files come out, in the same order:

- ``OUT.npy``, float32, ``[N, D]`` (``patch``: ``[N, tokens, D]``), not L2-normalised;
- ``OUT.csv`` with the columns ``index,path,class``: the row of ``OUT.npy``, the image's path
  relative to the folder, and its class: the first-level subfolder it sits in when every image
  sits in one (one subfolder per class), else empty. Which files are images, in which order, and
  their classes follow :func:`dino_lite.retrieval.list_images`, as for retrieval.

Batches are written to a memory-mapped ``.npy`` as they come, so memory holds one batch whatever
the folder's size. Files that cannot be read are skipped, named on the console and listed in
``OUT.skipped.csv``. :func:`knn_from_files` scores weighted k-NN between two such files
(:func:`dino_lite.evaluate.knn_classify`), the labels taken from their class column;
:func:`ranking_from_files` gives retrieval and copy detection their queries and database.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ImageLoadError, eval_transform, load_rgb
from .evaluate import evaluation_precision, knn_classify
from .retrieval import list_images

POOLS = ("cls", "mean", "patch", "cls_gem")


def output_paths(out) -> dict:
    """The files ``embed`` writes for ``--out OUT`` (a trailing ``.npy`` or ``.csv`` is dropped)."""
    out = Path(out)
    if out.suffix in (".npy", ".csv"):
        out = out.with_suffix("")
    return {"features": out.with_name(out.name + ".npy"), "paths": out.with_name(out.name + ".csv"),
            "skipped": out.with_name(out.name + ".skipped.csv")}


def pooled(backbone, x: torch.Tensor, pool: str) -> torch.Tensor:
    """``[B, D]`` (``cls``, ``mean``) or ``[B, tokens, D]`` (``patch``) features of a batch. A CNN
    has no tokens: its pooled feature map stands for ``cls`` and ``mean``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if not hasattr(backbone, "forward_features"):
        if pool == "patch":
            raise ValueError("--pool patch needs a ViT: a ResNet gives one pooled vector per "
                             "image (use cls or mean)")
        return backbone(x)
    if pool == "cls":
        return backbone(x)                       # the final-norm CLS token, as k-NN reads it
    if pool == "cls_gem":                        # copy detection's descriptor (copydetect.py)
        from .copydetect import cls_gem_features
        return cls_gem_features(backbone, x)
    patches = backbone.forward_features(x)[:, getattr(backbone, "num_prefix_tokens", 1):]
    return patches.mean(1) if pool == "mean" else patches


class _Images(torch.utils.data.Dataset):
    """``(image tensor, index, "")``, or ``(None, index, why)`` for a file that cannot be read."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.transform(load_rgb(self.files[i])), i, ""
        except ImageLoadError as e:
            return None, i, str(e.__cause__ or e)


def _collate(batch):
    good = [b for b in batch if b[0] is not None]
    x = torch.stack([b[0] for b in good]) if good else None
    return x, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[0] is None]


def _shrink(path: Path, rows: int, chunk: int = 4096) -> None:
    """Keep the first ``rows`` rows of the ``.npy`` at ``path``, copying chunk by chunk."""
    old = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.name + ".shrink")
    try:
        new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype,
                                        shape=(rows,) + old.shape[1:])
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            new[start:stop] = old[start:stop]
        new.flush()
        del new, old
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def _batches(backbone, loader, pool: str, bf16: bool, device):
    """``(features or None, indices, [(index, why), ...] unreadable)`` of each batch."""
    for x, idx, bad in loader:
        feats = None
        if x is not None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                feats = pooled(backbone, x.to(device), pool).float().cpu().numpy()
        yield feats, idx, bad


def embed_folder(backbone, folder, out, pool: str = "cls", image_size: int = 64,
                 batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                 bf16: bool | None = None) -> dict:
    """Write the features of every image under ``folder`` to ``OUT.npy`` and their paths and
    classes to ``OUT.csv`` (see the module doc); returns what was written: ``images``,
    ``shape``, ``pool``, ``features``, ``paths``, ``skipped`` (``[path, why]`` pairs) and
    ``skipped_file`` (or None). ``bf16=None``: this machine's evaluation precision, as k-NN's.
    Both files are written under temporary names and renamed at the end: a stopped run leaves
    no half-written file behind."""
    folder = Path(folder)
    files, classes = list_images(folder)     # an error when there is no image
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if patch is not None and image_size % patch[0]:
        raise ValueError(f"--image-size {image_size} is not a multiple of the model's patch size "
                         f"{patch[0]}")
    paths = output_paths(out)
    paths["features"].parent.mkdir(parents=True, exist_ok=True)
    tmp = {k: p.with_name(f".{p.name}.tmp{os.getpid()}") for k, p in paths.items()}
    names = [Path(f).relative_to(folder).as_posix() for f in files]
    classes = classes or [""] * len(files)
    backbone.eval()
    device = next(backbone.parameters()).device
    if bf16 is None:                             # as k-NN evaluation computes
        bf16 = evaluation_precision(backbone).bf16
    loader = torch.utils.data.DataLoader(_Images(files, eval_transform(image_size)), batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    array, rows, skipped = None, 0, []
    try:
        with open(tmp["paths"], "w", newline="") as f, \
                tqdm(total=len(files), desc="embed", unit="img", disable=not progress) as bar:
            table = csv.writer(f)
            table.writerow(["index", "path", "class"])
            for feats, idx, bad in _batches(backbone, loader, pool, bf16, device):
                for i, why in bad:
                    skipped.append([names[i], why])
                    tqdm.write(f"skipped {folder / names[i]}: cannot read it ({why})",
                               file=sys.stderr)
                if feats is not None:
                    if array is None:       # the feature shape is known from the first batch
                        array = np.lib.format.open_memmap(tmp["features"], mode="w+",
                                                          dtype=np.float32,
                                                          shape=(len(files),) + feats.shape[1:])
                    array[rows:rows + len(feats)] = feats
                    table.writerows([row, names[i], classes[i]] for row, i in enumerate(idx, rows))
                    rows += len(feats)
                bar.update(len(idx) + len(bad))
        if array is None:
            raise ValueError(f"none of the {len(files)} images under {folder} could be read "
                             f"(the first: {skipped[0][0]}: {skipped[0][1]})")
        shape = [rows, *array.shape[1:]]
        array.flush()
        del array
        if rows < len(files):                    # skipped files: drop the unused rows
            _shrink(tmp["features"], rows)
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    os.replace(tmp["features"], paths["features"])
    os.replace(tmp["paths"], paths["paths"])
    paths["skipped"].unlink(missing_ok=True)     # an earlier run's list
    if skipped:
        with open(paths["skipped"], "w", newline="") as f:
            csv.writer(f).writerows([["path", "error"], *skipped])
    return {"images": rows, "shape": shape, "pool": pool, "features": str(paths["features"]),
            "paths": str(paths["paths"]), "skipped": skipped,
            "skipped_file": str(paths["skipped"]) if skipped else None}


def read_embeddings(path) -> tuple[np.ndarray, list[str], list[str]]:
    """``(features, paths, classes)`` of an ``embed`` output: the ``.npy`` (memory-mapped) and
    its ``.csv`` (found beside it), checked to describe the same images."""
    files = output_paths(path)
    if not files["features"].is_file():
        raise FileNotFoundError(f"feature file {files['features']} does not exist")
    if not files["paths"].is_file():
        raise FileNotFoundError(f"{files['features']} has no {files['paths'].name} beside it: "
                                f"the image list embed writes with the features")
    try:
        feats = np.load(files["features"], mmap_mode="r")
    except ValueError as e:
        raise ValueError(f"cannot read {files['features']} as a .npy array: {e}") from None
    with open(files["paths"], newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "class"} <= set(reader.fieldnames):
            raise ValueError(f"{files['paths']}: expected the header index,path,class "
                             f"(got {reader.fieldnames})")
        rows = list(reader)
    if len(rows) != len(feats):
        raise ValueError(f"{files['features']} holds {len(feats)} rows but {files['paths']} "
                         f"lists {len(rows)} images; they are not one embed run's output")
    return feats, [r["path"] for r in rows], [r["class"] for r in rows]


def _vectors(path, feats) -> torch.Tensor:
    if feats.ndim != 2:
        raise ValueError(f"k-NN needs one vector per image, but {path} holds "
                         f"{list(feats.shape)} (patch tokens); embed with --pool cls or mean")
    return F.normalize(torch.from_numpy(np.array(feats, dtype=np.float32)), dim=-1)


def knn_from_files(train, test, k: int = 20, temperature: float = 0.07) -> dict:
    """Weighted k-NN top-1 (0 to 1) of the images of ``test`` against those of ``train``, two
    ``embed`` outputs: the features L2-normalised as k-NN evaluation does, the labels from the
    class column (class names numbered in sorted order, as image folders number them)."""
    (ftr, _, ctr), (fte, _, cte) = read_embeddings(train), read_embeddings(test)
    xtr, xte = _vectors(train, ftr), _vectors(test, fte)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"{train} has {xtr.shape[1]}-dimensional features and {test} "
                         f"{xte.shape[1]}: embed both with the same model and --pool")
    for path, classes in ((train, ctr), (test, cte)):
        missing = sum(1 for c in classes if not c)
        if missing == len(classes):
            raise ValueError(f"k-NN needs labels, and {path} has none: its images were not in "
                             f"class subfolders (the csv's class column is empty); embed a "
                             f"folder with one subfolder per class")
        if missing:
            raise ValueError(f"{missing} of the {len(classes)} images of {path} have no class in "
                             f"its csv: every image needs one for k-NN")
    names = sorted(set(ctr))
    unknown = sorted(set(cte) - set(names))
    if unknown:
        raise ValueError(f"{test} has classes that {train} lacks: {unknown}; their images could "
                         f"not be scored against a class")
    index = {c: i for i, c in enumerate(names)}
    ytr = torch.tensor([index[c] for c in ctr])
    yte = torch.tensor([index[c] for c in cte])
    preds = knn_classify(xtr, ytr, xte, k, temperature, num_classes=len(names))
    return {"knn_top1": float((preds == yte).float().mean()), "train": len(ytr), "test": len(yte),
            "classes": len(names)}


def ranking_from_files(queries, database, ground_truth=None):
    """What retrieval and copy detection rank, from two ``embed`` outputs: the query and database
    features (``[N, D]``, L2-normalised as :func:`dino_lite.retrieval.embed_images` returns
    them), their image paths, and the relevance
    ``(positive, junk)``: from ``ground_truth`` (a CSV of query and database paths, as
    :func:`dino_lite.retrieval.read_ground_truth` reads it, against the csv's paths), else from
    the class columns (a database image is relevant to a query of its class)."""
    from .retrieval import read_ground_truth, relevance_from_classes
    (fq, nq, cq), (fd, nd, cd) = read_embeddings(queries), read_embeddings(database)
    for path, feats in ((queries, fq), (database, fd)):
        if feats.ndim != 2:
            raise ValueError(f"ranking needs one vector per image, but {path} holds "
                             f"{list(feats.shape)} (patch tokens); embed with --pool cls, mean "
                             f"or cls_gem")
    if fq.shape[1] != fd.shape[1]:
        raise ValueError(f"{queries} has {fq.shape[1]}-dimensional features and {database} "
                         f"{fd.shape[1]}: embed both with the same model and --pool")
    if ground_truth:
        positive, junk = read_ground_truth(ground_truth, nq, nd)
    else:
        for path, classes in ((queries, cq), (database, cd)):
            if not all(classes):
                raise ValueError(f"{path} has images without a class in its csv: without "
                                 f"--ground-truth, relevance comes from the classes (embed folders "
                                 f"with one subfolder per class)")
        positive, junk = relevance_from_classes(cq, cd), None
    as_tensor = lambda f: F.normalize(torch.from_numpy(np.array(f, dtype=np.float32)), dim=-1)
    return as_tensor(fq), as_tensor(fd), nq, nd, positive, junk

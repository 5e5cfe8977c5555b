"""Datasets and augmentations: the embedded shapes, image folders, torchvision datasets, multi-crop.

A data *spec* is ``shapes`` (the embedded dataset), a folder, a torchvision dataset name
(``cifar10``, ``stl10``, ``imagenette``), or ``fake`` (generated noise images at the preset's
size, for measuring throughput). A folder is *labelled* when it holds ``train/`` and ``val/``
(or ``test/``) with one subfolder per class; any other folder of images (flat or nested, with or
without ``train/``) is read without labels: enough to train on, not to score k-NN or a probe.

``shared:NAME`` names one of the shared data sets: :func:`resolve_data` finds ``NAME`` under
:func:`shared_data_root`, else under :func:`download_root`, where ``python -m dino_lite data
download`` puts it (docs/data.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2 as T

from .augment import IMAGENET_MEAN, IMAGENET_STD
from .shapes import ShapesDataset

TORCHVISION_DATASETS = ("cifar10", "stl10", "imagenette")
# the image files read from folders (torchvision's list; the case of the suffix does not matter)
IMAGE_EXTENSIONS = torchvision.datasets.folder.IMG_EXTENSIONS
FAKE_SIZES = {True: 20000, False: 1000}   # the `fake` spec: random-noise images, for throughput runs
SHARED_DATA_ENV = "DINO_LITE_SHARED_DATA"
DOWNLOAD_ENV = "DINO_LITE_DATA"
SHARED = "shared:"          # data spec prefix: a data set under the shared data root


def shared_data_root() -> Path:
    """The folder holding the shared data sets: ``$DINO_LITE_SHARED_DATA`` if set, else
    ``../shared/data`` next to the repository (found from this file, not the working directory)."""
    root = os.environ.get(SHARED_DATA_ENV)
    return Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"


def download_root() -> Path:
    """Where ``python -m dino_lite data download`` puts data sets, and torchvision's data sets
    and caches go: ``$DINO_LITE_DATA`` if set, else the repository's ``data/`` (git-ignored)."""
    root = os.environ.get(DOWNLOAD_ENV)
    return Path(root) if root else Path(__file__).resolve().parents[1] / "data"


DATA_ROOT = download_root()


def data_search_path(name: str) -> list[Path]:
    """The places a data set ``name`` is looked for, in order: the shared root, the download root."""
    return [shared_data_root() / name, download_root() / name]


def find_data(name: str) -> Path | None:
    """The first folder of :func:`data_search_path` that exists and is not empty, or None."""
    return next((p for p in data_search_path(name) if p.is_dir() and any(p.iterdir())), None)


def resolve_data(spec: str) -> str:
    """``shared:NAME`` -> the folder :func:`find_data` finds for ``NAME``; when neither place has
    it, the path under :func:`shared_data_root` (whose absence the caller reports, e.g. with
    :func:`dino_lite.download.how_to_get`). Other specs are returned unchanged."""
    if isinstance(spec, str) and spec.startswith(SHARED):
        name = spec[len(SHARED):]
        return str(find_data(name) or shared_data_root() / name)
    return spec


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded as asked; the message says why."""


class ImageLoadError(DatasetError):
    """An image file that cannot be decoded; the message names the file."""


def rgb8(im: Image.Image) -> Image.Image:
    """A loaded image as 8-bit RGB, whatever its mode: 16-bit and float images stretched to
    0-255, palette and transparent images composited on white, grayscale and CMYK converted."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6) * 255
        im = Image.fromarray(a.astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Open any image as 8-bit RGB (:func:`rgb8`)."""
    try:
        with Image.open(path) as im:
            im.load()
            return rgb8(im)
    except Exception as e:  # PIL raises several types; the path is what the user needs
        raise ImageLoadError(f"cannot read image {path}: {e}") from e


def natural_key(path) -> tuple:
    """A sort key that orders the numbers in file names by value: ``2.jpg`` before ``10.jpg``
    (ffmpeg names extracted frames ``1.jpg ... 60.jpg``, without zero padding)."""
    return tuple((0, int(t), t) if t.isdigit() else (1, t.lower(), t)
                 for t in re.split(r"(\d+)", Path(path).name) if t)


MAX_ASPECT = 4          # longest side : shortest side that reaches a resize


def cap_aspect(img: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``img`` centre-cropped along its long side to at most ``max_aspect`` : 1 (unchanged when
    within). Resized by its short side, a 1000 x 2 px image would become 32000 x 64 px: tens of
    thousands of patches, gigabytes of attention."""
    w, h = img.size
    long_side = int(max_aspect * min(w, h))
    if max(w, h) <= long_side:
        return img
    if w > h:
        left = (w - long_side) // 2
        return img.crop((left, 0, left + long_side, h))
    top = (h - long_side) // 2
    return img.crop((0, top, w, top + long_side))


def class_folders(root) -> list[str]:
    """The class names of an image folder split: its subfolders, sorted."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def is_image_file(path) -> bool:
    """Whether ``path`` names an image file by its suffix (:data:`IMAGE_EXTENSIONS`, any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _walk(top, seen: set, skipped: list):
    """``os.walk(top, followlinks=True)``, entering no real folder twice: ``seen`` holds the real
    paths already entered, and a folder (link) leading to one of them is added to ``skipped``."""
    for here, dirs, files in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(here, d))
            if real in seen:
                skipped.append(os.path.join(here, d))
            else:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        yield here, files


def _warn_skipped(root, skipped):
    if skipped:
        warnings.warn(f"{len(skipped)} folder link(s) under {root} lead to folders already "
                      f"included and were not followed: {skipped[:4]}", stacklevel=4)


def walk_once(directory, class_to_idx: dict, is_valid_file) -> list[tuple[str, int]]:
    """``(path, label)`` of every valid file under ``directory/<class>/``, in torchvision's order.

    Folder symlinks are followed, but no real folder is entered twice: a link to a folder already
    included (a loop such as ``cat/loop -> ..``, or a link into another class's folder) is
    skipped with a warning, where ``os.walk(followlinks=True)`` would count its images again on
    every lap. (Two links to one *file* still count it twice.)"""
    root = Path(directory)
    seen = {os.path.realpath(root)} | {os.path.realpath(root / c) for c in class_to_idx}
    found, skipped = [], []
    for cls in sorted(class_to_idx):
        if not (root / cls).is_dir():
            continue
        for here, files in _walk(root / cls, seen, skipped):
            found.append((cls, here, files, class_to_idx[cls]))
    _warn_skipped(root, skipped)
    return [(os.path.join(here, f), label) for _, here, files, label in sorted(found)
            for f in sorted(files) if is_valid_file(os.path.join(here, f))]


def find_images(root) -> list[Path]:
    """Every image file under ``root`` at any depth (:func:`is_image_file`), sorted by its path
    relative to ``root``; hidden files and folders (``.name``: ``.DS_Store``, macOS's ``._``
    copies) are skipped and folder links followed once, as in :func:`walk_once`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    found, skipped = [], []
    for here, files in _walk(root, {os.path.realpath(root)}, skipped):
        if any(part.startswith(".") for part in Path(here).relative_to(root).parts):
            continue
        found += [Path(here, f) for f in files if is_image_file(f) and not f.startswith(".")]
    _warn_skipped(root, skipped)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


class ImageList(torch.utils.data.Dataset):
    """Every image under a folder at any depth, without labels (each label is -1): a user's
    own unlabelled images, for training. ``files`` are the images' paths, sorted."""

    def __init__(self, root, transform=None):
        self.root, self.transform = Path(root), transform
        self.files = find_images(self.root)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root} "
                                    f"or its subfolders")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_rgb(self.files[i])
        return (self.transform(img) if self.transform else img), -1


def labelled_split(root: Path) -> bool:
    """Whether a ``train/`` folder holds class subfolders (the labelled layout)."""
    return root.is_dir() and bool(class_folders(root))


def require_labels(spec, command: str = "this command"):
    """Raise :class:`DatasetError` at once when ``spec`` is a folder without labels (see the
    module doc): ``command`` (``knn``, ``linear``, ...) could only fail later, or score nothing."""
    path = Path(str(spec)).expanduser()
    if spec in ("shapes", "fake", *TORCHVISION_DATASETS) or not path.is_dir():
        return
    if labelled_split(path / "train"):
        return
    images = len(find_images(path))
    raise DatasetError(
        f"{command} needs labels, and {path} has none: {images} images without class folders "
        f"(expected {path}/train/<class>/ and {path}/val/<class>/ with the images in them). "
        f"Unlabelled images are enough for `train --data {path}` and `embed`")


def describe_folder(spec, dataset) -> str | None:
    """One line on what a training folder holds, labelled or not (None for other specs)."""
    if isinstance(dataset, ImageFolder):
        return (f"data {spec}: {len(dataset)} training images in {len(dataset.classes)} class "
                f"folders of train/ (labelled)")
    if isinstance(dataset, ImageList):
        where = " of train/" if dataset.root.name == "train" else ""
        return (f"data {spec}: {len(dataset)} images{where}, without class folders (unlabelled: "
                f"enough to train; knn, linear and finetune need train/<class>/ and val/<class>/)")
    return None


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder with RGB conversion, errors that name the folder or file, folder
    symlinks followed once (:func:`walk_once`), and optionally the class list of another split.

    ``classes`` (the training split's class names) numbers the labels by class *name*, so an
    evaluation split with a different set of class folders scores each image against its own
    class: a class folder the training split lacks is an error, a missing one a warning."""

    def __init__(self, root, transform=None, classes: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.given_classes = classes
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"no images found in {root}: expected one subfolder per class holding image "
                f"files ({e})") from e

    def find_classes(self, directory):
        if self.given_classes is None:
            return super().find_classes(directory)
        here = class_folders(directory)
        extra = sorted(set(here) - set(self.given_classes))
        if extra:
            raise ValueError(f"{directory} has class folders that the training split lacks: "
                             f"{extra}; its images could not be scored against a class "
                             f"(training classes: {self.given_classes})")
        missing = sorted(set(self.given_classes) - set(here))
        if missing:
            warnings.warn(f"{directory} has no folder for the training classes {missing}; "
                          f"scores cover the other classes", stacklevel=2)
        return list(self.given_classes), {c: i for i, c in enumerate(self.given_classes)
                                          if c in here}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty=False):
        if is_valid_file is None:
            def is_valid_file(path):
                return torchvision.datasets.folder.has_file_allowed_extension(path, extensions)
        samples = walk_once(directory, class_to_idx, is_valid_file)
        empty = sorted(set(class_to_idx) - {Path(p).relative_to(directory).parts[0]
                                            for p, _ in samples})
        if empty and not allow_empty:
            raise FileNotFoundError(f"found no image files for the classes {empty}")
        return samples


def _folder_split(root: Path, train: bool) -> Path:
    if train:
        return root / "train"
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root} has no val/ or test/ folder for evaluation")


def _torchvision_dataset(name, train, transform, root):
    root = Path(root) / name
    try:
        if name == "cifar10":
            return torchvision.datasets.CIFAR10(root, train=train, transform=transform, download=True)
        if name == "stl10":
            return torchvision.datasets.STL10(root, split="train" if train else "test",
                                              transform=transform, download=True)
        return torchvision.datasets.Imagenette(root, split="train" if train else "val", size="160px",
                                               transform=transform,
                                               download=not (root / "imagenette2-160").exists())
    except Exception as e:
        raise DatasetError(
            f"could not load torchvision dataset {name!r} into {root}: {e}. It is downloaded on "
            f"first use, which needs internet; offline, copy it there or pass a folder with "
            f"--data PATH") from e


@contextlib.contextmanager
def one_at_a_time(lock_file):
    """Hold an OS lock on ``lock_file`` (created if need be) for the ``with`` block, so that
    processes that run the block at once take turns. Without ``fcntl`` (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dataset(spec: str, train: bool, transform=None, root=DATA_ROOT, image_size: int = 64):
    """The dataset named by ``spec`` (see module doc), returning ``(image, label)`` pairs."""
    if spec == "shapes":
        # the ranks of a torchrun job on a fresh clone all ask for the shapes at once: the
        # first draws them and writes the cache, the others wait for it and read it
        cache = Path(root) / "cache"
        with one_at_a_time(cache / ".shapes.lock"):
            return ShapesDataset("train" if train else "test", size=max(64, image_size),
                                 transform=transform, cache_dir=cache)
    if spec in TORCHVISION_DATASETS:
        return _torchvision_dataset(spec, train, transform, root)
    if spec == "fake":
        return torchvision.datasets.FakeData(FAKE_SIZES[train], (3, image_size, image_size), 10,
                                             transform=transform,
                                             random_offset=0 if train else FAKE_SIZES[True])
    path = Path(spec).expanduser()
    if path.is_dir():
        if train:
            if labelled_split(path / "train"):
                return ImageFolder(path / "train", transform)
            # a folder of images without class folders: train/ if there is one, else all of it
            return ImageList(path / "train" if (path / "train").is_dir() else path, transform)
        require_labels(path, "evaluation")
        # labels by class name, as the training split numbers them
        classes = class_folders(path / "train") if (path / "train").is_dir() else None
        return ImageFolder(_folder_split(path, False), transform, classes)
    if spec == "imagenet":
        raise FileNotFoundError("the imagenet presets need --data /path/to/imagenet, a folder with "
                                "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (see README)")
    raise FileNotFoundError(f"data spec {spec!r} is neither 'shapes', 'fake', a torchvision "
                            f"dataset {TORCHVISION_DATASETS}, nor an existing folder")


def eval_transform(size: int):
    """Resize and centre-crop to ``size`` (the 256/224 ratio for large images), then normalise."""
    resize = int(round(size * 256 / 224)) if size >= 128 else size
    return T.Compose([T.ToImage(), T.Resize(resize, antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def seed_for(*parts) -> int:
    """A 63-bit seed derived from any tuple of values (stable across processes and runs)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def subset_indices(n: int, fraction: float, seed: int) -> list[int]:
    """``max(1, round(fraction * n))`` of ``n`` indices, drawn by ``seed``, sorted."""
    g = torch.Generator().manual_seed(seed_for(seed, "subset"))
    return sorted(torch.randperm(n, generator=g)[:max(1, round(fraction * n))].tolist())


class Transformed(torch.utils.data.Dataset):
    """``(transform(image), label)`` for each item of ``dataset``."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return self.transform(image), label


class SeededViews(torch.utils.data.Dataset):
    """Applies a random transform with randomness fixed by ``(seed, epoch, index)``.

    The views of sample ``i`` in epoch ``e`` are the same whichever worker draws them and
    whether training ran straight through or was resumed: that is what makes resume exact.
    """

    def __init__(self, dataset, transform, seed=0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        img, label = self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.seed, self.epoch, i))
            return self.transform(img), label


class EpochSampler(torch.utils.data.Sampler):
    """Seeded permutation per epoch, split across ranks, able to start at any batch of the epoch.

    ``batch_size`` is the *global* batch: each of the ``world_size`` ranks draws
    ``batch_size // world_size`` images, and together they see the same images, batch by batch,
    as one process would.
    """

    def __init__(self, n, batch_size, seed=0, rank=0, world_size=1):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} does not split evenly over "
                             f"{world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local_batch = batch_size // world_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = n // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {n} images is smaller than one global batch ({batch_size})")

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(seed_for(self.seed, self.epoch) % 2**62)
        perm = torch.randperm(self.n, generator=g)[: self.batches_per_epoch * self.batch_size]
        batches = perm.view(self.batches_per_epoch, self.world_size, self.local_batch)
        return iter(batches[self.start_batch:, self.rank].reshape(-1).tolist())

    def __len__(self):
        return (self.batches_per_epoch - self.start_batch) * self.local_batch


def collate_views(batch):
    """Stack a batch of (list of uint8 views, label) into (list of [B, C, H, W] tensors, labels)."""
    views = [torch.stack(v) for v in zip(*[b[0] for b in batch])]
    return views, torch.tensor([b[1] for b in batch])

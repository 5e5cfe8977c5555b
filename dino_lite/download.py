"""Fetch the real photo data sets the notebooks and presets use, from their original sources.

``python -m dino_lite data download NAME`` builds, under the download root
(:func:`dino_lite.data.download_root`), the same small layouts as the shared data folder:

- ``tinyimagenet-dev20``: 20 classes of Tiny-ImageNet-200 (cs231n's zip), ImageFolder layout;
- ``pets-mini``: Oxford-IIIT Pet, 3 breeds x 200 images with trimaps, longest side <= 320 px
  (the two archives torchvision's ``OxfordIIITPet`` downloads);
- ``davis-dev``: 6 DAVIS sequences at 480x270 with binary masks (the DAVIS-2017 trainval 480p zip).

Each archive goes through the same steps: stream it to ``NAME.part`` (resuming a partial file
with an HTTP range request), check its published checksum, then rename it into place, so an
interrupted or corrupted download never looks finished. The layout is built in a temporary
folder and renamed into place last, so a folder that exists is complete; a second call finds it
and does nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .data import data_search_path, download_root, find_data

CHUNK = 1 << 20


class DownloadError(OSError):
    """A download that could not be made (no network, server refused, bad archive)."""


class ChecksumError(DownloadError):
    """A downloaded file whose checksum differs from the published one."""


@dataclass(frozen=True)
class Archive:
    """One file to download, with the checksum its source (or a registry that pins it) gives."""
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None            # bytes, when known: only for the progress bar


@dataclass(frozen=True)
class DatasetSource:
    name: str                           # the folder name, as under the shared data root
    about: str
    archives: tuple[Archive, ...]
    build: Callable[[list[Path], Path], None]   # (downloaded archives, empty output folder)
    homepage: str
    layout: tuple[str, ...] = ()        # the top-level entries a built copy holds


# -- Tiny-ImageNet: 20 of the 200 classes ------------------------------------------------------

TINY_CLASSES = (
    "n01774750", "n01910747", "n01950731", "n02099601", "n02124075", "n02226429", "n02415577",
    "n02999410", "n03100240", "n03355925", "n03544143", "n03584254", "n03617480", "n03706229",
    "n03980874", "n04023962", "n04099969", "n04179913", "n04487081", "n07920052")


def build_tinyimagenet(archives: list[Path], out: Path, classes=TINY_CLASSES) -> None:
    """``tiny-imagenet-200.zip`` -> ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` (the val
    images sorted into class folders by ``val_annotations.txt``) and ``classes.txt``."""
    wanted = set(classes)
    with zipfile.ZipFile(archives[0]) as z:
        names = z.namelist()
        top = _zip_prefix(names, "words.txt")
        words = dict(line.split("\t", 1) for line in
                     z.read(top + "words.txt").decode().splitlines() if "\t" in line)
        val_class = dict(line.split("\t")[:2] for line in
                         z.read(top + "val/val_annotations.txt").decode().splitlines() if line)
        missing = wanted - {n.split("/")[-3] for n in names if "/train/" in n and n.endswith(".JPEG")}
        if missing:
            raise DownloadError(f"{archives[0].name} has no training images of {sorted(missing)}")
        for n in names:
            if not n.endswith(".JPEG"):
                continue
            parts = n[len(top):].split("/")
            if parts[0] == "train" and parts[1] in wanted:          # train/<wnid>/images/x.JPEG
                dest = out / "train" / parts[1] / parts[-1]
            elif parts[0] == "val" and val_class.get(parts[-1]) in wanted:   # val/images/x.JPEG
                dest = out / "val" / val_class[parts[-1]] / parts[-1]
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(n))                              # the original JPEG bytes
    (out / "classes.txt").write_text("".join(f"{c}\t{words.get(c, c).strip()}\n" for c in classes))


# -- Oxford-IIIT Pet: 3 breeds x 200 with trimaps ----------------------------------------------

PET_BREEDS = ("Abyssinian", "Bengal", "american_bulldog")
PET_PER_BREED = 200
PET_LONGEST_SIDE = 320


def build_pets(archives: list[Path], out: Path, breeds=PET_BREEDS, per_breed=PET_PER_BREED,
               longest=PET_LONGEST_SIDE) -> None:
    """``images.tar.gz`` + ``annotations.tar.gz`` -> ``images/<Breed>_<n>.jpg`` and
    ``trimaps/<Breed>_<n>.png`` (1 = pet, 2 = background, 3 = border): per breed the first
    ``per_breed`` images by number that decode and have a trimap, resized so that the longest
    side is at most ``longest`` px (trimaps with nearest-neighbour, so they keep their 3 values)."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, breeds))})_(\d+)$")
    images = _tar_members(archives[0], lambda p: p.suffix == ".jpg" and pattern.match(p.stem))
    trimaps = _tar_members(archives[1], lambda p: p.parent.name == "trimaps" and p.suffix == ".png"
                           and pattern.match(p.stem))
    (out / "images").mkdir(parents=True)
    (out / "trimaps").mkdir()
    for breed in breeds:
        stems = sorted((s for s in images if s.rsplit("_", 1)[0] == breed and s in trimaps),
                       key=lambda s: int(s.rsplit("_", 1)[1]))
        kept = 0
        for stem in stems:
            try:
                img = Image.open(io.BytesIO(images[stem]))
                img.load()
            except OSError:                      # the archive holds a few broken files
                continue
            img = img.convert("RGB")
            tri = Image.open(io.BytesIO(trimaps[stem]))
            if tri.size != img.size:
                continue
            scale = min(1.0, longest / max(img.size))
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img.resize(size, Image.LANCZOS).save(out / "images" / f"{stem}.jpg", quality=90)
            tri.convert("L").resize(size, Image.NEAREST).save(out / "trimaps" / f"{stem}.png")
            kept += 1
            if kept == per_breed:
                break
        if kept == 0:
            raise DownloadError(f"no usable {breed} image with a trimap in the Pet archives")


# -- DAVIS: 6 sequences, binary masks, 480x270 -------------------------------------------------

DAVIS_SEQUENCES = ("blackswan", "car-roundabout", "dog", "goat", "kite-surf", "libby")
DAVIS_SIZE = (480, 270)


def build_davis(archives: list[Path], out: Path, sequences=DAVIS_SEQUENCES, size=DAVIS_SIZE) -> None:
    """``DAVIS-2017-trainval-480p.zip`` -> ``JPEGImages/<seq>/00000.jpg`` and
    ``Annotations/<seq>/00000.png`` at ``size`` (w, h). DAVIS-2017 numbers each object of a
    frame; every object counts as foreground here (255; background 0), one object per sequence
    as in DAVIS-2016, where these sequences come from."""
    wanted = set(sequences)
    with zipfile.ZipFile(archives[0]) as z:
        for n in z.namelist():
            parts = n.split("/")
            if len(parts) < 4 or parts[-2] not in wanted or parts[-3] != "480p":
                continue
            kind, seq, frame = parts[-4], parts[-2], parts[-1]
            if kind == "JPEGImages" and frame.endswith(".jpg"):
                dest = out / kind / seq / frame
                dest.parent.mkdir(parents=True, exist_ok=True)
                img = Image.open(io.BytesIO(z.read(n))).convert("RGB")
                img.resize(size, Image.LANCZOS).save(dest, quality=90)
            elif kind == "Annotations" and frame.endswith(".png"):
                dest = out / kind / seq / frame
                dest.parent.mkdir(parents=True, exist_ok=True)
                ids = np.asarray(Image.open(io.BytesIO(z.read(n))))
                ids = ids[..., 0] if ids.ndim == 3 else ids
                mask = Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8), "L")
                mask.resize(size, Image.NEAREST).save(dest)
    found = {p.name for p in (out / "JPEGImages").iterdir()} if (out / "JPEGImages").is_dir() else set()
    if found != wanted:
        raise DownloadError(f"{archives[0].name} lacks the 480p sequences {sorted(wanted - found)}")


# -- the registry -----------------------------------------------------------------------------

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    DatasetSource(
        "tinyimagenet-dev20", "20 classes of Tiny-ImageNet-200, 64x64 (500 train, 50 val per class)",
        # cs231n publishes no checksum; this md5 is the one the zip's torchvision-style loaders
        # pin (the TinyImageNet VisionDataset classes that circulate with it)
        (Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                 md5="90528d7ca1a48142e341f4ef8d21d0de"),),
        build_tinyimagenet, "https://cs231n.stanford.edu/", ("classes.txt", "train", "val")),
    DatasetSource(
        "pets-mini", "Oxford-IIIT Pet, 3 breeds x 200 with trimaps, longest side <= 320 px",
        # the URLs and md5s of torchvision.datasets.OxfordIIITPet (tests check they still agree)
        (Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "images.tar.gz",
                 md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"),
         Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                 "annotations.tar.gz", md5="95a8c909bbe2e81eed6a22bccdf3f68f")),
        build_pets, "https://www.robots.ox.ac.uk/~vgg/data/pets/", ("images", "trimaps")),
    DatasetSource(
        "davis-dev", "6 DAVIS sequences (every frame, binary masks) at 480x270",
        # DAVIS publishes no checksum; this sha256 and size are the ones TensorFlow Datasets pins
        # for the same URL (tensorflow_datasets/video/davis/checksums.tsv)
        (Archive("https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip",
                 "DAVIS-2017-trainval-480p.zip",
                 sha256="e3d0b5b77c3d031b000a19e0e25e3e2cac65d183755601bc2cf066df1a2aa492",
                 size=832_766_765),),
        build_davis, "https://davischallenge.org/davis2017/code.html", ("Annotations", "JPEGImages")),
)}
ALIASES = {"tinyimagenet": "tinyimagenet-dev20", "pets": "pets-mini", "davis": "davis-dev"}


def source(name: str) -> DatasetSource:
    """The data set called ``name`` (a folder name, or its short alias)."""
    key = ALIASES.get(name, name)
    if key not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(SOURCES)} "
                         f"(or {sorted(ALIASES)})")
    return SOURCES[key]


def how_to_get(name: str) -> str:
    """What to tell a user who lacks data set ``name``: where it was looked for and how to get it."""
    src = source(name)
    where = " or ".join(str(p) for p in data_search_path(src.name))
    return (f"{src.name} ({src.about}) was not found in {where}. Get it with\n"
            f"    python -m dino_lite data download {src.name}\n"
            f"(needs internet; source: {src.homepage}), or set $DINO_LITE_SHARED_DATA to a folder "
            f"that holds {src.name}/.")


# -- downloading one file ---------------------------------------------------------------------

def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def mismatch(path: Path, archive: Archive) -> str | None:
    """``"md5 GOT, not the published EXPECTED"`` when ``path`` lacks the archive's published
    checksum, else None."""
    for algorithm in ("sha256", "md5"):
        expected = getattr(archive, algorithm)
        if expected:
            got = file_digest(path, algorithm)
            return None if got == expected.lower() else f"{algorithm} {got}, not the published {expected}"
    raise ChecksumError(f"{archive.filename} has no published checksum to verify it against")


def verify(path: Path, archive: Archive) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the archive's published checksum."""
    wrong = mismatch(path, archive)
    if wrong:
        raise ChecksumError(f"{path.name}: {wrong.replace(', not', ' differs from')} "
                            f"({archive.url})")


def _manual_steps(archive: Archive, dest: Path) -> str:
    return (f"Download it by hand from\n    {archive.url}\nsave it as\n    {dest}\n"
            "and run the same command again (it verifies the file and builds the data set).")


def fetch(archive: Archive, folder: Path, progress: bool = True) -> Path:
    """Download ``archive`` into ``folder`` and verify it; returns its path.

    A verified file already there is kept; one with another checksum (say, saved by hand from
    another mirror, or an error page) is moved aside to ``NAME.bad``, with a note saying so, and
    the archive downloaded. A partial ``.part`` file is resumed with an HTTP range request
    (started over when the server ignores the range). Only a verified file is renamed to its final
    name; a corrupted download is deleted and :class:`ChecksumError` raised.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / archive.filename
    if dest.exists():
        wrong = mismatch(dest, archive)
        if not wrong:
            return dest
        aside = dest.with_name(dest.name + ".bad")
        os.replace(dest, aside)
        note = (f"{dest} has {wrong} (is it another version of the file, or a page saved in its "
                f"place?); it was moved to {aside}")
        print(f"note: {note}; downloading {archive.url}", file=sys.stderr)
        try:
            return _download(archive, dest, progress)
        except DownloadError as err:
            raise ChecksumError(f"{note}.\n{err}") from err
    return _download(archive, dest, progress)


def _download(archive: Archive, dest: Path, progress: bool) -> Path:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(archive.url, headers={"User-Agent": "dino_lite"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:              # the range starts at the end: the file is whole
            response = None
        else:
            raise DownloadError(f"{archive.url} answered HTTP {err.code} {err.reason}.\n"
                                + _manual_steps(archive, dest)) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"could not reach {archive.url} ({reason}): no network here?\n"
                            + _manual_steps(archive, dest)) from err
    if response is not None:
        with response:
            resumed = have and getattr(response, "status", None) == 206
            if not resumed:
                have = 0                          # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else archive.size
            try:
                with open(part, "ab" if resumed else "wb") as f, \
                        _progress(total, have, archive.filename, progress) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
            except OSError as err:
                raise DownloadError(f"the download of {archive.url} broke off ({err}); run the "
                                    f"command again to resume it from {part}") from err
    try:
        verify(part, archive)
    except ChecksumError as err:
        part.unlink()
        raise ChecksumError(f"{err}; the download was removed, run the command again to download "
                            "it afresh") from None
    os.replace(part, dest)
    return dest


def _progress(total, initial, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not enabled)


def _zip_prefix(names: list[str], filename: str) -> str:
    """The folder a zip keeps its files under, found from where ``filename`` sits."""
    hits = [n for n in names if n.rsplit("/", 1)[-1] == filename]
    if not hits:
        raise DownloadError(f"the archive has no {filename}: is it the right file?")
    return min(hits, key=len)[:-len(filename)]


def _tar_members(path: Path, keep) -> dict[str, bytes]:
    """``{stem: bytes}`` of the members of a tar archive whose path ``keep`` accepts (macOS
    ``._`` resource-fork entries skipped), read in one pass."""
    found = {}
    with tarfile.open(path) as tar:
        for member in tar:
            p = Path(member.name)
            if member.isfile() and not p.name.startswith("._") and keep(p):
                found[p.stem] = tar.extractfile(member).read()
    return found


# -- the data set -----------------------------------------------------------------------------

def download(name: str, root: str | Path | None = None, progress: bool = True,
             keep_archives: bool = False) -> Path:
    """Make data set ``name`` available and return its folder.

    Without ``root``, a copy already under the shared data root or the download root is used as
    it is; with ``root``, only ``root/NAME`` counts. Otherwise the archives are fetched into
    ``root/.downloads`` (verified), the layout is built in ``root/NAME.tmp`` and renamed to
    ``root/NAME``; the archives are deleted afterwards unless ``keep_archives``.
    """
    src = source(name)
    if root is None:
        found = find_data(src.name)
        if found is not None:
            print(f"{src.name} is already at {found}; nothing to do")
            return found
    root = Path(root) if root is not None else download_root()
    out = root / src.name
    if out.is_dir() and any(out.iterdir()):      # an empty folder is built into
        missing = [e for e in src.layout if not (out / e).exists()]
        if missing:
            raise DownloadError(f"{out} exists but lacks {', '.join(missing)}: it is not a complete "
                                f"{src.name}. Move it away (it is left as it is) and run the "
                                "command again")
        print(f"{src.name} is already at {out}; nothing to do")
        return out
    cache = root / ".downloads"
    files = [fetch(a, cache, progress) for a in src.archives]
    tmp = root / f"{src.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)                        # left by an interrupted build
    tmp.mkdir(parents=True)
    try:
        src.build(files, tmp)
    except (zipfile.BadZipFile, tarfile.TarError) as err:
        shutil.rmtree(tmp)
        raise DownloadError(f"could not read {src.name}'s archive: {err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir():
        out.rmdir()                               # the empty folder found above
    os.replace(tmp, out)
    if not keep_archives:
        for f in files:
            f.unlink()
        if cache.is_dir() and not any(cache.iterdir()):
            cache.rmdir()
    print(f"{src.name} is ready at {out}")
    return out


def locations() -> list[dict]:
    """Each data set with the places it is looked for and the one where it is found (or None)."""
    return [{"name": s.name, "about": s.about, "found": find_data(s.name),
             "searched": data_search_path(s.name)} for s in SOURCES.values()]

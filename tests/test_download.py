"""download.py offline: tiny archives shaped like the real ones, served from file:// URLs or a
fake urlopen; checksums, resuming, layouts, and the data lookup of config.py."""

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_lite import config, download as dl
from dino_lite.cli import main
from dino_lite.download import Archive, ChecksumError, DownloadError


def jpeg(size, colour=(200, 30, 30), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 128).save(buf, "JPEG")
    return buf.getvalue()


def png(array):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def tiny_zip(path):
    """tiny-imagenet-200.zip's layout: 2 train and 1 val image for each of the 20 classes, and a
    21st class that must be left out."""
    classes = list(dl.TINY_CLASSES) + ["n99999999"]
    with zipfile.ZipFile(path, "w") as z:
        top = "tiny-imagenet-200/"
        z.writestr(top + "wnids.txt", "\n".join(classes))
        z.writestr(top + "words.txt", "".join(f"{c}\tthing {c}\n" for c in classes))
        ann = []
        for i, c in enumerate(classes):
            for k in range(2):
                z.writestr(f"{top}train/{c}/images/{c}_{k}.JPEG", jpeg((64, 64)))
            z.writestr(f"{top}train/{c}/{c}_boxes.txt", f"{c}_0.JPEG\t0\t0\t10\t10\n")
            z.writestr(f"{top}val/images/val_{i}.JPEG", jpeg((64, 64), mode="L"))
            ann.append(f"val_{i}.JPEG\t{c}\t0\t0\t10\t10")
        z.writestr(top + "val/val_annotations.txt", "\n".join(ann) + "\n")
        z.writestr(top + "test/images/test_0.JPEG", jpeg((64, 64)))
    return path


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    """The Tiny-ImageNet entry pointed at a local zip (file:// URL) with its true md5."""
    (tmp_path / "src").mkdir()
    z = tiny_zip(tmp_path / "src" / "tiny-imagenet-200.zip")
    src = replace(dl.SOURCES["tinyimagenet-dev20"],
                  archives=(Archive(z.as_uri(), "tiny-imagenet-200.zip", md5=md5(z)),))
    monkeypatch.setitem(dl.SOURCES, src.name, src)
    return src


def test_tinyimagenet_layout_from_a_local_zip_and_a_second_call_does_nothing(tiny_source, tmp_path, monkeypatch):
    root = tmp_path / "data"
    out = dl.download("tinyimagenet", root, progress=False)
    assert out == root / "tinyimagenet-dev20"
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(dl.TINY_CLASSES)
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(dl.TINY_CLASSES)
    assert sorted(p.name for p in (out / "train" / "n01774750").iterdir()) == \
        ["n01774750_0.JPEG", "n01774750_1.JPEG"]
    assert (out / "val" / "n01774750" / "val_0.JPEG").exists()       # sorted by val_annotations
    lines = (out / "classes.txt").read_text().splitlines()
    assert lines[0] == "n01774750\tthing n01774750" and len(lines) == 20
    assert not (root / ".downloads").exists() and not (root / "tinyimagenet-dev20.tmp").exists()
    # a second call neither downloads nor rebuilds
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    stamp = (out / "classes.txt").stat().st_mtime_ns
    assert dl.download("tinyimagenet-dev20", root, progress=False) == out
    assert (out / "classes.txt").stat().st_mtime_ns == stamp


def test_a_corrupted_archive_is_refused_and_nothing_is_left_behind(tiny_source, tmp_path):
    z = Path(tiny_source.archives[0].url[len("file://"):])
    data = bytearray(z.read_bytes())
    data[len(data) // 2] ^= 0xFF                                     # one flipped byte
    z.write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match="differs from the published"):
        dl.download("tinyimagenet-dev20", root, progress=False)
    assert not (root / "tinyimagenet-dev20").exists()
    assert list((root / ".downloads").iterdir()) == []              # no .part, no final file


def test_no_network_says_so_with_the_url_and_the_manual_steps(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as err:
        dl.download("davis", tmp_path, progress=False)
    text = str(err.value)
    assert "no network" in text and dl.SOURCES["davis-dev"].archives[0].url in text
    assert "by hand" in text and str(tmp_path / ".downloads" / "DAVIS-2017-trainval-480p.zip") in text


class RangeServer:
    """A fake urlopen serving ``payload`` with HTTP range support; records the ranges asked for."""

    def __init__(self, payload):
        self.payload, self.ranges = payload, []

    def __call__(self, request, timeout=None):
        rng = request.get_header("Range")
        self.ranges.append(rng)
        start = int(rng[len("bytes="):-1]) if rng else 0
        body = self.payload[start:]
        resp = io.BytesIO(body)
        resp.status = 206 if rng else 200
        resp.headers = {"Content-Length": str(len(body))}
        return resp


def test_a_partial_download_is_resumed_from_where_it_stopped(monkeypatch, tmp_path):
    payload = bytes(range(256)) * 5000
    archive = Archive("https://example.org/x.zip", "x.zip", sha256=hashlib.sha256(payload).hexdigest())
    (tmp_path / "x.zip.part").write_bytes(payload[:300_000])         # an interrupted earlier try
    server = RangeServer(payload)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    path = dl.fetch(archive, tmp_path, progress=False)
    assert server.ranges == ["bytes=300000-"]
    assert path.read_bytes() == payload and not (tmp_path / "x.zip.part").exists()
    # a verified file already there is kept without asking the server
    assert dl.fetch(archive, tmp_path, progress=False) == path and len(server.ranges) == 1


def test_a_server_that_ignores_the_range_restarts_the_file(monkeypatch, tmp_path):
    payload = b"abc" * 1000
    archive = Archive("https://example.org/y.bin", "y.bin", md5=hashlib.md5(payload).hexdigest())
    (tmp_path / "y.bin.part").write_bytes(b"garbage")
    asked = []

    def ignores_range(request, timeout=None):            # answers 200 with the whole file
        asked.append(request.get_header("Range"))
        return RangeServer(payload)(urllib.request.Request(request.full_url))
    monkeypatch.setattr(urllib.request, "urlopen", ignores_range)
    assert dl.fetch(archive, tmp_path, progress=False).read_bytes() == payload
    assert asked == ["bytes=7-"]


def pet_archives(folder):
    """images.tar.gz and annotations.tar.gz as the Pet site packs them: 5 images of each of the
    3 breeds (one too large, one RGBA, one broken), another breed to leave out, ._ entries."""
    folder.mkdir()
    imgs, anns = folder / "images.tar.gz", folder / "annotations.tar.gz"
    with tarfile.open(imgs, "w:gz") as ti, tarfile.open(anns, "w:gz") as ta:
        def add(tar, name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for breed in (*dl.PET_BREEDS, "pug"):
            for n in (1, 2, 3, 10, 11):
                size = (640, 400) if n == 1 else (200, 150)
                data = b"not an image" if n == 2 else jpeg(size)
                if n == 3:
                    buf = io.BytesIO()
                    Image.new("RGBA", size, (1, 2, 3, 4)).save(buf, "PNG")   # a PNG named .jpg
                    data = buf.getvalue()
                add(ti, f"images/{breed}_{n}.jpg", data)
                tri = np.full(size[::-1], 2)
                tri[40:80, 50:100] = 1
                tri[38:40, 50:100] = 3
                add(ta, f"annotations/trimaps/{breed}_{n}.png", png(tri))
                add(ta, f"annotations/trimaps/._{breed}_{n}.png", b"\0\5\26\7")
        add(ta, "annotations/list.txt", b"#")
    return [imgs, anns]


def test_pets_layout_from_local_tarballs(tmp_path, monkeypatch):
    files = pet_archives(tmp_path / "src")
    src = replace(dl.SOURCES["pets-mini"], archives=tuple(
        Archive(f.as_uri(), f.name, md5=md5(f)) for f in files),
        build=lambda archives, out: dl.build_pets(archives, out, per_breed=3))
    monkeypatch.setitem(dl.SOURCES, "pets-mini", src)
    out = dl.download("pets", tmp_path / "data", progress=False)
    stems = sorted(p.stem for p in (out / "images").iterdir())
    # per breed the first 3 numbers that decode: 1, 3 and 10 (2 is broken); no pug
    expected = sorted(f"{b}_{n}" for b in dl.PET_BREEDS for n in (1, 3, 10))
    assert stems == expected == sorted(p.stem for p in (out / "trimaps").iterdir())
    big = Image.open(out / "images" / "Bengal_1.jpg")
    assert big.size == (320, 200) and big.mode == "RGB"               # longest side 640 -> 320
    assert Image.open(out / "images" / "Bengal_3.jpg").mode == "RGB"   # RGBA converted
    tri = np.asarray(Image.open(out / "trimaps" / "Bengal_1.png"))
    assert tri.shape == (200, 320) and set(np.unique(tri)) == {1, 2, 3}   # nearest: labels kept


def test_pets_sources_are_torchvisions(monkeypatch):
    """The Pet URLs and md5s are those of torchvision.datasets.OxfordIIITPet."""
    tv = pytest.importorskip("torchvision.datasets")
    ours = [(a.url, a.md5) for a in dl.SOURCES["pets-mini"].archives]
    assert ours == [tuple(r) for r in tv.OxfordIIITPet._RESOURCES]


def test_davis_layout_from_a_local_zip(tmp_path, monkeypatch):
    z = tmp_path / "DAVIS-2017-trainval-480p.zip"
    with zipfile.ZipFile(z, "w") as f:
        for seq in (*dl.DAVIS_SEQUENCES, "bear"):
            for k in range(2):
                f.writestr(f"DAVIS/JPEGImages/480p/{seq}/{k:05d}.jpg", jpeg((854, 480)))
                ids = np.zeros((480, 854))
                ids[100:200, 100:300] = 1
                ids[300:350, 500:600] = 2                             # a second object
                f.writestr(f"DAVIS/Annotations/480p/{seq}/{k:05d}.png", png(ids))
        f.writestr("DAVIS/ImageSets/2017/val.txt", "\n".join(dl.DAVIS_SEQUENCES))
    src = replace(dl.SOURCES["davis-dev"], archives=(
        Archive(z.as_uri(), z.name, sha256=hashlib.sha256(z.read_bytes()).hexdigest()),))
    monkeypatch.setitem(dl.SOURCES, "davis-dev", src)
    out = dl.download("davis-dev", tmp_path / "data", progress=False, keep_archives=True)
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == sorted(dl.DAVIS_SEQUENCES)
    assert sorted(p.name for p in (out / "Annotations" / "dog").iterdir()) == ["00000.png", "00001.png"]
    assert Image.open(out / "JPEGImages" / "dog" / "00001.jpg").size == (480, 270)
    mask = np.asarray(Image.open(out / "Annotations" / "dog" / "00000.png"))
    assert mask.shape == (270, 480) and set(np.unique(mask)) == {0, 255}
    assert mask[80, 100] == 255 and mask[183, 309] == 255 and mask[10, 10] == 0   # both objects
    assert (tmp_path / "data" / ".downloads" / z.name).exists()       # --keep-archives


def test_shared_data_is_found_first_then_the_download_root(tmp_path, monkeypatch):
    shared, downloads = tmp_path / "shared", tmp_path / "dl"
    monkeypatch.setenv(config.SHARED_DATA_ENV, str(shared))
    monkeypatch.setenv(config.DOWNLOAD_ENV, str(downloads))
    assert config.resolve_data("shared:pets-mini") == str(shared / "pets-mini")   # neither: shared path
    assert "data download pets-mini" in dl.how_to_get("pets")
    (downloads / "pets-mini" / "images").mkdir(parents=True)
    assert config.resolve_data("shared:pets-mini") == str(downloads / "pets-mini")
    assert config.make_config("tinyimagenet").data == str(shared / "tinyimagenet-dev20")
    (shared / "pets-mini" / "images").mkdir(parents=True)
    assert config.resolve_data("shared:pets-mini") == str(shared / "pets-mini")
    # without --root, a copy found in either place is used and nothing is downloaded
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    assert dl.download("pets") == shared / "pets-mini"


def test_cli_data_list_and_bad_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(config.SHARED_DATA_ENV, str(tmp_path / "none"))
    monkeypatch.setenv(config.DOWNLOAD_ENV, str(tmp_path))
    (tmp_path / "davis-dev" / "JPEGImages").mkdir(parents=True)
    main(["data", "list"])
    out = capsys.readouterr().out
    assert f"davis-dev            {tmp_path / 'davis-dev'}" in out
    assert "pets-mini            not found" in out
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "imagenet"])
    assert e.value.code == 2 and "unknown data set 'imagenet'" in capsys.readouterr().err


def test_a_hand_saved_archive_with_a_wrong_checksum_is_kept_aside_and_named(tiny_source, tmp_path,
                                                                            monkeypatch, capsys):
    """The file a user saved at the path the message names, with another checksum, was deleted
    and the same "download it by hand" text printed again."""
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    saved = root / ".downloads" / "tiny-imagenet-200.zip"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"an html error page saved as a zip")
    got, expected = md5(saved), tiny_source.archives[0].md5
    with pytest.raises(ChecksumError) as err:
        dl.download("tinyimagenet-dev20", root, progress=False)
    text = str(err.value)
    aside = saved.with_name(saved.name + ".bad")
    assert f"{saved} has md5 {got}, not the published {expected}" in text
    assert f"moved to {aside}" in text and "by hand" in text
    assert aside.read_bytes() == b"an html error page saved as a zip" and not saved.exists()
    # with the network back, the right file is downloaded; the moved file stays for the user
    monkeypatch.undo()
    monkeypatch.setitem(dl.SOURCES, tiny_source.name, tiny_source)
    saved.write_bytes(b"another wrong file")
    out = dl.download("tinyimagenet-dev20", root, progress=False)
    assert (out / "train").is_dir() and aside.read_bytes() == b"another wrong file"
    assert f"note: {saved} has md5" in capsys.readouterr().err


def test_an_empty_folder_at_the_target_is_not_the_data_set(tiny_source, tmp_path, monkeypatch, capsys):
    """`data download` answered "already there" for an empty folder; `data list` found it too."""
    root = tmp_path / "data"
    (root / "tinyimagenet-dev20").mkdir(parents=True)
    out = dl.download("tinyimagenet-dev20", root, progress=False)
    assert "already" not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "train", "val"]
    # a folder with something else in it is left alone and named
    other = tmp_path / "other"
    (other / "tinyimagenet-dev20").mkdir(parents=True)
    (other / "tinyimagenet-dev20" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match=r"tinyimagenet-dev20 exists but lacks classes.txt, train, val"):
        dl.download("tinyimagenet-dev20", other, progress=False)
    assert (other / "tinyimagenet-dev20" / "notes.txt").read_text() == "mine"
    # without --root, an empty folder in the download root is not found either
    monkeypatch.setenv(config.SHARED_DATA_ENV, str(tmp_path / "none"))
    monkeypatch.setenv(config.DOWNLOAD_ENV, str(tmp_path / "dl"))
    (tmp_path / "dl" / "tinyimagenet-dev20").mkdir(parents=True)
    assert config.find_data("tinyimagenet-dev20") is None
    assert dl.download("tinyimagenet-dev20", progress=False) == tmp_path / "dl" / "tinyimagenet-dev20"
    assert (tmp_path / "dl" / "tinyimagenet-dev20" / "train").is_dir()

"""embed: features of every image under a folder into OUT.npy + OUT.csv, row for row; knn from
two such files."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_error, random_init
from dino_lite import embed as embed_module
from dino_lite.cli import main
from dino_lite.data import eval_transform, load_rgb
from dino_lite.embed import embed_folder, knn_from_files, pooled, read_embeddings

TINY = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
        "--set", "depth=1", "--set", "bf16=false", "--set", "fused_attention=off"]


@pytest.fixture(scope="module")
def tiny_model():
    backbone, cfg = random_init("cpu-demo", [s for s in TINY if s != "--set"])
    return backbone, cfg


def make_images(root):
    """Class folders with images at two depths, odd suffixes, a corrupt file, a text file and
    hidden files; returns the readable images' relative paths in the order expected."""
    files = {"cat/a.png": (30, 20), "cat/deeper/b.JPG": (20, 30), "dog/c.jpeg": (25, 25),
             "dog/d.webp": (40, 22), "dog/e.BMP": (22, 40), "dog/f.tif": (33, 33),
             "dog/._c.jpeg": (8, 8), ".thumbs/g.png": (8, 8)}
    for i, (name, size) in enumerate(files.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "bmp": "BMP"}.get(name.rsplit(".")[-1].lower())
        Image.new("RGB", size, (i * 40, 255 - i * 30, 60)).save(root / name, format=fmt)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG this is not a png")
    (root / "cat" / "notes.txt").write_text("skip me")
    return ["cat/a.png", "cat/deeper/b.JPG", "dog/c.jpeg", "dog/d.webp", "dog/e.BMP", "dog/f.tif"]


def test_every_image_in_csv_order_corrupt_files_listed_and_skipped(tmp_path, tiny_model, capsys):
    backbone, cfg = tiny_model
    expected = make_images(tmp_path / "imgs")
    r = embed_folder(backbone, tmp_path / "imgs", tmp_path / "out" / "feats", image_size=32,
                     batch_size=4, progress=False, bf16=False)   # fp32, as the reference below
    feats, paths, classes = read_embeddings(tmp_path / "out" / "feats.npy")
    assert paths == expected
    assert classes == ["cat", "cat", "dog", "dog", "dog", "dog"]   # the first-level folder
    assert feats.dtype == np.float32 and feats.shape == (6, backbone.embed_dim)
    assert r["images"] == 6 and r["shape"] == [6, backbone.embed_dim]
    # row i is image i: each row equals that image's feature computed on its own
    tf = eval_transform(32)
    with torch.no_grad():
        for row, name in zip(feats, paths):
            one = pooled(backbone, tf(load_rgb(tmp_path / "imgs" / name))[None], "cls")[0]
            np.testing.assert_allclose(row, one.numpy(), atol=1e-4)
    with open(tmp_path / "out" / "feats.csv") as f:
        assert [row["index"] for row in csv.DictReader(f)] == [str(i) for i in range(6)]
    # the corrupt file: named on the console and in OUT.skipped.csv, not fatal
    assert "skipped" in capsys.readouterr().err and r["skipped"][0][0] == "dog/broken.png"
    with open(tmp_path / "out" / "feats.skipped.csv") as f:
        assert [row["path"] for row in csv.DictReader(f)] == ["dog/broken.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "feats.csv", "feats.npy", "feats.skipped.csv"]                 # no temporary files left
    # an image straight in the folder: not one subfolder per class, so no class at all (as
    # retrieval reads a folder)
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "top.png")
    embed_folder(backbone, tmp_path / "imgs", tmp_path / "out" / "mixed", image_size=32,
                 progress=False)
    _, paths, classes = read_embeddings(tmp_path / "out" / "mixed.npy")
    assert paths[0] == "top.png" and len(paths) == 7 and classes == [""] * 7


def test_mean_and_patch_pools(tmp_path, tiny_model):
    backbone, _ = tiny_model
    make_images(tmp_path / "imgs")
    mean = embed_folder(backbone, tmp_path / "imgs", tmp_path / "mean", "mean", 32, progress=False)
    patch = embed_folder(backbone, tmp_path / "imgs", tmp_path / "patch.npy", "patch", 32,
                         progress=False)
    tokens = (32 // 8) ** 2
    assert patch["shape"] == [6, tokens, backbone.embed_dim] and mean["shape"] == [6, backbone.embed_dim]
    p, m = np.load(tmp_path / "patch.npy"), np.load(tmp_path / "mean.npy")
    np.testing.assert_allclose(p.mean(1), m, atol=1e-5)        # mean = the mean of the patch tokens
    cls = embed_folder(backbone, tmp_path / "imgs", tmp_path / "cls", "cls", 32, progress=False)
    assert not np.allclose(np.load(tmp_path / "cls.npy"), m)


def test_images_are_read_a_batch_at_a_time(tmp_path, tiny_model, monkeypatch):
    backbone, _ = tiny_model
    for i in range(10):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    loaded, seen = [], []
    real_load = embed_module.load_rgb
    monkeypatch.setattr(embed_module, "load_rgb", lambda p: loaded.append(p) or real_load(p))

    class Spy(torch.nn.Module):           # the backbone, recording each batch it is given
        def __init__(self):
            super().__init__()
            self.net = backbone

        def forward(self, x):
            seen.append((len(x), len(loaded)))
            return self.net(x)
    embed_folder(Spy(), tmp_path, tmp_path / "out" / "f", image_size=32, batch_size=3,
                 progress=False)
    assert [n for n, _ in seen] == [3, 3, 3, 1]
    # when a batch is embedded, only the images up to its end have been read
    assert [n_loaded for _, n_loaded in seen] == [3, 6, 9, 10]
    assert isinstance(np.load(tmp_path / "out" / "f.npy", mmap_mode="r"), np.memmap)


def test_empty_or_unreadable_folders_are_clear_errors(tmp_path, tiny_model):
    backbone, _ = tiny_model
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images .* in .*empty or its subfolders"):
        embed_folder(backbone, tmp_path / "empty", tmp_path / "o", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of the 1 images"):
        embed_folder(backbone, tmp_path / "bad", tmp_path / "o", image_size=32, progress=False)
    assert list(tmp_path.glob("*o*")) == []                         # nothing half-written


def test_knn_from_embed_files_equals_knn_on_the_folder(tiny_folder, tmp_path, capsys):
    from dino_lite.evaluate import extract_features, knn_accuracy
    from dino_lite.data import build_dataset
    model = ["--preset", "cpu-demo", "--random-init", *TINY, "--batch-size", "256"]
    for split in ("train", "val"):
        main(["embed", *model, "--images", str(tiny_folder / split), "--out",
              str(tmp_path / split)])
    out = capsys.readouterr().out
    assert f"features: {tmp_path / 'train.npy'}, float32 [96, 128] (the CLS token)" in out
    main(["knn", "--features", str(tmp_path / "train.npy"), "--test-features",
          str(tmp_path / "val.npy"), "--json"])
    from_files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    backbone, cfg = random_init("cpu-demo", [s for s in TINY if s != "--set"])
    assert from_files["knn_top1"] == knn_accuracy(backbone, cfg, data=str(tiny_folder))
    # the same features as k-NN evaluation extracts, once L2-normalised
    ref, _ = extract_features(backbone, build_dataset(str(tiny_folder), True,
                                                      eval_transform(cfg.image_size)),
                              bf16=False)                     # as TINY sets for embed
    feats = torch.from_numpy(np.load(tmp_path / "train.npy"))
    torch.testing.assert_close(torch.nn.functional.normalize(feats, dim=-1), ref, atol=1e-5, rtol=0)
    assert knn_from_files(tmp_path / "train.npy", tmp_path / "val.npy", k=1)["test"] == 12
    # --json FILE: the same object into a file (what make demo's summary reads), not printed
    main(["knn", "--features", str(tmp_path / "train.npy"), "--test-features",
          str(tmp_path / "val.npy"), "--json", str(tmp_path / "res" / "knn.json")])
    out = capsys.readouterr().out
    assert "k-NN top-1:" in out and "{" not in out
    assert json.loads((tmp_path / "res" / "knn.json").read_text()) == from_files


def test_knn_from_files_needs_labels_vectors_and_matching_files(tmp_path, tiny_model, capsys):
    backbone, _ = tiny_model
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 50, 0, 0)).save((tmp_path / f"{i}.png"))
    embed_folder(backbone, tmp_path, tmp_path / "out" / "flat", image_size=32, progress=False)
    with pytest.raises(SystemExit):
        main(["knn", "--features", str(tmp_path / "out" / "flat.npy"), "--test-features",
              str(tmp_path / "out" / "flat.npy")])
    assert "k-NN needs labels, and" in capsys.readouterr().err
    make_images(tmp_path / "imgs")
    embed_folder(backbone, tmp_path / "imgs", tmp_path / "out" / "patch", "patch", 32, progress=False)
    embed_folder(backbone, tmp_path / "imgs", tmp_path / "out" / "cls", "cls", 32, progress=False)
    with pytest.raises(ValueError, match="one vector per image"):
        knn_from_files(tmp_path / "out" / "patch.npy", tmp_path / "out" / "patch.npy")
    np.save(tmp_path / "out" / "part.npy", np.load(tmp_path / "out" / "cls.npy"))
    rows = (tmp_path / "out" / "cls.csv").read_text().splitlines()
    (tmp_path / "out" / "part.csv").write_text("\n".join(rows[:-1] + [rows[-1].rsplit(",", 1)[0] + ","]))
    with pytest.raises(ValueError, match="1 of the 6 images .* have no class"):
        knn_from_files(tmp_path / "out" / "part.npy", tmp_path / "out" / "cls.npy")
    with pytest.raises(ValueError, match=r"classes that .* lacks: \['dog'\]"):
        cats = [r for r in rows if ",dog" not in r]
        np.save(tmp_path / "out" / "cats.npy", np.load(tmp_path / "out" / "cls.npy")[:len(cats) - 1])
        (tmp_path / "out" / "cats.csv").write_text("\n".join(cats))
        knn_from_files(tmp_path / "out" / "cats.npy", tmp_path / "out" / "cls.npy")
    (tmp_path / "out" / "cls.csv").write_text("index,path,class\n0,a.png,cat\n")
    with pytest.raises(ValueError, match="holds 6 rows but .* lists 1"):
        read_embeddings(tmp_path / "out" / "cls.npy")
    with pytest.raises(SystemExit):
        main(["knn", "--features", str(tmp_path / "out" / "cls.npy")])
    assert "--features and --test-features go together" in capsys.readouterr().err


def brute_force_map(q, d, relevant):
    """Mean average precision by hand: cosine ranking, precision at each relevant hit."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    aps = []
    for i in range(len(q)):
        order = np.argsort(-(d @ q[i]), kind="stable")
        hits, precisions = 0, []
        for rank, j in enumerate(order, start=1):
            if relevant[i, j]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return float(np.mean(aps))


def test_retrieval_and_copydetect_read_embed_files(tiny_folder, tmp_path, capsys):
    from dino_lite.copydetect import Whitening
    model = ["--preset", "cpu-demo", "--random-init", *TINY]
    for split, pool in (("train", "cls"), ("val", "cls"), ("train", "cls_gem"), ("val", "cls_gem")):
        main(["embed", *model, "--images", str(tiny_folder / split), "--pool", pool,
              "--out", str(tmp_path / f"{split}-{pool}")])
        # a random-init encoder maps these shapes to near-identical vectors (cosine 0.98-0.999,
        # neighbours 1e-7 apart): their order is the matrix product's rounding, which differs
        # between CPUs. Well-separated vectors in the embed files make every ranking unambiguous;
        # what is tested is that retrieval and copydetect read the files right.
        feats = np.load(tmp_path / f"{split}-{pool}.npy")
        rng = np.random.default_rng(len(feats) + feats.shape[1])
        np.save(tmp_path / f"{split}-{pool}.npy", rng.normal(size=feats.shape).astype(np.float32))
    capsys.readouterr()
    db, q = (np.load(tmp_path / f"{s}-cls.npy") for s in ("train", "val"))
    classes = {s: read_embeddings(tmp_path / f"{s}-cls.npy")[2] for s in ("train", "val")}
    relevant = np.array([[a == b for b in classes["train"]] for a in classes["val"]])
    main(["retrieval", "--queries", str(tmp_path / "val-cls.npy"),
          "--database", str(tmp_path / "train-cls.npy"), "--json"])
    out = capsys.readouterr().out
    assert "no figure (features read from files)" in out
    assert json.loads(out.strip().splitlines()[-1])["mAP"] == pytest.approx(
        brute_force_map(q, db, relevant), abs=1e-6)
    # copy detection: the CLS + GeM descriptor (twice the width), a ground-truth CSV of the
    # csv's paths, PCA whitening learned on a third embed output
    gq, gdb = (np.load(tmp_path / f"{s}-cls_gem.npy") for s in ("val", "train"))
    assert gq.shape[1] == 2 * q.shape[1]
    names = {s: read_embeddings(tmp_path / f"{s}-cls.npy")[1] for s in ("train", "val")}
    pairs = [(names["val"][i], names["train"][j]) for i in range(len(q)) for j in range(len(db))
             if relevant[i, j] and j % 3 == 0]
    (tmp_path / "gt.csv").write_text("query,match\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    main(["copydetect", "--queries", str(tmp_path / "val-cls_gem.npy"),
          "--database", str(tmp_path / "train-cls_gem.npy"), "--ground-truth",
          str(tmp_path / "gt.csv"), "--whitening", str(tmp_path / "train-cls_gem.npy"), "--json"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    unit = lambda x: torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)
    white = Whitening(unit(gdb))
    truth = np.zeros_like(relevant)
    for a, b in pairs:
        truth[names["val"].index(a), names["train"].index(b)] = True
    has = truth.any(1)
    want = brute_force_map(white(unit(gq)).numpy()[has], white(unit(gdb)).numpy(), truth[has])
    assert got["mAP"] == pytest.approx(want, abs=1e-6) and got["queries"] == int(has.sum())


def test_ranking_from_files_refuses_what_does_not_apply(tmp_path, tiny_model, capsys):
    backbone, _ = tiny_model
    make_images(tmp_path / "imgs")
    embed_folder(backbone, tmp_path / "imgs", tmp_path / "f", image_size=32, progress=False)
    embed_folder(backbone, tmp_path / "imgs", tmp_path / "p", "patch", 32, progress=False)
    f = str(tmp_path / "f.npy")
    err = cli_error(capsys, ["retrieval", "--queries", f, "--database", str(tmp_path / "imgs")])
    assert "both folders of images or both embed outputs" in err
    err = cli_error(capsys, ["retrieval", "--queries", f, "--database", f, "--preset", "cpu-demo",
                             "--random-init", "--multiscale"])
    assert "--preset, --random-init, --multiscale do not apply" in err
    err = cli_error(capsys, ["retrieval", "--queries", str(tmp_path / "imgs"),
                             "--database", str(tmp_path / "imgs")])
    assert "one of --checkpoint, --preset (with --random-init) or --pixels is required" in err
    err = cli_error(capsys, ["retrieval", "--queries", f, "--database", str(tmp_path / "p.npy")])
    assert "one vector per image" in err
    err = cli_error(capsys, ["copydetect", "--queries", f, "--database", f, "--ground-truth",
                             str(tmp_path / "gt.csv"), "--whitening", str(tmp_path / "imgs")])
    assert "--whitening is an embed output too" in err

"""A folder of one's own images without class folders: `train --data DIR` reads it (flat or
nested) and says what it found; the commands that need labels say at once that it has none."""

import pytest
import torch
from PIL import Image

from dino_lite.cli import main
from dino_lite.data import DatasetError, ImageFolder, ImageList, build_dataset, require_labels

TINY = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
        "--set", "depth=1", "--set", "out_dim=32", "--set", "head_hidden=32",
        "--set", "batch_size=8", "--set", "n_local=0", "--set", "bf16=false",
        "--set", "fused_attention=off", "--set", "stem=patch"]


def photos(root, names):
    """Small images at ``root/name`` (any suffix PIL writes), plus a text file to ignore."""
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(name.rsplit(".", 1)[1].lower())
        Image.new("RGB", (20 + i, 16), (i * 20 % 256, 90, 30)).save(root / name, format=fmt)
    (root / "notes.txt").write_text("not an image")
    (root / "._a.png").write_bytes(b"macOS metadata, not an image")    # hidden: skipped
    return root


NESTED = ["a.png", "b.JPG", "trip/day1/c.jpeg", "trip/d.webp", "scans/e.TIF", "f.bmp",
          "trip/day2/g.png", "h.PNG", "z/i.jpg"]


def test_a_flat_or_nested_folder_is_read_without_labels(tmp_path):
    root = photos(tmp_path / "mine", NESTED)
    ds = build_dataset(str(root), train=True)
    assert isinstance(ds, ImageList) and len(ds) == len(NESTED)   # every depth, any case
    assert [p.relative_to(root).as_posix() for p in ds.files] == sorted(
        NESTED, key=lambda n: tuple(n.split("/")))
    img, label = ds[0]
    assert img.mode == "RGB" and label == -1
    # images straight in train/, no class folders: that folder, unlabelled
    flat = photos(tmp_path / "flat" / "train", ["x.png", "y.jpg"]).parent
    assert isinstance(build_dataset(str(flat), train=True), ImageList)
    assert len(build_dataset(str(flat), train=True)) == 2
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images .* under .*empty"):
        build_dataset(str(tmp_path / "empty"), train=True)


def test_class_folders_under_train_stay_labelled(tiny_folder):
    assert isinstance(build_dataset(str(tiny_folder), train=True), ImageFolder)
    require_labels(str(tiny_folder), "knn")            # labelled: no error
    for spec in ("shapes", "fake", "cifar10"):
        require_labels(spec, "knn")


def test_train_on_an_unlabelled_folder_says_what_it_found(tmp_path, capsys):
    root = photos(tmp_path / "mine", [f"{d}/{i}.png" for d in ("x", "y/z") for i in range(6)]
                  + [f"top{i}.jpg" for i in range(4)])
    main(["train", "--preset", "cpu-demo", "--data", str(root), "--max-steps", "1",
          "--out", str(tmp_path / "run"), *TINY])
    out = capsys.readouterr().out
    assert f"data {root}: 16 images, without class folders (unlabelled: enough to train" in out
    assert (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("command", ["knn", "linear", "finetune"])
def test_commands_that_need_labels_say_so_before_loading_a_model(tmp_path, capsys, monkeypatch,
                                                                 command):
    import dino_lite.checkpoint
    root = photos(tmp_path / "mine", NESTED)

    def never(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")
    monkeypatch.setattr(dino_lite.checkpoint, "backbone_from_checkpoint", never)
    with pytest.raises(SystemExit) as e:
        main([command, "--checkpoint", str(tmp_path / "any.pt"), "--data", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {command} needs labels, and {root} has none: 9 images" in err
    assert "train/<class>/" in err and "Traceback" not in err


def test_the_library_refuses_to_score_an_unlabelled_folder(tmp_path):
    from conftest import tiny_config
    from dino_lite.evaluate import knn_accuracy
    root = photos(tmp_path / "mine", NESTED)
    cfg = tiny_config(root)
    with pytest.raises(DatasetError, match="needs labels"):
        knn_accuracy(torch.nn.Identity(), cfg)

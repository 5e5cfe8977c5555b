"""Data: the embedded dataset, odd and broken images, empty folders, augmentation, sampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from dino_lite.augment import LUMA, BatchRandom, MultiCrop, invert_channels, photometric, random_rotation
from dino_lite.config import make_config
from dino_lite.data import EpochSampler, ImageFolder, ImageLoadError, build_dataset, load_rgb
from dino_lite.shapes import BACKGROUND_LUMINANCE, CLASSES, OBJECT_LUMINANCE, generate, render


def test_shapes_are_deterministic_and_masked():
    a, la, ma = render(0, "train", 7, 48)
    b, lb, mb = render(0, "train", 7, 48)
    c, _, _ = render(1, "train", 7, 48)
    assert np.array_equal(a, b) and la == lb and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8 and ma.dtype == bool
    assert 0.03 < ma.mean() < 0.8            # the object is there, and it is not the whole image


def test_shapes_fix_brightness_and_randomise_hue():
    """Only hue is random: object and background luminance are the same in every image."""
    luma = np.array(LUMA)
    obj_lum, bg_lum, obj_rgb = [], [], []
    for i in range(30):
        img, _, mask = render(0, "train", i, 64)
        x = img / 255.0
        obj_lum.append(np.median(x[mask] @ luma))
        bg_lum.append((x[~mask] @ luma).mean())
        obj_rgb.append(np.median(x[mask], 0))
    assert np.allclose(obj_lum, OBJECT_LUMINANCE, atol=0.03)
    assert np.allclose(bg_lum, BACKGROUND_LUMINANCE, atol=0.06)
    assert np.std(obj_rgb, 0).min() > 0.03          # while the colours differ


def test_shapes_cover_all_classes_and_splits_differ(tmp_path):
    imgs, labels, masks = generate("train", 32, n=200, cache_dir=tmp_path)
    assert set(labels.tolist()) == set(range(len(CLASSES)))
    test_imgs, _, _ = generate("test", 32, n=20, cache_dir=tmp_path)
    assert not np.array_equal(imgs[:20], test_imgs)
    again = generate("train", 32, n=200, cache_dir=tmp_path)       # from the cache
    assert np.array_equal(again[0], imgs)


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        generate("validation", 32, n=1)
    with pytest.raises(ValueError):
        generate("train", 4, n=1)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "1", "CMYK"])
def test_odd_image_modes_load_as_rgb(tmp_path, mode):
    img = Image.new("RGB", (5, 3), (200, 30, 60)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_rgba_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = ImageFolder(tmp_path / "train")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        ds[0]


def test_empty_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        build_dataset(str(tmp_path), train=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="neither"):
        build_dataset("no-such-dataset", train=True)


def test_missing_eval_split_is_named(tmp_path, tiny_folder):
    import shutil
    shutil.copytree(tiny_folder / "train", tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="val/ or test/"):
        build_dataset(str(tmp_path), train=False)


def test_tiny_and_odd_images_survive_multicrop():
    crops = MultiCrop(32, 16, n_local=3)
    for img in (Image.new("RGB", (1, 1)), Image.new("RGB", (3, 200)), Image.new("RGB", (500, 7))):
        views = crops(img)
        assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
        assert all(v.dtype == torch.uint8 for v in views)


def test_photometric_is_seeded_and_normalised():
    views = [torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    views += [torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)]
    a = photometric(views, BatchRandom(3))
    b = photometric(views, BatchRandom(3))
    c = photometric(views, BatchRandom(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[2].shape == (8, 3, 16, 16) and a[0].dtype == torch.float32
    assert -2.2 < float(a[0].min()) and float(a[0].max()) < 2.7       # ImageNet-normalised range


def test_rotation_turns_the_image_and_zero_degrees_is_identity():
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(random_rotation(x, BatchRandom(0), 0.0), x, atol=1e-5)
    # with every angle drawn in [90, 90] the result is a quarter turn (pixel centres map exactly)
    g = BatchRandom(0)
    g.rand = lambda n: torch.ones(n)            # the largest angle, +90 degrees, for every image
    turned = random_rotation(x, g, 90.0)
    assert torch.allclose(turned, torch.rot90(x, 1, (2, 3)), atol=1e-4)
    assert not torch.allclose(turned, x, atol=1e-2)


def test_invert_channels_flips_exactly_the_drawn_channels():
    x = torch.rand(6, 3, 8, 8)
    assert torch.equal(invert_channels(x, BatchRandom(0), 0.0), x)
    assert torch.allclose(invert_channels(x, BatchRandom(0), 1.0), 1 - x)
    y = invert_channels(x, BatchRandom(1), 0.5)
    flipped = torch.isclose(y, 1 - x).all(-1).all(-1) & ~torch.isclose(y, x).all(-1).all(-1)
    kept = torch.equal(y[~flipped], x[~flipped])
    assert kept and 0 < int(flipped.sum()) < 18          # some channels flipped, the rest untouched


def test_augmentation_knobs_are_validated_and_off_by_default():
    views = [torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for _ in range(2)]
    default = photometric(views, BatchRandom(2))
    explicit = photometric(views, BatchRandom(2), (0.4, 0.4, 0.2, 0.1), 0.0, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    cfg = make_config("cpu-demo")
    assert cfg.rotation == 0 and cfg.invert == 0 and cfg.colour_jitter == (0.4, 0.4, 0.2, 0.5)
    assert make_config("imagenet-vits16").colour_jitter == (0.4, 0.4, 0.2, 0.1)   # the paper's
    for bad in ("invert=1.5", "rotation=-1", "colour_jitter=0.4,0.4,0.2", "colour_jitter=0.4,0.4,0.2,0.7"):
        with pytest.raises(ValueError):
            make_config("cpu-demo", sets=[bad])


def test_sampler_resumes_mid_epoch_with_the_same_order():
    s = EpochSampler(100, batch_size=8, seed=1)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=5)
    assert list(s) == full[40:]
    s.set_epoch(4)
    assert list(s) != full
    assert len(full) == 96                          # drop the last partial batch


def test_sampler_splits_across_ranks():
    parts = [list(EpochSampler(64, 4, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert len(parts[0]) == len(parts[1]) == 32


def test_sampler_rejects_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="smaller than one global batch"):
        EpochSampler(3, batch_size=8)


def test_ranks_together_draw_the_single_process_batches():
    """The global batch is split, not multiplied: rank shards of batch b make up batch b of 1 process."""
    one = list(EpochSampler(64, 8, seed=2))
    parts = [list(EpochSampler(64, 8, seed=2, rank=r, world_size=2)) for r in range(2)]
    for b in range(8):
        assert sorted(parts[0][4 * b:4 * b + 4] + parts[1][4 * b:4 * b + 4]) == sorted(one[8 * b:8 * b + 8])
    with pytest.raises(ValueError, match="split evenly"):
        EpochSampler(64, 9, world_size=2)


def test_batch_random_gives_each_rank_its_rows_of_the_global_draw():
    from dino_lite.augment import BatchRandom
    whole = BatchRandom(7).rand(6)
    halves = [BatchRandom(7, slice(3 * r, 3 * r + 3), 6).rand(3) for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_fake_spec_gives_generated_images_at_the_preset_size():
    from dino_lite.data import build_dataset
    ds = build_dataset("fake", train=False, image_size=48)
    img, label = ds[0]
    assert img.size == (48, 48) and 0 <= label < 10


# -- robustness: symlink loops, class folders of other splits, concurrent caches (issue 24) ---------

def _image_folder(root, classes, n=2):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")


def test_a_folder_symlink_loop_does_not_duplicate_images(tmp_path):
    _image_folder(tmp_path / "train", ["cat", "dog"], n=4)
    (tmp_path / "train" / "cat" / "loop").symlink_to("..")             # train/cat/loop -> train
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "extra" / "x.png")
    (tmp_path / "train" / "dog" / "more").symlink_to(tmp_path / "extra")   # followed, once
    with pytest.warns(UserWarning, match="not followed.*loop"):
        ds = ImageFolder(tmp_path / "train")
    assert len(ds) == 9
    assert sorted(ds.targets) == [0] * 4 + [1] * 5
    assert len({p for p, _ in ds.samples}) == 9


def test_labels_follow_class_names_across_splits(tmp_path):
    _image_folder(tmp_path / "train", ["airplane", "cat", "dog"])
    _image_folder(tmp_path / "val", ["cat", "dog"])                      # no airplane in val
    with pytest.warns(UserWarning, match="airplane"):
        val = build_dataset(str(tmp_path), train=False)
    assert val.classes == ["airplane", "cat", "dog"]
    assert sorted(set(val.targets)) == [1, 2]                          # cat and dog as in train/
    assert all(val.classes[y] == p.split("/")[-2] for p, y in val.samples)
    _image_folder(tmp_path / "val", ["zebra"])
    with pytest.raises(ValueError, match=r"lacks: \['zebra'\]"):
        build_dataset(str(tmp_path), train=False)


def _draw_test_split(root, barrier):
    """In a child process: build the shapes test split (shrunk to 40 images) into ``root``, with
    every process writing its cache file at the same moment (as two ranks on a fresh clone)."""
    import threading

    import numpy as np

    from dino_lite import shapes
    from dino_lite.data import build_dataset
    shapes.SPLIT_SIZES["test"] = 40
    real = np.savez_compressed

    def together(*args, **kwargs):
        try:
            barrier.wait(timeout=3)            # the other process writes now too, if it draws
        except threading.BrokenBarrierError:
            pass
        return real(*args, **kwargs)
    shapes.np.savez_compressed = together
    ds = build_dataset("shapes", train=False, root=root)
    return len(ds), int(np.asarray(ds.targets).sum())


def test_two_processes_drawing_the_shapes_cache_at_once_both_succeed(tmp_path):
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = [pool.apply_async(_draw_test_split, (tmp_path, barrier)) for _ in range(2)]
            got = [r.get(timeout=120) for r in results]
    assert got[0] == got[1] and got[0][0] == 40
    assert len(list((tmp_path / "cache").glob("shapes-test-64px-40-*.npz"))) == 1
    assert not list((tmp_path / "cache").glob("*tmp*"))


def test_shapes_drawn_by_threads_are_in_index_order_and_equal_one_by_one_rendering():
    from dino_lite.shapes import generate, render
    images, labels, masks = generate("train", 32, n=24, seed=3)
    for i in range(24):
        image, label, mask = render(3, "train", i, 32)
        assert (images[i] == image).all() and labels[i] == label and (masks[i] == mask).all(), i

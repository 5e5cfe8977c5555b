"""Copy detection: GeM pooling, PCA whitening, the copy-benchmark maker's determinism."""

import csv
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from dino_lite.copydetect import EDITS, Whitening, apply_edit, gem, make_copies


def test_gem_p1_is_average_pooling_and_large_p_tends_to_max():
    x = torch.rand(3, 10, 5) + 0.01
    assert torch.allclose(gem(x, p=1), x.mean(1), atol=1e-6)
    assert torch.allclose(gem(x, p=200), x.max(1).values, rtol=0.03)
    # hand value: tokens 1 and 2 -> ((1 + 16) / 2) ** (1 / 4)
    assert gem(torch.tensor([[[1.0], [2.0]]]), p=4).item() == pytest.approx(8.5 ** 0.25)


def test_whitening_gives_identity_covariance_on_its_training_features():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 8, generator=g)
    feats = torch.randn(500, 8, generator=g) @ mix + 3.0                 # correlated, off-centre
    w = Whitening(feats)
    y = w(feats, normalize=False).double()
    cov = (y - y.mean(0)).T @ (y - y.mean(0)) / (len(y) - 1)
    assert torch.allclose(cov, torch.eye(8, dtype=cov.dtype), atol=1e-4)
    assert torch.allclose(y.mean(0), torch.zeros(8, dtype=y.dtype), atol=1e-4)
    # rank-deficient input (fewer images than dims): only the real components are kept
    few = torch.randn(5, 20, generator=g)
    assert Whitening(few).dim == 4


def _write_images(folder, n=14, size=48):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i:02d}.png")


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_make_copies_is_deterministic_by_seed(tmp_path):
    src = tmp_path / "src"
    _write_images(src)
    kw = dict(originals=3, copies=2, distractors=4, whitening=3)
    info = make_copies(src, tmp_path / "a", seed=7, **kw)
    make_copies(src, tmp_path / "b", seed=7, **kw)
    make_copies(src, tmp_path / "c", seed=8, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert info["queries"] == 6 and info["database"] == 7
    rows = list(csv.DictReader(open(tmp_path / "a" / "ground_truth.csv")))
    assert len(rows) == 6 and all((tmp_path / "a" / "database" / r["match"]).exists() for r in rows)
    assert len({r["match"] for r in rows}) == 3                  # two copies of each original
    assert len(list((tmp_path / "a" / "whitening").iterdir())) == 3
    with pytest.raises(ValueError, match="need"):
        make_copies(src, tmp_path / "d", seed=0, originals=10, distractors=10, whitening=0)


def test_every_edit_changes_the_image_deterministically():
    import random
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for e in EDITS:
        a = apply_edit(img, e, random.Random(3))
        b = apply_edit(img, e, random.Random(3))
        assert np.array_equal(np.asarray(a), np.asarray(b)), e
        assert a.size != img.size or not np.array_equal(np.asarray(a), np.asarray(img)), e


def test_whitening_that_keeps_fewer_than_two_components_is_refused():
    """Identical training features kept 0 components (every similarity 0, the ranking the index
    order); two images keep 1 (every descriptor +-1 after normalising, ties in index order)."""
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 16, generator=g)
    with pytest.raises(ValueError, match="0 directions of variance .*6 feature vectors"):
        Whitening(one.repeat(6, 1))
    with pytest.raises(ValueError, match="1 direction of variance"):
        Whitening(torch.randn(2, 16, generator=g))
    noisy = one.repeat(6, 1) + 1e-9 * torch.randn(6, 16, generator=g)   # identical up to rounding
    with pytest.raises(ValueError, match="0 directions"):
        Whitening(noisy)
    assert Whitening(torch.randn(3, 16, generator=g)).dim == 2


def test_make_copies_refuses_negative_counts(tmp_path):
    """distractors=-3 took the whitening images from the database originals' slice."""
    src = tmp_path / "src"
    _write_images(src)
    for bad in (dict(distractors=-3), dict(whitening=-1), dict(originals=0), dict(copies=-2)):
        kw = dict(originals=3, copies=2, distractors=4, whitening=3) | bad
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            make_copies(src, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_a_failed_rerun_leaves_the_previous_benchmark_whole(tmp_path, monkeypatch):
    """A rerun that failed half-way left the old ground_truth.csv beside new queries and database
    images, and copydetect scored the wrong pairs. Now the new files are written aside and swapped
    in only when complete."""
    import dino_lite.copydetect as cd
    src = tmp_path / "src"
    _write_images(src)
    kw = dict(originals=3, copies=2, distractors=4, whitening=3)
    make_copies(src, tmp_path / "out", seed=7, **kw)
    before = _digest(tmp_path / "out")
    real, calls = cd.strong_copy, []

    def fails_on_the_third(img, rng):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(img, rng)
    monkeypatch.setattr(cd, "strong_copy", fails_on_the_third)
    with pytest.raises(OSError, match="No space"):
        make_copies(src, tmp_path / "out", seed=8, **kw)
    assert _digest(tmp_path / "out") == before                   # old benchmark, whole, no leftovers
    monkeypatch.setattr(cd, "strong_copy", real)
    make_copies(src, tmp_path / "out", seed=8, **kw)             # a rerun that succeeds replaces it
    make_copies(src, tmp_path / "fresh", seed=8, **kw)
    assert _digest(tmp_path / "out") == _digest(tmp_path / "fresh") != before


def test_originals_under_8_px_are_named(tmp_path):
    """An original under 8 px failed with "empty range for randrange()" inside the crop edit."""
    src = tmp_path / "src"
    _write_images(src, n=6)
    Image.new("RGB", (5, 30)).save(src / "img03.png")            # replaces one: 5 px wide
    with pytest.raises(ValueError, match=r"img03.png is 5x30 px.*at least 8 px"):
        make_copies(src, tmp_path / "out", seed=0, originals=6, copies=1, distractors=0, whitening=0)


def test_make_copies_refuses_an_out_folder_inside_its_images(tmp_path):
    """A rerun would take the first run's database, queries and whitening images as sources."""
    _write_images(tmp_path / "src")
    with pytest.raises(ValueError, match="is inside"):
        make_copies(tmp_path / "src", tmp_path / "src" / "bench", originals=2, distractors=2, whitening=2)
    assert not (tmp_path / "src" / "bench").exists()

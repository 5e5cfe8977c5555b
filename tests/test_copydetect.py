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

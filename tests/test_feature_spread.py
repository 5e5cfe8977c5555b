"""The spread of a backbone's features (dimensional collapse): collapse.feature_spread against a
brute-force transcription, on cases whose answer is known, in chunks as on a memory-mapped file,
and as ``embed`` reports it."""
import itertools
import json

import numpy as np
import pytest

from dino_lite.collapse import feature_spread


def brute_force(x):
    """The same three numbers the long way: the centred data's singular values squared, each
    pair of different rows' cosine in a loop."""
    c = x - x.mean(0)
    var = np.linalg.svd(c, compute_uv=False) ** 2
    var = np.concatenate([var, np.zeros(x.shape[1] - len(var))])
    share = var / var.sum()
    p = share[share > 1e-15]
    cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
           for i, a in enumerate(x) for j, b in enumerate(x) if i != j]
    return np.exp(-(p * np.log(p)).sum()), share.max(), np.mean(cos)


@pytest.mark.parametrize("n,d,offset,chunk", list(itertools.product((2, 7, 40), (1, 3, 16), (0.0, 5.0), (3, 1000))))
def test_matches_a_brute_force_transcription(n, d, offset, chunk):
    x = np.random.default_rng(n * d + chunk).normal(size=(n, d)) * np.linspace(1, 3, d) + offset
    got = feature_spread(x.astype(np.float32), chunk=chunk)
    rank, top, cos = brute_force(x.astype(np.float32).astype(np.float64))
    assert got["effective_rank"] == pytest.approx(rank, rel=1e-5, abs=1e-5)
    assert got["top_share"] == pytest.approx(top, rel=1e-5, abs=1e-7)
    assert got["mean_cosine"] == pytest.approx(cos, abs=1e-6)
    assert (got["dims"], got["images"]) == (d, n)


def test_known_answers():
    rng = np.random.default_rng(0)
    iso = rng.normal(size=(20000, 8))                  # every direction alike: rank near 8
    assert 7.9 < feature_spread(iso)["effective_rank"] <= 8
    assert abs(feature_spread(iso)["mean_cosine"]) < 0.01
    line = np.outer(rng.normal(size=5000), rng.normal(size=8)) + 1e-3 * rng.normal(size=(5000, 8))
    s = feature_spread(line)                           # one direction holds the variance
    assert s["effective_rank"] < 1.01 and s["top_share"] > 0.999
    shifted = feature_spread(iso + 100.0)              # a common vector: the rank does not move,
    assert shifted["effective_rank"] == pytest.approx(feature_spread(iso)["effective_rank"], rel=1e-6)
    assert shifted["mean_cosine"] > 0.99               # the cosine does
    two = feature_spread(np.concatenate([iso[:, :2] * 1e3, iso[:, 2:]], axis=1))
    assert 1.99 < two["effective_rank"] < 2.01         # two loud directions of 8


def test_reads_a_memory_mapped_file_in_chunks(tmp_path):
    x = np.random.default_rng(1).normal(size=(1001, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    assert feature_spread(np.load(tmp_path / "f.npy", mmap_mode="r"), chunk=64) == \
        pytest.approx(feature_spread(x), rel=1e-9)


def test_zero_rows_have_no_cosine():
    x = np.random.default_rng(2).normal(size=(6, 3))
    x[[1, 4]] = 0
    assert feature_spread(x)["mean_cosine"] == pytest.approx(brute_force(x[[0, 2, 3, 5]])[2], abs=1e-12)
    same = feature_spread(np.zeros((3, 2)))                  # identical rows: nothing varies
    assert np.isnan(same["mean_cosine"]) and same["effective_rank"] == same["top_share"] == 0


def test_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_spread(np.ones((1, 4)))


def test_embed_reports_the_spread(tiny_folder, tmp_path, capsys):
    from dino_lite.cli import main
    tiny = ["--set", "image_size=32", "--set", "global_size=32", "--set", "local_size=16",
            "--set", "depth=1", "--set", "bf16=false", "--set", "fused_attention=off"]
    main(["embed", "--preset", "cpu-demo", "--random-init", *tiny, "--images", str(tiny_folder / "val"),
          "--out", str(tmp_path / "val"), "--json"])
    out = capsys.readouterr().out
    reported = json.loads(out.strip().splitlines()[-1])["spread"]
    assert reported == feature_spread(np.load(tmp_path / "val.npy"))
    assert f"spread: effective rank {reported['effective_rank']:.1f} of {reported['dims']} dimensions" in out

"""Retrieval scoring: AP by hand and against a brute-force definition, junk removal, P@k / R@k,
relevance from classes and from the ground-truth CSV."""

import random
import types

import pytest
import torch

from dino_lite.retrieval import (average_precision, chance_map, rank_database, read_ground_truth,
                                 relevance_from_classes, score_rankings)


def test_ap_hand_computed():
    # ranking: R N R N N R ; 3 positives -> (1/1 + 2/3 + 3/6) / 3
    order = [10, 11, 12, 13, 14, 15]
    assert average_precision(order, {10, 12, 15}) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # a positive never retrieved counts as precision 0
    assert average_precision(order, {10, 99}) == pytest.approx(1 / 2)
    # junk at ranks 2 and 4 is deleted: the ranking becomes R R N R -> (1 + 1 + 3/4) / 3
    assert average_precision(order, {10, 12, 15}, junk={11, 13}) == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert average_precision(order, {10, 11}) == 1.0


def _brute_force_ap(order, positives, junk):
    """AP as the area under the step precision-recall curve, summed over every cut-off."""
    ranking = [i for i in order if i not in junk]
    ap, prev_recall = 0.0, 0.0
    for k in range(1, len(ranking) + 1):
        top = ranking[:k]
        tp = sum(1 for i in top if i in positives)
        recall = tp / len(positives)
        ap += (tp / k) * (recall - prev_recall)
        prev_recall = recall
    return ap


def test_ap_matches_brute_force_on_random_rankings():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 30)
        order = list(range(n))
        rng.shuffle(order)
        positives = set(rng.sample(range(n), rng.randint(1, n)))
        junk = set(rng.sample([i for i in range(n) if i not in positives],
                              rng.randint(0, n - len(positives))))
        assert average_precision(order, positives, junk) == pytest.approx(
            _brute_force_ap(order, positives, junk), abs=1e-12)


def test_chance_map_is_the_mean_ap_over_every_ranking():
    # every ordering of a small database, AP averaged: the exact expectation of a random ranking
    import itertools
    positive = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0],
                             [0, 0, 0, 0, 0, 0]], dtype=torch.bool)     # the last query: skipped
    junk = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    exact = []
    for q in range(3):
        pos, jk = set(positive[q].nonzero().flatten().tolist()), set(junk[q].nonzero().flatten().tolist())
        orders = list(itertools.permutations(range(6)))
        exact.append(sum(average_precision(o, pos, jk) for o in orders) / len(orders))
    assert chance_map(positive, junk) == pytest.approx(sum(exact) / 3, abs=1e-12)
    # one relevant item among n: H_n / n, not 1/n (the copy-detection benchmark's case)
    n = 130
    one = torch.zeros(1, n, dtype=torch.bool)
    one[0, 7] = True
    assert chance_map(one) == pytest.approx(sum(1 / k for k in range(1, n + 1)) / n)
    assert chance_map(torch.ones(2, 5, dtype=torch.bool)) == pytest.approx(1.0)


def test_score_rankings_precision_recall_and_junk():
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    positive = torch.tensor([[True, False, True, False], [False, False, False, True]])
    junk = torch.tensor([[False, True, False, False], [False, False, False, False]])
    out = score_rankings(order, positive, junk, ks=(1, 2))
    assert out["ap"] == [1.0, 1.0] and out["mAP"] == 1.0
    assert out["precision@2"] == pytest.approx((2 / 2 + 1 / 2) / 2)   # junk skipped for query 0
    assert out["recall@1"] == pytest.approx((1 / 2 + 1) / 2)
    no_junk = score_rankings(order, positive, ks=(2,))
    assert no_junk["ap"][0] == pytest.approx((1 + 2 / 3) / 2)


def test_rank_database_is_cosine():
    db = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    sim, order = rank_database(torch.tensor([[2.0, 0.1]]), db)
    assert order[0].tolist() == [0, 2, 1]
    assert sim[0, 0] == pytest.approx(2 / (4.01 ** 0.5))


def test_relevance_from_classes_and_csv(tmp_path):
    rel = relevance_from_classes(["a", "b"], ["b", "a", "a"])
    assert rel.tolist() == [[False, True, True], [True, False, False]]
    gt = tmp_path / "gt.csv"
    gt.write_text("query,match,kind\nq1.jpg,d2.jpg,\nq1.jpg,d1.jpg,junk\nq2.jpg,d1.jpg,positive\n")
    pos, junk = read_ground_truth(gt, ["q1.jpg", "q2.jpg"], ["d1.jpg", "d2.jpg"])
    assert pos.tolist() == [[False, True], [True, False]]
    assert junk.tolist() == [[True, False], [False, False]]
    gt.write_text("query,match\nq9.jpg,d1.jpg\n")
    with pytest.raises(ValueError, match="q9.jpg"):
        read_ground_truth(gt, ["q1.jpg"], ["d1.jpg"])
    gt.write_text("a,b\n")
    with pytest.raises(ValueError, match="query,match"):
        read_ground_truth(gt, ["q1.jpg"], ["d1.jpg"])


class _ShapeSpy(torch.nn.Module):
    """A stand-in backbone with 8 px patches: records the input shapes, returns the mean colour."""

    def __init__(self):
        super().__init__()
        self.patch_embed = types.SimpleNamespace(patch_size=(8, 8))
        self.unused = torch.nn.Parameter(torch.zeros(1))      # where the features are computed
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x.mean((2, 3))


def test_extreme_aspect_ratios_are_centre_cropped_to_4_to_1_before_resizing(tmp_path):
    """A 1000x2 px image resized by its short side became 32000x64 px (32,000 tokens); its central
    8x2 part is embedded instead, with a warning. Images up to 4:1 are resized as before, uncropped."""
    import numpy as np
    from PIL import Image
    from dino_lite.retrieval import embed_images
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (2, 1000, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    wide.crop((496, 0, 504, 2)).save(tmp_path / "centre.png")          # (1000 - 8) / 2 = 496
    net = _ShapeSpy()
    with pytest.warns(UserWarning, match=r"wide.png \(1000x2 px\)"):
        feats = embed_images(net, [tmp_path / "wide.png"], 64)
    assert net.shapes == [(1, 3, 64, 256)]
    assert torch.equal(feats, embed_images(net, [tmp_path / "centre.png"], 64))
    Image.new("L", (1, 100000), 90).save(tmp_path / "tall.png")         # a few hundred bytes
    four = Image.fromarray(rng.integers(0, 256, (10, 40, 3), dtype=np.uint8))
    four.save(tmp_path / "four.png")
    net.shapes.clear()
    with pytest.warns(UserWarning, match=r"1 image\(s\) more elongated than 4:1.*tall.png"):
        embed_images(net, [tmp_path / "tall.png", tmp_path / "four.png"], 32)
    assert sorted(net.shapes) == [(1, 3, 32, 128), (1, 3, 128, 32)]   # 4:1 is kept whole

"""Retrieval scoring: AP by hand and against a brute-force definition, junk removal, P@k / R@k,
relevance from classes and from the ground-truth CSV."""

import random

import pytest
import torch

from dino_lite.retrieval import (average_precision, rank_database, read_ground_truth,
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

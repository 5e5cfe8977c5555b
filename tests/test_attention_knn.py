"""Attention masks (60%-mass rule), Jaccard, attention read-out and weighted k-NN."""

import pytest
import torch

from dino_lite.attention import (all_attentions, attention_maps, centre_mask_like, jaccard,
                                 mass_mask, object_head, object_mass, score_maps,
                                 shapes_attention_set)
from dino_lite.evaluate import knn_classify
from dino_lite.models import build_backbone


def test_mass_mask_keeps_smallest_set_reaching_60_percent():
    m = torch.tensor([[0.5, 0.3], [0.15, 0.05]])
    assert mass_mask(m, 0.6).tolist() == [[True, True], [False, False]]    # 0.5 < 0.6, 0.8 >= 0.6
    assert mass_mask(m, 0.5).tolist() == [[True, False], [False, False]]   # 0.5 alone reaches 0.5
    assert mass_mask(m, 1.0).all()
    # scale does not matter: the rule works on shares of the total
    assert torch.equal(mass_mask(m * 7, 0.6), mass_mask(m, 0.6))


def test_mass_mask_uniform_map_keeps_60_percent_of_patches():
    keep = mass_mask(torch.ones(3, 10, 10), 0.6)
    assert keep.shape == (3, 10, 10)
    assert keep.flatten(1).sum(1).tolist() == [60, 60, 60]


def test_mass_mask_rejects_bad_mass():
    with pytest.raises(ValueError):
        mass_mask(torch.ones(2, 2), 1.5)


def test_jaccard():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True        # 8 pixels
    b[1:3] = True       # 8 pixels, overlap 4
    assert jaccard(a, b).item() == pytest.approx(4 / 12)
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[2] = False    # ignore the row only b covers
    assert jaccard(a, b, valid).item() == pytest.approx(4 / 8)


def test_attention_readout_rows_are_distributions():
    torch.manual_seed(0)
    vit = build_backbone("vit_mini", patch_size=8, img_size=32, depth=2)
    x = torch.randn(3, 3, 32, 32)
    fused_before = [blk.attn.fused_attn for blk in vit.blocks]
    attn = all_attentions(vit, x)
    assert [blk.attn.fused_attn for blk in vit.blocks] == fused_before   # fast path restored
    assert len(attn) == 2 and attn[-1].shape == (3, 4, 17, 17)
    assert torch.allclose(attn[-1].sum(-1), torch.ones(3, 4, 17), atol=1e-5)
    maps = attention_maps(vit, x)
    assert maps.shape == (3, 4, 4, 4)
    assert torch.allclose(maps, attn[-1][:, :, 0, 1:].reshape(3, 4, 4, 4))


def test_score_maps_perfect_and_best_head():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4, :4] = True
    good = torch.full((4, 4), 0.03)               # 36% of the mass spread over the background,
    good[:2, :2] = 0.16                           # 64% on the object quadrant: all 4 patches kept
    bad = torch.zeros(4, 4)
    bad[2:, 2:] = 1.0
    maps = torch.stack([good, bad])[None]         # [1 image, 2 heads, 4, 4]
    s = score_maps(maps, gt)
    assert s["jaccard_best_head"] == pytest.approx(1.0)
    assert s["jaccard"] < 1.0


def test_the_centre_prior_takes_as_many_patches_as_the_map_nearest_the_centre():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, :4] = True                         # 4 patches along the top edge
    masks[1, :, :3] = True                         # 12 patches
    prior = centre_mask_like(masks)
    assert prior.flatten(1).sum(1).tolist() == [4, 12]
    centre = torch.zeros(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = True                        # the 4 central patches of a 4x4 grid
    assert torch.equal(prior[0], centre)
    assert not prior[1][[0, 0, 3, 3], [0, 3, 0, 3]].any()   # the corners are the farthest
    # score_maps: a map whose mask is the top edge's 4 patches (all its mass), on an object of
    # the 4 central patches, scores 0 while the centre prior of the same area scores 1
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    edge = torch.zeros(1, 1, 4, 4)
    edge[0, 0, 0, :] = 1.0
    s = score_maps(edge, gt, mass=1.0)
    assert s["jaccard"] == 0 and s["jaccard_centre_prior"] == pytest.approx(1.0)
    assert s["per_image_centre_prior"] == [pytest.approx(1.0)]


def test_object_mass_counts_attention_on_the_object_and_uniform_scores_the_area():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, :4, :4] = True                          # the object is a quarter of the image
    sharp = torch.zeros(4, 4)
    sharp[1, 1] = 1.0                             # one patch, inside the object
    maps = torch.stack([sharp, torch.ones(4, 4)])[:, None]   # [2 images, 1 head, 4, 4]
    assert object_mass(maps[:, 0], gt).tolist() == pytest.approx([1.0, 0.25])
    s = score_maps(maps, gt)
    assert s["object_area"] == pytest.approx(0.25)
    assert s["object_mass"] == pytest.approx(0.625)
    valid = torch.ones_like(gt)
    valid[:, 4:] = False                          # ignoring the bottom half doubles the share
    assert object_mass(maps[1:, 0], gt[1:], valid[1:]).item() == pytest.approx(0.5)


def test_object_head_is_the_head_with_the_largest_mean_share_on_the_object():
    torch.manual_seed(0)
    patches = torch.rand(5, 4, 4) > 0.6          # the object, patch by patch (every image has one)
    patches[:, 0, 0] = True
    gt = patches.repeat_interleave(2, 1).repeat_interleave(2, 2)   # at 8 x 8 pixels
    maps = torch.rand(5, 3, 4, 4) ** 4            # three heads of random, peaky maps
    by_hand = []                                  # each head's share, a loop over pixels
    for h in range(3):
        shares = []
        for b in range(5):
            a = maps[b, h].repeat_interleave(2, 0).repeat_interleave(2, 1)
            shares.append(float((a * gt[b]).sum() / a.sum()))
        by_hand.append(sum(shares) / 5)
    assert object_head(maps, gt) == max(range(3), key=by_hand.__getitem__)
    maps[:, 1] = patches.float() + 1e-3           # head 1 now looks (almost) only at the object
    assert object_head(maps, gt) == 1


def test_the_held_out_head_is_picked_on_the_other_half_and_scored_against_its_own_prior():
    torch.manual_seed(1)
    gt = torch.rand(7, 8, 8) > 0.5                # 7 images: 4 even, 3 odd
    maps = torch.rand(7, 3, 4, 4) ** 4            # three heads of random, peaky maps
    s = score_maps(maps, gt)

    def one(b, h):                                # a loop: one head's mask on one image
        mask = mass_mask(maps[b, h], 0.6).repeat_interleave(2, 0).repeat_interleave(2, 1)
        return float(jaccard(mask, gt[b])), int(mass_mask(maps[b, h], 0.6).sum())
    scores = [[one(b, h)[0] for h in range(3)] for b in range(7)]
    even, odd = range(0, 7, 2), range(1, 7, 2)
    best_on = lambda rows: max(range(3), key=lambda h: sum(scores[b][h] for b in rows))   # noqa: E731
    heads = [best_on(odd), best_on(even)]         # picked on the other half
    assert s["held_out_heads"] == heads
    scored = {b: scores[b][heads[b % 2]] for b in range(7)}
    assert s["per_image_held_out_head"] == pytest.approx([scored[b] for b in range(7)])
    assert s["jaccard_held_out_head"] == pytest.approx(sum(scored.values()) / 7)
    # each image's prior: as many central patches (centre_mask_like, tested above) as the
    # chosen head's mask holds on that image
    for b in range(7):
        area = one(b, heads[b % 2])[1]
        some = torch.zeros(16, dtype=torch.bool)
        some[:area] = True
        central = centre_mask_like(some.view(1, 4, 4))[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert s["per_image_held_out_head_prior"][b] == pytest.approx(float(jaccard(central, gt[b])))
    # the oracle best head per image is never below the held-out head
    assert s["jaccard_best_head"] >= s["jaccard_held_out_head"]
    # a head that matches the object on every image is picked on both halves and scores 1
    patches = torch.rand(7, 4, 4) > 0.5
    patches[:, 0, 0] = True                       # every image has an object
    maps[:, 2] = patches.float()                  # all of head 2's mass on the object's patches
    gt = patches.repeat_interleave(2, 1).repeat_interleave(2, 2)
    s = score_maps(maps, gt, mass=1.0)
    assert s["held_out_heads"] == [2, 2] and s["jaccard_held_out_head"] == pytest.approx(1.0)
    assert score_maps(maps[:1], gt[:1])["jaccard_held_out_head"] is None   # one image: no halves


def test_the_second_attention_set_shares_no_image_with_the_first():
    a, names_a, masks_a, _ = shapes_attention_set(32, 4)
    b, names_b, masks_b, _ = shapes_attention_set(32, 4, start=4)
    both, _, _, _ = shapes_attention_set(32, 8)
    assert torch.equal(torch.cat([a, b]), both) and not set(names_a) & set(names_b)
    assert names_b == ["test_4", "test_5", "test_6", "test_7"]
    with pytest.raises(ValueError, match="selects none"):
        shapes_attention_set(32, 4, start=1000)


def test_knn_with_fewer_test_images_than_k():
    torch.manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    labels = torch.arange(10) % 2
    test = train[:3] + 0.001
    preds = knn_classify(train, labels, torch.nn.functional.normalize(test, dim=1), k=20)
    assert preds.shape == (3,)
    assert preds.tolist() == labels[:3].tolist()


def test_knn_weighted_vote_prefers_closer_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    # two class-1 neighbours at cosine 0.6 lose to one class-0 neighbour at cosine 1.0 at T = 0.07
    assert knn_classify(train, labels, torch.tensor([[1.0, 0.0]]), k=3).item() == 0
    # with a very high temperature the weights flatten and the majority wins
    assert knn_classify(train, labels, torch.tensor([[1.0, 0.0]]), k=3, temperature=100).item() == 1


def test_knn_classifies_float64_features_the_same_one_at_a_time_as_in_a_batch():
    # float64 features keep float64 votes (notebook 05's batch check runs in float64, where the
    # matrix kernel for one query and for many cannot swap near-equal neighbours)
    torch.manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(500, 16, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (500,))
    test = torch.nn.functional.normalize(torch.randn(40, 16, dtype=torch.float64), dim=1)
    batch = knn_classify(train, labels, test, k=20)
    alone = torch.cat([knn_classify(train, labels, test[i:i + 1], k=20) for i in range(40)])
    assert torch.equal(batch, alone)
    assert torch.equal(batch, knn_classify(train.float(), labels, test.float(), k=20))

"""Video object segmentation: label propagation with ideal and noisy features, DAVIS J and F
against hand-computed masks, mask reading, and a whole sequence written to disk."""

import numpy as np
import pytest
import torch
from PIL import Image

from dino_lite.vos import (LabelPropagation, boundary_f, labels_to_mask, moving_shapes_video,
                           read_mask, region_jaccard, seg2bmap, segment_sequence, soft_labels,
                           write_davis)

GRID = (32, 48)           # 2-pixel "patches" on the 64 x 96 generated video


def _ideal_features(mask):
    """Features that encode the true label of each patch (its class shares) and its position."""
    lab = soft_labels(mask, [1, 2], GRID)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, GRID[0]), torch.linspace(0, 1, GRID[1]), indexing="ij")
    return torch.cat([lab, 0.3 * torch.stack([yy, xx])])


def _propagated_j(noise, seed=0):
    video, masks = moving_shapes_video()
    g = torch.Generator().manual_seed(seed)
    feats = [_ideal_features(m) + noise * torch.randn(5, *GRID, generator=g) for m in masks]
    prop = LabelPropagation(feats[0], soft_labels(masks[0], [1, 2], GRID), n_context=7)
    js = []
    for t in range(1, len(masks)):
        pred = labels_to_mask(prop(feats[t]), masks.shape[1:], [1, 2])
        js.append(np.mean([region_jaccard(pred == i, masks[t] == i) for i in (1, 2)]))
        assert len(prop.queue) == min(t, 7)               # memory: a queue of n frames, no more
    return float(np.mean(js))


def test_propagation_with_ideal_features_is_near_perfect_and_degrades_with_noise():
    clean = _propagated_j(0.0)
    assert clean > 0.93
    noisy = [_propagated_j(s) for s in (0.2, 0.5, 2.0)]
    assert clean > noisy[0] + 0.02 > noisy[1] + 0.2 > noisy[2] + 0.4
    assert noisy[2] < 0.2


def test_region_jaccard_by_hand():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True
    gt[0:2, 0:3] = True
    assert region_jaccard(pred, gt) == pytest.approx(4 / 6)
    void = np.zeros((4, 4), bool)
    void[0, 2] = True                                   # one gt-only pixel left out
    assert region_jaccard(pred, gt, void) == pytest.approx(4 / 5)
    assert region_jaccard(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_boundary_map_and_f_measure_by_hand():
    one = np.zeros((4, 4), bool)
    one[1, 1] = True
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True                          # DAVIS marks the pixel and its upper-left ring
    assert np.array_equal(seg2bmap(one), expected)
    two = np.zeros((4, 4), bool)
    two[1, 1:3] = True                                 # boundary: rows 0-1, columns 0-2 (6 pixels)
    assert seg2bmap(two).sum() == 6
    # no tolerance: the 4 predicted boundary pixels all lie on the true boundary (precision 1),
    # 4 of the 6 true ones are found (recall 2/3): F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert boundary_f(one, two, bound_th=0) == pytest.approx(0.8)
    # DAVIS tolerance on a 4x4 image: ceil(0.008 * 5.66) = 1 pixel, the missing two are matched
    assert boundary_f(one, two) == pytest.approx(1.0)
    far = np.zeros((20, 20), bool)
    far[15:18, 15:18] = True
    near = np.zeros((20, 20), bool)
    near[1:4, 1:4] = True
    assert boundary_f(near, far) == 0.0 and boundary_f(far, far) == 1.0
    assert boundary_f(np.zeros((5, 5)), far[:5, :5]) == 1.0          # both empty


def test_read_mask_davis2016_binary_and_2017_palette(tmp_path):
    a = np.zeros((5, 6), np.uint8)
    a[1:3, 1:4] = 255
    Image.fromarray(a).save(tmp_path / "bin.png")
    ids, void = read_mask(tmp_path / "bin.png")
    assert ids.max() == 1 and ids.sum() == 6 and not void.any()
    p = np.zeros((5, 6), np.uint8)
    p[0, 0], p[1, 1], p[4, 5] = 1, 2, 255
    im = Image.fromarray(p, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (253 * 3))
    im.save(tmp_path / "pal.png")
    ids, void = read_mask(tmp_path / "pal.png")
    assert ids[0, 0] == 1 and ids[1, 1] == 2 and ids[4, 5] == 0 and void[4, 5] and void.sum() == 1


def test_first_frame_baseline_writes_masks_overlays_and_gif(tmp_path):
    root = write_davis(tmp_path / "davis", frames=6, level="480p")
    r = segment_sequence(root, "shapes", backbone=None, out=tmp_path / "out")
    assert 0.0 < r["J"] < 1.0 and 0.0 < r["F"] < 1.0       # the objects move: repeating is wrong
    pred = np.array(Image.open(tmp_path / "out" / "shapes" / "00003.png"))
    first = read_mask(root / "Annotations" / "480p" / "shapes" / "00000.png")[0]
    assert pred.shape == (64, 96) and np.array_equal(pred, first)
    assert sorted(np.unique(pred).tolist()) == [0, 1, 2]
    assert (tmp_path / "out" / "shapes.gif").exists()
    assert len(list((tmp_path / "out" / "shapes" / "overlay").iterdir())) == 6

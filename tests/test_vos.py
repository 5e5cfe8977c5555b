"""Video object segmentation: label propagation with ideal and noisy features, DAVIS J and F
against hand-computed masks and a brute-force computation written independently of the DAVIS
toolkit's morphology, the toolkit's conventions (empty masks, void, objects 1..n, the frames
scored), annotations as users save them (anti-aliased, 16-bit, RGB, unpadded frame numbers),
sequences that cannot be scored, and a whole sequence written to disk."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dino_lite.vos import (PALETTE, LabelPropagation, boundary_f, evaluate_davis, labels_to_mask,
                           moving_shapes_video, read_mask, region_jaccard, seg2bmap,
                           segment_sequence, sequence_files, soft_labels, write_davis)

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
    r = segment_sequence(root, "shapes", backbone=None, out=tmp_path / "out", video=tmp_path / "out")
    assert 0.0 < r["J"] < 1.0 and 0.0 < r["F"] < 1.0       # the objects move: repeating is wrong
    pred = np.array(Image.open(tmp_path / "out" / "shapes" / "00003.png"))
    first = read_mask(root / "Annotations" / "480p" / "shapes" / "00000.png")[0]
    assert pred.shape == (64, 96) and np.array_equal(pred, first)
    assert sorted(np.unique(pred).tolist()) == [0, 1, 2]
    assert r["video"] == str(tmp_path / "out" / "shapes.gif")
    with Image.open(r["video"]) as gif:
        assert gif.n_frames == 6
    assert len(list((tmp_path / "out" / "shapes" / "overlay").iterdir())) == 6


# --- J and F as the DAVIS toolkit computes them ---------------------------------------------------

def _boundary_brute_force(m):
    """seg2bmap by its definition, pixel by pixel: a pixel is on the boundary when it differs
    from its right, lower or lower-right neighbour that exists (the last row compares with its
    right neighbour only, the last column with its lower one, the corner with none)."""
    h, w = m.shape
    b = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                nbrs = [(y, x + 1)]
            elif x == w - 1:
                nbrs = [(y + 1, x)]
            else:
                nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            b[y, x] = any(m[yy, xx] != m[y, x] for yy, xx in nbrs)
    return b


def _f_brute_force(pred, gt, bound_th=0.008):
    """F from distances: a boundary pixel is matched when some pixel of the other boundary lies
    within the tolerance radius r (x^2 + y^2 <= r^2, r = ceil(bound_th x diagonal))."""
    r = math.ceil(bound_th * math.hypot(*pred.shape))
    bp, bg = np.argwhere(_boundary_brute_force(pred)), np.argwhere(_boundary_brute_force(gt))
    if len(bp) == 0 and len(bg) == 0:
        return 1.0
    if len(bp) == 0 or len(bg) == 0:
        return 0.0
    d2 = ((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1)
    precision, recall = (d2.min(1) <= r * r).mean(), (d2.min(0) <= r * r).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_boundary_f_and_jaccard_equal_a_brute_force_computation_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = rng.integers(12, 40, 2)
        yy, xx = np.mgrid[0:h, 0:w]
        blobs = [((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < rng.uniform(4, 80))
                 for _ in range(4)]
        gt, pred = blobs[0] | blobs[1], blobs[2] | (blobs[3] if trial % 2 else blobs[0])
        th = [0.008, 0.05, 0.1][trial % 3]                  # radius 1 to 5 px at these sizes
        assert np.array_equal(seg2bmap(gt), _boundary_brute_force(gt))
        assert boundary_f(pred, gt, bound_th=th) == pytest.approx(_f_brute_force(pred, gt, th), abs=1e-12)
        union = (pred | gt).sum()
        assert region_jaccard(pred, gt) == pytest.approx((pred & gt).sum() / union if union else 1.0)


def test_the_tolerance_is_8_pixels_at_davis_480p_by_hand():
    """480 x 854 px: the diagonal is 979.6 px, 0.8% of it 7.84, so boundaries 8 px apart match
    and 9 px apart do not. The true object: the 400 columns on the left; its boundary is column
    399 (480 pixels); a prediction k columns wider has its boundary at column 399 + k."""
    gt = np.zeros((480, 854), bool)
    gt[:, :400] = True
    for k, f in ((8, 1.0), (9, 0.0)):
        pred = np.zeros_like(gt)
        pred[:, :400 + k] = True
        assert boundary_f(pred, gt) == f
        assert region_jaccard(pred, gt) == pytest.approx(400 / (400 + k))


def test_empty_masks_follow_the_toolkit():
    """Both empty: J = F = 1. Only one empty: J = 0 and F = 0 (precision or recall is 0)."""
    empty, some = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    some[2:5, 2:5] = True
    assert region_jaccard(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    for a, b in ((empty, some), (some, empty)):
        assert region_jaccard(a, b) == 0.0 and boundary_f(a, b) == 0.0


# --- annotations as users have them -----------------------------------------------------------

def _disc(h=48, w=64, r=14, cx=30):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - h / 2) ** 2 + (xx - cx) ** 2 <= r * r


def _still_sequence(root, masks, frames=None, name="seq"):
    """A DAVIS sequence whose frames all show the same picture, with the given annotation
    images (PIL images, saved as PNG) for frames 00000, 00001, ..."""
    jpeg, ann = root / "JPEGImages" / name, root / "Annotations" / name
    jpeg.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    h, w = np.asarray(masks[0]).shape[:2]
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    for t in range(frames or len(masks)):
        picture.save(jpeg / f"{t:05d}.jpg")
        if t < len(masks):
            masks[t].save(ann / f"{t:05d}.png")
    return root


def test_anti_aliased_8_bit_masks_keep_one_object(tmp_path):
    """A binary mask resized with bilinear interpolation has grey edges: they are thresholded at
    128, not read as objects 1..254 (which made the object void and J about 0.02)."""
    big = Image.fromarray(_disc(96, 128, 28, 60).astype(np.uint8) * 255)
    small = big.resize((64, 48), Image.BILINEAR)
    a = np.asarray(small)
    assert len(np.unique(a)) > 10                            # really anti-aliased
    ids, void = read_mask_from(small, tmp_path)
    assert np.array_equal(ids, (a >= 128).astype(np.int64)) and not void.any()
    r = segment_sequence(_still_sequence(tmp_path / "d", [small] * 4), "seq")
    assert list(r["objects"]) == [1] and r["J"] == 1.0 and r["F"] == 1.0
    half = Image.fromarray(_disc().astype(np.uint8) * 128)        # binary, saved as 0 / 128
    assert np.array_equal(read_mask_from(half, tmp_path, "half.png")[0], _disc() * 1)
    ids = _disc().astype(np.uint8) + (np.arange(64) < 8).astype(np.uint8) * 2   # object ids in grey
    assert np.array_equal(read_mask_from(Image.fromarray(ids), tmp_path, "ids.png")[0], ids)


def read_mask_from(image, tmp_path, name="m.png"):
    image.save(tmp_path / name)
    return read_mask(tmp_path / name)


def test_16_bit_masks_are_read_not_wrapped(tmp_path):
    disc = _disc()
    binary16 = Image.fromarray(disc.astype(np.uint16) * 65535)
    ids, _ = read_mask_from(binary16, tmp_path)
    assert np.array_equal(ids, disc.astype(np.int64))
    ids16 = np.zeros(disc.shape, np.uint16)
    ids16[disc], ids16[:5, :5] = 2, 1                        # object ids in a 16-bit PNG
    ids, _ = read_mask_from(Image.fromarray(ids16), tmp_path, "ids.png")
    assert np.array_equal(ids, ids16.astype(np.int64))
    r = segment_sequence(_still_sequence(tmp_path / "d", [binary16] * 3), "seq")
    assert r["J"] == 1.0                                     # was 0.000: 65535 wrapped to 255


def test_rgb_masks_palette_colours_are_objects_others_are_an_error(tmp_path):
    disc, square = _disc(), np.zeros((48, 64), bool)
    square[5:15, 40:55] = True
    pal = np.array(PALETTE, np.uint8).reshape(256, 3)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[disc], rgb[square] = pal[1], pal[2]                  # (128, 0, 0) and (0, 128, 0)
    ids, _ = read_mask_from(Image.fromarray(rgb), tmp_path)
    assert np.array_equal(ids, disc * 1 + square * 2)         # two objects, not merged into one
    rgb[square] = (0, 255, 0)
    with pytest.raises(ValueError, match=r"m\.png is an RGB image with colours outside the DAVIS "
                                         r"palette \(e\.g\. \(0, 255, 0\)"):
        read_mask_from(Image.fromarray(rgb), tmp_path)
    grey = np.repeat((disc * 255).astype(np.uint8)[..., None], 3, -1)
    assert np.array_equal(read_mask_from(Image.fromarray(grey), tmp_path)[0], disc * 1)


def test_void_counts_as_background_and_objects_are_1_to_n_as_in_the_toolkit(tmp_path):
    """The toolkit's semi-supervised scores set void (255) to background without leaving it out,
    and count objects 1..max id of the first mask (an absent id scores 1 where its truth is empty)."""
    first = np.zeros((48, 64), np.uint8)
    first[10:20, 10:20], first[30:40, 30:40] = 1, 3           # no object 2
    later = first.copy()
    later[10:20, 20:25] = 255                                 # void beside object 1
    pal = [Image.fromarray(m, mode="P") for m in (first, later, later, later)]
    for im in pal:
        im.putpalette(PALETTE)
    r = segment_sequence(_still_sequence(tmp_path / "d", pal), "seq")
    assert list(r["objects"]) == [1, 2, 3]
    assert r["objects"][2] == {"J": 1.0, "F": 1.0} and r["objects"][3]["J"] == 1.0
    pred1 = np.zeros((48, 64), bool)
    pred1[10:20, 10:25] = True                                # the baseline predicts object 1 over the void too
    gt1 = later == 1
    assert r["objects"][1]["J"] == region_jaccard(first == 1, gt1) == 1.0
    assert region_jaccard(pred1, gt1) == pytest.approx(100 / 150)   # void is background


def test_frames_numbered_without_padding_are_propagated_in_numeric_order(tmp_path):
    """ffmpeg writes 1.jpg ... 12.jpg: sorted as text, 10, 11, 12 would come before 2, and the
    frames scored (all but the first and last) would be the wrong ones."""
    root = write_davis(tmp_path / "d", frames=12)
    for sub in ("JPEGImages", "Annotations"):
        for p in sorted((root / sub / "shapes").iterdir()):
            p.rename(p.with_name(f"{int(p.stem) + 1}{p.suffix}"))
    frames, _ = sequence_files(root, "shapes")
    assert [p.stem for p in frames] == [str(i) for i in range(1, 13)]
    r = segment_sequence(root, "shapes")
    first = read_mask(root / "Annotations" / "shapes" / "1.png")[0]
    expected = np.mean([region_jaccard(first == 1, read_mask(root / "Annotations" / "shapes" / f"{t}.png")[0] == 1)
                        for t in range(2, 12)])
    assert r["objects"][1]["J"] == pytest.approx(expected)


def test_sequences_that_cannot_be_scored_are_named_and_counted_apart(tmp_path):
    root = write_davis(tmp_path / "d", name="good", frames=5)
    write_davis(root, name="single", frames=1)
    write_davis(root, name="two", frames=2)
    write_davis(root, name="empty", frames=4)
    for p in (root / "Annotations" / "empty").iterdir():
        Image.fromarray(np.zeros((64, 96), np.uint8)).save(p)
    r = evaluate_davis(root, None, progress=None)
    good = segment_sequence(root, "good")
    assert r["sequences_scored"] == 1 and r["objects"] == 2
    assert (r["J"], r["F"]) == (good["J"], good["F"])
    assert set(r["not_scored"]) == {"single", "two", "empty"}
    assert r["not_scored"]["single"].startswith("1 annotated frame:")
    assert "holds no object" in r["not_scored"]["empty"]
    only = evaluate_davis(root, None, ["single"], progress=None)
    assert only["J"] is None and only["JF"] is None and only["sequences_scored"] == 0


def test_an_annotation_of_another_size_names_the_file(tmp_path):
    root = write_davis(tmp_path / "d", frames=4)
    bad = root / "Annotations" / "shapes" / "00002.png"
    with Image.open(bad) as im:
        im.resize((48, 32), Image.NEAREST).save(bad)
    with pytest.raises(ValueError, match=rf"annotation {bad} is 48x32 px but its frame "
                                         rf".*00002.jpg is 96x64 px"):
        segment_sequence(root, "shapes")


# the official toolkit's output (davis2017-evaluation, davis2017/metrics.py: db_eval_iou and
# f_measure, run outside this repository with opencv and scikit-image) on the masks of
# _shifted_predictions: per object, the mean over frames 1..10 of (J, F)
TOOLKIT = {(64, 96): {1: (0.4634571703462035, 0.2165512301004205),
                      2: (0.6357252789534437, 0.4697368421052631)},
           (270, 480): {1: (0.558822295309968, 0.18244443514607084),
                        2: (0.6139529488922565, 0.06790123456790123)}}


@pytest.mark.parametrize("size", list(TOOLKIT))
def test_j_and_f_equal_the_davis_toolkits_recorded_output(size):
    """Each frame's truth against the previous frame's mask moved by (2, -3) pixels, at 64x96
    (tolerance 1 px) and 270x480 (5 px)."""
    _, masks = moving_shapes_video(frames=12, size=size, seed=1)
    for obj, (j_toolkit, f_toolkit) in TOOLKIT[size].items():
        pairs = [(np.roll(masks[t - 1] == obj, (2, -3), axis=(0, 1)), masks[t] == obj) for t in range(1, 11)]
        assert np.mean([region_jaccard(p, g) for p, g in pairs]) == pytest.approx(j_toolkit, abs=1e-12)
        assert np.mean([boundary_f(p, g) for p, g in pairs]) == pytest.approx(f_toolkit, abs=1e-12)

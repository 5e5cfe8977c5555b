"""Mask generators: BEiT's blocks (target, sizes, aspect ratios), uniform masks, SplitMask's split."""

import math

import pytest
import torch

from dino_lite.masking import (block_mask, block_masks, min_block_patches, split_masks,
                               uniform_masks)

GRIDS = [(2, 2), (4, 4), (8, 8), (14, 14), (3, 7)]


@pytest.mark.parametrize("grid", GRIDS)
def test_block_mask_never_exceeds_its_target(grid):
    n = grid[0] * grid[1]
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        for target in {0, 1, n // 4, round(0.4 * n), n // 2, n}:
            mask = block_mask(g, grid, target)
            assert mask.shape == (n,) and mask.dtype == torch.bool
            assert int(mask.sum()) <= target


def test_block_mask_reaches_most_of_its_target_on_beits_grid():
    counts = [int(block_mask(torch.Generator().manual_seed(s), (14, 14), 75).sum()) for s in range(50)]
    assert min(counts) >= 50 and sum(counts) / len(counts) > 70     # ~40% of 196, as BEiT


@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (5, 9)])
def test_blocks_have_minimum_size_and_aspect_ratio_in_bounds(grid):
    n = grid[0] * grid[1]
    least = min_block_patches(n)
    seen_wide = seen_tall = False
    for seed in range(80):
        blocks = []
        target = round(0.4 * n)
        mask = block_mask(torch.Generator().manual_seed(seed), grid, target, blocks=blocks)
        masked = 0
        cover = torch.zeros(grid, dtype=torch.bool)
        for top, left, bh, bw in blocks:
            remaining = target - masked
            assert bh * bw >= min(least, remaining)
            assert 0.3 <= bh / bw <= 1 / 0.3
            assert 0 <= top and top + bh <= grid[0] and 0 <= left and left + bw <= grid[1]
            before = int(cover.sum())
            cover[top:top + bh, left:left + bw] = True
            masked += int(cover.sum()) - before
            seen_wide |= bw > bh
            seen_tall |= bh > bw
        assert torch.equal(cover.flatten(), mask)            # the mask is the union of its blocks
    assert seen_wide and seen_tall                           # both orientations are drawn


def test_min_block_scales_with_the_grid():
    assert min_block_patches(196) == 16
    assert min_block_patches(64) == 5
    assert min_block_patches(16) == 1
    assert min_block_patches(4) == 1


def test_block_masks_exact_hits_the_target_and_seed_fixes_the_masks():
    a = block_masks(torch.Generator().manual_seed(3), 16, (8, 8), 0.5, exact=True)
    assert (a.sum(1) == 32).all()
    b = block_masks(torch.Generator().manual_seed(3), 16, (8, 8), 0.5, exact=True)
    c = block_masks(torch.Generator().manual_seed(4), 16, (8, 8), 0.5, exact=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.4, 0.75, 1.0])
def test_uniform_masks_hide_exactly_the_ratio(ratio):
    m = uniform_masks(torch.Generator().manual_seed(0), 32, 64, ratio)
    assert (m.sum(1) == round(ratio * 64)).all()
    if 0 < ratio < 1:                                        # every patch is hidden sometimes
        assert m.any(0).all()


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (14, 14)])
def test_block_split_halves_are_disjoint_and_cover_the_image(grid):
    n = grid[0] * grid[1]
    a, b = split_masks(torch.Generator().manual_seed(1), 20, grid, "block")
    assert not (a & b).any()
    assert (a | b).all()
    assert (a.sum(1) == n // 2).all() and (b.sum(1) == n // 2).all()


def test_uniform_split_gives_each_branch_a_disjoint_quarter():
    a, b = split_masks(torch.Generator().manual_seed(1), 20, (8, 8), "uniform")
    assert not (a & b).any()
    assert (a.sum(1) == 16).all() and (b.sum(1) == 16).all()    # each sees 25%, masks 75%


def test_bad_mask_arguments_are_rejected():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="target"):
        block_mask(g, (4, 4), 17)
    with pytest.raises(ValueError, match="ratio"):
        uniform_masks(g, 2, 16, 1.5)
    with pytest.raises(ValueError, match="split mode"):
        split_masks(g, 2, (4, 4), "random")
    with pytest.raises(ValueError, match="divisible"):
        split_masks(g, 2, (3, 3), "block")

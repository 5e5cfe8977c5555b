"""augment.py: iBOT's patch masks (the crops and photometric policy are tested in test_data.py)."""

import torch

from dino_lite.augment import patch_masks


def test_patch_masks_hide_a_fixed_total_with_shares_spread_over_the_ratio():
    masks = {seed: patch_masks(torch.Generator().manual_seed(seed), 200, 64, prob=0.5, ratio=(0.1, 0.5))
             for seed in (7, 8)}
    for m in masks.values():
        counts = m.sum(1)
        assert m.shape == (200, 64) and (counts > 0).sum() == 100          # round(0.5 x 200) images
        masked = counts[counts > 0]
        assert masked.min() >= 6 and masked.max() <= 32                    # round((0.1, 0.5) x 64)
        assert masked.float().std() > 3                                    # shares differ by image
    assert masks[7].sum() == masks[8].sum() and not torch.equal(masks[7], masks[8])
    assert not patch_masks(torch.Generator().manual_seed(7), 50, 64, prob=0.0).any()

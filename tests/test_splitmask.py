"""splitmask.py: InfoNCE by hand, and SplitMask's two halves (no mask token, own positions, symmetry)."""

import math

import pytest
import torch

from conftest import tiny_mim_model
from dino_lite.methods.splitmask import info_nce


def test_info_nce_matches_a_hand_computed_case():
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]])           # norms do not matter: cosines
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r, t = 1 / math.sqrt(2), 0.2
    # a -> b: rows [1, r] and [0, r] over t, labels 0 and 1; b -> a: rows [1, 0] and [r, r]
    a_to_b = (math.log(1 + math.exp((r - 1) / t)) + math.log(1 + math.exp(-r / t))) / 2
    b_to_a = (math.log(1 + math.exp(-1 / t)) + math.log(2)) / 2
    assert info_nce(a, b, t).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)
    assert info_nce(b, a, t).item() == pytest.approx(info_nce(a, b, t).item(), rel=1e-6)


@pytest.mark.parametrize("split,seen", [("block", 8), ("uniform", 4)])
def test_splitmask_encoder_never_receives_a_mask_token(split, seen):
    model = tiny_mim_model("splitmask", split).eval()
    sequences = []
    model.backbone.blocks.register_forward_pre_hook(lambda m, args: sequences.append(args[0].detach()))
    images = torch.randn(6, 3, 32, 32)
    a, b = model.draw_masks(torch.Generator().manual_seed(0), 6)
    model(images, a, b)
    assert len(sequences) == 2                                 # one encoder pass per branch
    mask_token = model.mask_token.detach().view(-1)
    for x in sequences:
        assert x.shape == (6, 1 + seen, 128)                   # CLS + the branch's patches only
        assert not (x - mask_token).abs().amax(-1).lt(1e-6).any()
        assert not (x[:, 1:] - mask_token).abs().amax(-1).lt(1e-3).any()


def test_splitmask_encoder_tokens_carry_their_own_positions():
    model = tiny_mim_model("splitmask").eval()
    seen = []
    model.backbone.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    images = torch.randn(2, 3, 32, 32)
    a, b = model.draw_masks(torch.Generator().manual_seed(1), 2)
    model(images, a, b)
    vit = model.backbone
    full = vit._pos_embed(vit.patch_embed(images))[:, 1:]      # every patch, position added
    for i in range(2):
        assert torch.allclose(seen[0][i, 1:], full[i][a[i]], atol=1e-6)
        assert torch.allclose(seen[1][i, 1:], full[i][b[i]], atol=1e-6)


@pytest.mark.parametrize("split", ["block", "uniform"])
def test_splitmask_loss_is_symmetric_in_its_two_halves(split):
    model = tiny_mim_model("splitmask", split).eval()
    images = torch.randn(5, 3, 32, 32)
    a, b = model.draw_masks(torch.Generator().manual_seed(2), 5)
    ab, stats = model(images, a, b)
    ba, _ = model(images, b, a)
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    assert ab.item() == pytest.approx(2 * stats["mim_loss"] + stats["infonce"], rel=1e-5)

"""beit.py: masked patches enter the encoder as the mask token, and the loss by hand."""

import pytest
import torch

from conftest import tiny_mim_model
from dino_lite.tokenizers import patchify


def test_beit_hides_masked_embeddings_and_its_loss_matches_a_hand_computation():
    model = tiny_mim_model("beit").eval()
    images = torch.randn(3, 3, 32, 32)
    (mask,) = model.draw_masks(torch.Generator().manual_seed(0), 3)
    assert mask.any()
    seen = []
    model.backbone.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    loss, _ = model(images, mask)
    vit = model.backbone
    pos = vit.pos_embed[0, 1:]
    x = seen[0][:, 1:]
    assert torch.allclose(x[mask], (model.mask_token[0, 0] + pos.expand(3, -1, -1)[mask]), atol=1e-6)
    visible = vit._pos_embed(vit.patch_embed(images))[:, 1:]
    assert torch.allclose(x[~mask], visible[~mask], atol=1e-6)
    # by hand: tokens by brute-force argmax, log-softmax of the head at the masked tokens
    patches = torch.nn.functional.normalize(patchify(images, 8), dim=-1)
    book = model.tokenizer.codebook
    targets = torch.tensor([[max(range(32), key=lambda i: float(p @ book[i])) for p in img]
                            for img in patches])
    out = vit.norm(vit.blocks(seen[0]))[:, 1:][mask]
    logp = torch.log_softmax(model.head(out), -1)
    expected = -logp[torch.arange(len(out)), targets[mask]].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

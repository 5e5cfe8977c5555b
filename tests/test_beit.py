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


def test_a_mask_ratio_that_masks_no_patch_is_refused(tiny_folder, tmp_path, capsys):
    """beit_mask_ratio=0.01 rounds to 0 of the 16 (or, in the fp32 variant, 36) patches: every
    step's loss was 0.0 and nothing trained, without a word. Now the config is refused."""
    from conftest import mim_train_args
    from dino_lite.methods.beit import BEiT
    from dino_lite.cli import main
    with pytest.raises(SystemExit) as e:
        main(mim_train_args("beit", tiny_folder, tmp_path / "run", 2, "beit_mask_ratio=0.01"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "beit_mask_ratio=0.01 masks no patch" in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    model = tiny_mim_model("beit")
    with pytest.raises(ValueError, match="masks no patch of the 4 x 4 grid"):
        BEiT(model.backbone, model.tokenizer, (4, 4), mask_ratio=0.01)
    # one patch of 16 is the least that trains: every image has it masked, and a loss
    small = BEiT(model.backbone, model.tokenizer, (4, 4), mask_ratio=0.04)
    (mask,) = small.draw_masks(torch.Generator().manual_seed(0), 3)
    assert mask.sum(1).tolist() == [1, 1, 1]
    assert small(torch.randn(3, 3, 32, 32), mask)[0].item() > 0

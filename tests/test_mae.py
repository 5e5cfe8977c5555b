"""MAE, the fourth method: one file (methods/mae.py) and its registry line. Its masks, targets and
loss against hand computations; the encoder sees only visible patches; it trains through the one
loop, resumes exactly, and the evaluation commands read its checkpoint."""


import numpy as np
import pytest
import torch

from conftest import TINY_MIM, train_resume_and_knn
from dino_lite.checkpoint import backbone_from_checkpoint, load_checkpoint
from dino_lite.config import make_config
from dino_lite.methods import build_networks, get_method
from dino_lite.methods.mae import MAE, normalised_pixels, patchify, random_masks
from dino_lite.models import build_backbone


def tiny_mae(seed=0):
    torch.manual_seed(seed)
    vit = build_backbone("vit_mini", patch_size=8, img_size=32, depth=2, fused_attention=False)
    return MAE(vit, (4, 4), 8, decoder_depth=1, fused_attention=False).eval()


def test_masks_hide_three_quarters_of_each_image_uniformly():
    g = torch.Generator().manual_seed(0)
    masks = random_masks(g, 4000, 16, 0.75)
    assert (masks.sum(1) == 12).all()                     # exactly round(0.75 x 16) per image
    share = masks.float().mean(0)                         # every patch equally likely: 0.75
    assert (share - 0.75).abs().max() < 0.03
    again = random_masks(torch.Generator().manual_seed(0), 4000, 16, 0.75)
    assert torch.equal(masks, again)


def test_patchify_and_the_targets_against_a_loop():
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 2 * 3, 8 * 8 * 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                patch = x[b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8].permute(1, 2, 0).reshape(-1)
                assert torch.equal(p[b, 3 * i + j], patch)       # row-major, as the ViT's tokens
                t = normalised_pixels(x, 8)[b, 3 * i + j].numpy()
                ref = (patch.numpy() - patch.numpy().mean()) / np.sqrt(patch.numpy().var(ddof=1) + 1e-6)
                np.testing.assert_allclose(t, ref, atol=1e-5)


def test_the_loss_is_the_mean_squared_error_over_the_hidden_patches_only():
    model = tiny_mae()
    images = torch.randn(3, 3, 32, 32)
    (mask,) = model.draw_masks(torch.Generator().manual_seed(1), 3)
    loss, _ = model(images, mask)
    with torch.no_grad():
        pred = model.predict(images, mask).numpy()
    target = normalised_pixels(images, 8).numpy()
    errors = [((pred[b, n] - target[b, n]) ** 2).mean()
              for b in range(3) for n in range(16) if mask[b, n]]
    assert len(errors) == 3 * 12
    assert loss.item() == pytest.approx(float(np.mean(errors)), rel=1e-5)


def test_the_encoder_never_sees_the_hidden_patches():
    model = tiny_mae()
    images = torch.randn(2, 3, 32, 32)
    (mask,) = model.draw_masks(torch.Generator().manual_seed(2), 2)
    changed = images.clone()
    for b in range(2):                       # new pixels in every hidden patch
        for n in mask[b].nonzero()[:, 0].tolist():
            i, j = divmod(n, 4)
            changed[b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8] = torch.randn(3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.predict(images, mask), model.predict(changed, mask), atol=1e-6)
        # while a change in a visible patch does move the prediction
        b, n = 0, (~mask[0]).nonzero()[0, 0].item()
        i, j = divmod(n, 4)
        changed[b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8] += 1.0
        assert not torch.allclose(model.predict(images, mask), model.predict(changed, mask), atol=1e-4)


def test_mae_is_registered_and_needs_no_tokenizer(tiny_folder):
    from conftest import tiny_config
    method = get_method("mae")
    assert not method.needs_tokenizer
    student, teacher = build_networks(tiny_config(tiny_folder, method="mae"))
    assert student is teacher and type(student).__name__ == "MAE"
    cfg = make_config("cpu-demo", {"method": "mae"})
    assert cfg.adam_betas == (0.9, 0.95) and cfg.n_local == 0     # MAE's recipe, not DINO's
    with pytest.raises(ValueError, match="needs a ViT"):
        make_config("cpu-demo", {"method": "mae", "arch": "resnet18"})


def test_mae_trains_through_the_loop_resumes_exactly_and_evaluates(tiny_folder, tmp_path, capsys):
    path, log = train_resume_and_knn("mae", tiny_folder, tmp_path, capsys)
    assert all(r["masked_share"] == 0.75 for r in log)
    ckpt = load_checkpoint(path)
    backbone, loaded = backbone_from_checkpoint(path)
    assert loaded.method == "mae"
    assert torch.equal(backbone.state_dict()["pos_embed"], ckpt["teacher"]["backbone.pos_embed"])


def test_mae_accumulates_micro_batches_to_the_whole_batch_update(tiny_folder, tmp_path):
    import dino_lite.train as tr
    losses = {}
    for n in (1, 4):
        cfg = make_config("cpu-demo", {"method": "mae", "data": str(tiny_folder), "max_steps": 2,
                                        "minutes": None, "accumulate": n}, TINY_MIM)
        trainer = tr.train(cfg, tmp_path / f"a{n}", progress=False)
        losses[n] = ([r["loss"] for r in trainer.history],
                     {k: v.clone() for k, v in trainer.student.state_dict().items()})
    assert losses[4][0] == pytest.approx(losses[1][0], rel=1e-5)
    for k, v in losses[1][1].items():
        torch.testing.assert_close(losses[4][1][k], v, atol=1e-5, rtol=1e-4)


def test_the_small_data_study_plans_mae_cells_without_a_tokenizer(tiny_folder):
    from dino_lite.smalldata import FINETUNE, plan
    cells = plan("cpu-demo", ["mae", "beit"], [0.5, 1.0], 4, FINETUNE, data=str(tiny_folder),
                 sets=TINY_MIM, mim_sets=["lr=0.001"])
    names = [name for name, _, _ in cells]
    assert names == ["mae-0.5-s0", "mae-1-s0", "beit-0.5-s0", "beit-1-s0"]
    fields = {name: f for name, _, f in cells}
    assert fields["mae-1-s0"]["tokenizer"] is None and fields["beit-1-s0"]["tokenizer"]
    mae_cfg = cells[1][1]
    assert mae_cfg.method == "mae" and mae_cfg.lr == 0.001      # --mim-set reaches every masked model

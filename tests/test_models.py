"""models.py: the head's fixed weight norm, the EMA teacher, the multi-crop wrapper, QK-norm, the
conv stem and the masked-token path of iBOT."""

import pytest
import torch

from conftest import tiny_config
from dino_lite.attention import all_attentions
from dino_lite.config import make_config
from dino_lite.models import (DINOHead, MultiCropWrapper, build_backbone, build_student_teacher,
                              update_teacher, vit_tokens)


def test_last_layer_weight_norm_stays_one_after_a_step():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=True)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1)
    head(torch.randn(4, 16)).pow(2).sum().backward()
    opt.step()
    norms = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    free = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_logits_are_cosines():
    """With the weight norm fixed at 1, each logit is the cosine between the image's bottleneck
    vector and one prototype (unit vectors), however large the input."""
    import torch.nn.functional as F
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(64, 16) * 100
    with torch.no_grad():
        prototypes = head.last_layer.weight                  # g = 1: already unit rows
        expected = F.normalize(head.mlp(x), dim=-1) @ prototypes.T
        assert torch.allclose(head(x), expected, atol=1e-5)
        assert torch.allclose(prototypes.norm(dim=-1), torch.ones(32))


def test_ema_update():
    s, t = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in s.parameters():
            p.fill_(1.0)
        for p in t.parameters():
            p.fill_(0.0)
    update_teacher(s, t, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in t.parameters())
    update_teacher(s, t, 1.0)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in t.parameters())


def test_teacher_is_a_frozen_deep_copy():
    s, t = build_student_teacher(tiny_config("unused"))
    assert s is not t and s.backbone is not t.backbone
    for (n1, p1), (n2, p2) in zip(s.named_parameters(), t.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
        assert not p2.requires_grad


def test_multicrop_wrapper_one_backbone_pass_per_resolution():
    backbone = build_backbone("vit_mini", patch_size=8, img_size=32, depth=1)
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    wrapper = MultiCropWrapper(backbone, DINOHead(128, 10, hidden_dim=16, bottleneck_dim=8))
    crops = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 3
    out = wrapper(crops).output
    assert len(out) == 5 and all(o.shape == (2, 10) for o in out)
    assert calls == [torch.Size([4, 3, 32, 32]), torch.Size([6, 3, 16, 16])]


def test_qk_norm_bounds_attention_logits():
    """QK-norm LayerNorms queries and keys, so scaling the qkv weights up cannot sharpen attention."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for qk_norm in (False, True):
        vit = build_backbone("vit_mini", patch_size=8, img_size=32, depth=1, qk_norm=qk_norm)
        with torch.no_grad():
            vit.blocks[0].attn.qkv.weight[: 2 * vit.embed_dim] *= 30    # queries and keys only
        attn = all_attentions(vit, x)[0]
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
        peak = attn.max(-1).values.mean()
        assert (peak < 0.5) if qk_norm else (peak > 0.5), (qk_norm, peak)
    assert make_config("cpu-demo").qk_norm and not make_config("imagenet-vits16").qk_norm


def test_conv_stem_keeps_one_token_per_patch():
    from dino_lite.attention import attention_maps
    vit = build_backbone("vit_mini", patch_size=8, img_size=64, depth=1, stem="conv").eval()
    x = torch.randn(2, 3, 64, 64)
    assert vit.forward_features(x).shape[1] == 1 + 8 * 8
    assert attention_maps(vit, x).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="power-of-two"):
        build_backbone("vit_mini", patch_size=6, img_size=48, stem="conv")


def test_vit_tokens_is_timms_forward_and_hidden_patches_are_unseen():
    torch.manual_seed(0)
    vit = build_backbone("vit_mini", patch_size=8, img_size=32, depth=2, fused_attention=False).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(vit_tokens(vit, x)[:, 0], vit(x), atol=1e-6)
    hide = torch.zeros(2, 16, dtype=torch.bool)
    hide[:, 5] = True                                   # patch (row 1, column 1): pixels 8:16, 8:16
    token = torch.randn(1, 1, vit.embed_dim)
    y = x.clone()
    y[:, :, 8:16, 8:16] = torch.randn(2, 3, 8, 8)       # change only the hidden patch's pixels
    assert torch.allclose(vit_tokens(vit, x, hide, token), vit_tokens(vit, y, hide, token), atol=1e-6)
    assert not torch.allclose(vit_tokens(vit, x)[:, 0], vit_tokens(vit, y)[:, 0], atol=1e-4)


def test_student_predicts_hidden_patches_through_the_mask_token(tiny_folder):
    student, teacher = build_student_teacher(tiny_config(tiny_folder, ibot=1.0, head_bn=False))
    crops = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32), torch.randn(3, 3, 16, 16)]
    hide = torch.zeros(6, 16, dtype=torch.bool)
    hide[0, :4] = hide[4, 10:] = True
    out, feats, patch_logits = student(crops, hide=hide, predict=hide)
    assert [o.shape for o in out] == [(3, 64)] * 3 and patch_logits.shape == (10, 64)
    assert [f.shape for f in feats] == [(3, 128)] * 3
    patch_logits.sum().backward()
    assert student.mask_token.grad.abs().sum() > 0
    t = teacher(crops[:2], predict=hide)
    assert t.patches.shape == (10, 64) and len(t.output) == 2
    assert student(crops).patches is None

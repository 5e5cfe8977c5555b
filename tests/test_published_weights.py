"""The weights users have load into the package's backbones: Hugging Face's facebook/dino-vit*
(transformers' ViT names, .safetensors and .bin, with or without ``vit.``), DINOv2 in its
official names (LayerScale, mask token, registers) and timm's. Each state dict is built here in
the published layout from a small model (the key mapping is written out independently of the
package's), and the loaded backbone must compute what the original architecture computes:
timm's own DINOv2 classes, and for Hugging Face the timm ViT the official DINO layout loads
into. Downloads are never made: the offline messages are checked with the hub calls replaced."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from dino_lite import checkpoint
from dino_lite.checkpoint import (CheckpointError, backbone_from_checkpoint, hf_vit_to_timm,
                                  infer_config, resolve_checkpoint)
from dino_lite.cli import main
from dino_lite.models import build_backbone


@pytest.fixture(autouse=True)
def _explicit_attention(monkeypatch):
    """The attention kernel is not timed here (a timing probe per width costs seconds)."""
    monkeypatch.setattr(checkpoint, "use_fused_attention", lambda cfg: False)


def _randomise(model):
    """Random weights everywhere (biases, norms, LayerScale too), so that a swapped key could not
    go unnoticed and no output sits in an ill-conditioned LayerNorm of a near-constant token."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def _dino_vit(depth=2, seed=0):
    """A small ViT in the official DINO layout (timm's names are DINO's)."""
    torch.manual_seed(seed)
    return _randomise(build_backbone("vit_mini", patch_size=8, img_size=32, depth=depth))


def _to_hf(sd: dict, prefix="") -> dict:
    """DINO's names -> transformers' ViTModel names, written out as the HF conversion does
    (qkv split into query, key and value; a pooler that is no part of the backbone)."""
    out = {f"{prefix}embeddings.cls_token": sd["cls_token"],
           f"{prefix}embeddings.position_embeddings": sd["pos_embed"],
           f"{prefix}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           f"{prefix}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           f"{prefix}layernorm.weight": sd["norm.weight"], f"{prefix}layernorm.bias": sd["norm.bias"],
           f"{prefix}pooler.dense.weight": torch.zeros(4, 4)}
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, e = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{kind}"].chunk(3)
            out[e + f"attention.attention.query.{kind}"] = q.clone()
            out[e + f"attention.attention.key.{kind}"] = k.clone()
            out[e + f"attention.attention.value.{kind}"] = v.clone()
            for theirs, ours in (("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                                 ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                 ("output.dense", "mlp.fc2")):
                out[e + f"{theirs}.{kind}"] = sd[b + f"{ours}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def _forward(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "folder"])
@pytest.mark.parametrize("prefix", ["", "vit."])
def test_hugging_face_dino_loads_as_the_official_layout_does(tmp_path, fmt, prefix):
    ref = _dino_vit()
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "official.pth")
    hf = _to_hf(sd, prefix)
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(hf, path)
    elif fmt == "bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(hf, path)
    else:                                   # a hub snapshot / save_pretrained folder
        path = tmp_path / "dino-vitmini8"
        path.mkdir()
        save_file(hf, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    backbone, cfg = backbone_from_checkpoint(path)
    official, _ = backbone_from_checkpoint(tmp_path / "official.pth")
    assert (cfg.arch, cfg.patch_size, cfg.depth, cfg.image_size) == ("vit_mini", 8, 2, 32)
    # the mapping round-trips: every tensor comes back under its DINO name, unchanged
    loaded = backbone.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_forward(backbone, x), _forward(official, x))
    assert torch.allclose(_forward(backbone, x), _forward(ref, x), atol=1e-5)


def test_hugging_face_names_at_the_real_sizes():
    """facebook/dino-vits16's and dino-vitb8's shapes (meta tensors: shapes only) give the
    paper's architectures."""
    for width, patch, arch in ((384, 16, "vit_small"), (768, 8, "vit_base")):
        grid = 224 // patch
        sd = {"cls_token": torch.empty(1, 1, width), "pos_embed": torch.empty(1, grid * grid + 1, width),
              "patch_embed.proj.weight": torch.empty(width, 3, patch, patch),
              "patch_embed.proj.bias": torch.empty(width), "norm.weight": torch.empty(width),
              "norm.bias": torch.empty(width)}
        for i in range(12):
            sd.update({f"blocks.{i}.attn.qkv.weight": torch.empty(3 * width, width),
                       f"blocks.{i}.attn.qkv.bias": torch.empty(3 * width),
                       **{f"blocks.{i}.{n}.{k}": torch.empty(width)
                          for n in ("norm1", "norm2", "attn.proj", "mlp.fc2") for k in ("weight", "bias")},
                       f"blocks.{i}.mlp.fc1.weight": torch.empty(4 * width, width),
                       f"blocks.{i}.mlp.fc1.bias": torch.empty(4 * width)})
        sd = {k: v.to("meta") for k, v in sd.items()}
        timm_sd = hf_vit_to_timm(_to_hf(sd, "vit."))
        assert {k: tuple(v.shape) for k, v in timm_sd.items()} == {k: tuple(v.shape) for k, v in sd.items()}
        cfg = infer_config(timm_sd)
        assert (cfg.arch, cfg.patch_size, cfg.depth, cfg.image_size, cfg.reg_tokens,
                cfg.layer_scale) == (arch, patch, 12, 224, 0, None)


def _timm_dinov2(reg: bool, seed=0):
    """timm's own DINOv2 architecture at a small width and depth (56 px: a 4x4 patch grid)."""
    torch.manual_seed(seed)
    name = "vit_small_patch14_reg4_dinov2" if reg else "vit_small_patch14_dinov2"
    return _randomise(timm.create_model(name, pretrained=False, num_classes=0, embed_dim=128,
                                        depth=2, num_heads=4, img_size=56, dynamic_img_size=True))


def _to_official_dinov2(sd: dict) -> dict:
    """timm's DINOv2 names -> the official release's: a mask token; with registers, the
    ``register_tokens`` key and a position embedding that holds the CLS entry again (timm folds
    it into the CLS token)."""
    out = dict(sd)
    out["mask_token"] = torch.randn(1, sd["cls_token"].shape[-1])
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = torch.randn(1, 1, sd["cls_token"].shape[-1])
        out["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        out["cls_token"] = sd["cls_token"] - cls_pos
    return out


@pytest.mark.parametrize("reg", [False, True], ids=["dinov2", "dinov2_reg4"])
@pytest.mark.parametrize("layout", ["official.pth", "timm.safetensors"])
def test_dinov2_loads_and_matches_timms_dinov2(tmp_path, reg, layout):
    ref = _timm_dinov2(reg)
    sd = ref.state_dict()
    if layout == "official.pth":
        torch.save(_to_official_dinov2(sd), tmp_path / layout)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / layout)
    backbone, cfg = backbone_from_checkpoint(tmp_path / layout)
    assert (cfg.arch, cfg.patch_size, cfg.depth, cfg.reg_tokens, cfg.global_size) == \
        ("vit_mini", 14, 2, 4 if reg else 0, 56)
    assert cfg.layer_scale is not None and backbone.num_prefix_tokens == (5 if reg else 1)
    for side in (56, 84):                    # its own grid, and one timm interpolates to
        x = torch.randn(2, 3, side, side)
        assert torch.allclose(_forward(backbone, x), _forward(ref, x), atol=1e-5), side
        assert torch.allclose(backbone.forward_features(x), ref.forward_features(x), atol=1e-5)


@pytest.mark.slow
def test_dinov2_at_the_real_size_with_registers(tmp_path):
    """ViT-S/14 with registers, official layout, at its published shapes (518 px grid): built,
    loaded and evaluated at 224 px like timm's model."""
    torch.manual_seed(0)
    ref = _randomise(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False,
                                       num_classes=0, dynamic_img_size=True))
    torch.save(_to_official_dinov2(ref.state_dict()), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    backbone, cfg = backbone_from_checkpoint(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert (cfg.arch, cfg.patch_size, cfg.depth, cfg.global_size, cfg.image_size, cfg.reg_tokens) == \
        ("vit_small", 14, 12, 518, 224, 4)
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(_forward(backbone, x), _forward(ref, x), atol=1e-4)


def test_registers_are_skipped_by_attention_maps_the_explorer_and_vos_features(tmp_path):
    """Commands that read patch tokens skip DINOv2's 4 registers as they skip CLS."""
    from dino_lite.attention import AttentionCache, attention_maps
    from dino_lite.vos import patch_features
    torch.save(_to_official_dinov2(_timm_dinov2(True).state_dict()), tmp_path / "reg.pth")
    backbone, _ = backbone_from_checkpoint(tmp_path / "reg.pth")
    maps = attention_maps(backbone, torch.randn(1, 3, 56, 84))
    assert maps.shape == (1, 4, 4, 6) and (maps.sum((-2, -1)) < 1).all()     # registers hold the rest
    assert AttentionCache(backbone, torch.randn(1, 3, 56, 56))(0).shape == (2, 4, 4, 4)
    assert patch_features(backbone, torch.randn(3, 56, 84)).shape == (128, 4, 6)


@pytest.mark.slow
def test_published_weights_through_the_vos_and_attention_commands(tmp_path, capsys):
    from dino_lite.vos import write_davis
    torch.save(_to_official_dinov2(_timm_dinov2(True).state_dict()), tmp_path / "reg.pth")
    save_file(_to_hf(_dino_vit().state_dict()), tmp_path / "model.safetensors")
    root = write_davis(tmp_path / "davis", frames=4, size=(56, 84))
    for ckpt, side in (("reg.pth", "56"), ("model.safetensors", "32")):
        main(["vos", "--checkpoint", str(tmp_path / ckpt), "--davis", str(root),
              "--short-side", side, "--json"])
        assert 0 <= json.loads(capsys.readouterr().out.splitlines()[-1])["JF"] <= 1
        main(["attention", "--checkpoint", str(tmp_path / ckpt), "--images",
              str(root / "JPEGImages" / "shapes"), "--limit", "2", "--image-size", side,
              "--out", str(tmp_path / "att"), "--json"])
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["images"] == 2


def test_downloads_are_optional_and_offline_says_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"cannot get hf:facebook/dino-vits16 .*download "
                       r"model.safetensors or pytorch_model.bin from https://huggingface.co/"
                       r"facebook/dino-vits16 and pass its path to --checkpoint"):
        resolve_checkpoint("hf:facebook/dino-vits16")
    target = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_reg4_pretrain.pth"
    with pytest.raises(SystemExit):
        main(["knn", "--checkpoint", "dinov2_vits14_reg", "--data", "shapes"])
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download dinov2_vits14_reg") and f"put it at {target}" in err
    assert len(err.strip().splitlines()) == 1
    # a file already where torch.hub keeps it, or in the Hugging Face cache, is used offline
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_to_official_dinov2(_timm_dinov2(True).state_dict()), target)
    assert resolve_checkpoint("dinov2_vits14_reg") == target
    assert backbone_from_checkpoint("dinov2_vits14_reg")[1].reg_tokens == 4
    cached = tmp_path / "snapshot" / "model.safetensors"
    cached.parent.mkdir()
    save_file(_to_hf(_dino_vit().state_dict()), cached)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: str(cached) if name == "model.safetensors" else offline())
    assert backbone_from_checkpoint("hf:facebook/dino-vits8")[1].arch == "vit_mini"
    with pytest.raises(FileNotFoundError, match="does not exist .*hf:OWNER/REPO.*dinov2_vits14"):
        resolve_checkpoint(tmp_path / "nothing.pth")


def test_a_broken_safetensors_file_and_a_half_attention_are_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model\.safetensors: \S"):
        backbone_from_checkpoint(tmp_path / "model.safetensors")
    hf = _to_hf(_dino_vit().state_dict())
    del hf["encoder.layer.1.attention.attention.value.bias"]
    save_file(hf, tmp_path / "half.safetensors")
    with pytest.raises(KeyError, match="block 1: the attention bias has .*'key', 'query'"):
        backbone_from_checkpoint(tmp_path / "half.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of .*model.safetensors"):
        backbone_from_checkpoint(tmp_path / "empty")

"""pca.py: the PCA view of patch features, checked against a numpy SVD of the centred patch
matrix; one PCA over all images (the same patch gets the same colour in every image); register
tokens dropped; the `attention --pca` command and its errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import cli_error
from dino_lite.cli import main
from dino_lite.config import make_config
from dino_lite.evaluate import build_eval_backbone
from dino_lite.pca import LOW, HIGH, fit_pca, patch_tokens, pca_figure, pca_rgb

TINY = dict(arch="vit_mini", patch_size=8, depth=1, image_size=32, global_size=32, local_size=16)


def tiny_vit(reg_tokens=0, seed=0):
    torch.manual_seed(seed)
    return build_eval_backbone(make_config("cpu-demo", dict(TINY, reg_tokens=reg_tokens))).eval()


def numpy_pca(tokens: np.ndarray, k=3):
    """Projected coordinates on the top-k principal directions, by numpy's SVD."""
    X = tokens - tokens.mean(0)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    return X @ vt[:k].T


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_colours_are_the_numpy_pca_of_the_patch_tokens_without_cls_and_registers(reg_tokens):
    vit = tiny_vit(reg_tokens)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)                    # [3, 1 + reg + 16, D]
    assert tokens.shape[1] == 1 + reg_tokens + 16
    patches = tokens[:, 1 + reg_tokens:].reshape(-1, tokens.shape[-1]).double().numpy()
    ref = numpy_pca(patches)
    coords, explained = fit_pca(patch_tokens(vit, x).reshape(-1, tokens.shape[-1]))
    for c in range(3):                                      # equal up to each component's sign
        sign = np.sign(ref[:, c] @ coords[:, c].double().numpy())
        np.testing.assert_allclose(coords[:, c].numpy(), sign * ref[:, c], atol=1e-4)
        # the stated sign rule: the coordinate largest in absolute value is positive
        assert coords[coords[:, c].abs().argmax(), c] > 0
    total = ((patches - patches.mean(0)) ** 2).sum()
    np.testing.assert_allclose(explained, (ref ** 2).sum(0) / total, rtol=1e-4)
    # the colours: each component between its 1st and 99th percentile over all patches
    flipped = ref * np.sign((ref * coords.double().numpy()).sum(0))
    lo, hi = np.quantile(flipped, LOW, axis=0), np.quantile(flipped, HIGH, axis=0)
    rgb = pca_rgb(vit, x)["rgb"]
    assert rgb.shape == (3, 4, 4, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).numpy(), np.clip((flipped - lo) / (hi - lo), 0, 1),
                               atol=1e-4)


class PatchwiseVit(nn.Module):
    """A stand-in backbone whose patch tokens depend on the patch's pixels only (no position, no
    attention): the same content gives the same features wherever and in whichever image it is."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Module()
        self.patch_embed.patch_size = (8, 8)
        self.proj = nn.Conv2d(3, 16, 8, 8)

    def forward_features(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros_like(t[:, :1]), t], 1)      # a CLS token first


def test_one_pca_over_all_images_gives_the_same_patch_the_same_colour():
    a = torch.randn(3, 32, 32)
    b = torch.randn(3, 32, 32) * 3                          # other content, other statistics...
    b[:, :8, :8] = a[:, 8:16, 16:24]                        # ...but one patch copied from a
    rgb = pca_rgb(PatchwiseVit(), torch.stack([a, b]))["rgb"]
    np.testing.assert_allclose(rgb[1, 0, 0].numpy(), rgb[0, 1, 2].numpy(), atol=1e-6)
    assert rgb[1].std() > 0.1                               # not a trivially flat colouring


def test_foreground_keeps_the_smaller_side_of_the_first_component_and_blacks_out_the_rest():
    # every patch a multiple of one pattern P, so the first component is P's direction: object
    # patches P, background -0.1 P and one far background patch -3 P. The far patch holds the
    # largest coordinate, so the sign rule puts the 28 background patches on the positive side;
    # the object is the smaller side, whatever the sign.
    torch.manual_seed(0)
    P = torch.randn(3, 8, 8)
    x = (-0.1 * P).repeat(2, 1, 4, 4)
    x[:, :, 8:16, 8:24] = P.repeat(1, 1, 2)                 # 2 object patches per image
    x[1, :, 24:, 24:] = -3 * P
    x += 1e-3 * torch.randn_like(x)
    r = pca_rgb(PatchwiseVit(), x, foreground=True)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[:, 1, 1:3] = True
    assert torch.equal(r["foreground"], expected)
    assert (r["rgb"][~expected] == 0).all() and r["rgb"][expected].max() > 0.5


def test_images_of_different_sizes_and_resnets_are_refused():
    vit = tiny_vit()
    with pytest.raises(ValueError, match="images of one size; got 32x32, 48x48 px"):
        pca_rgb(vit, [torch.randn(3, 32, 32), torch.randn(3, 48, 48)])
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        pca_rgb(vit, torch.randn(1, 3, 36, 36))
    from dino_lite.models import build_backbone
    with pytest.raises(ValueError, match="ResNet has no patch tokens"):
        pca_rgb(build_backbone("resnet18", img_size=32), torch.randn(1, 3, 32, 32))


def test_figure_has_images_above_their_maps_and_a_caption():
    x = torch.randn(2, 3, 32, 32)
    fig = pca_figure(x, pca_rgb(tiny_vit(), x), names=["a", "b"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:2]] == ["a", "b"] and len(axes) == 4
    assert axes[2].images[0].get_array().shape == (32, 32, 3)     # upsampled to image size
    assert all(len(ax.get_xticks()) == 0 for ax in axes)
    assert any("similar colours = similar features" in t.get_text() for t in fig.texts)


def _our_checkpoint(path, reg_tokens=2, method="dino"):
    """A dino_lite training checkpoint of a tiny ViT with registers (no training: its teacher)."""
    cfg = make_config("cpu-demo", dict(TINY, reg_tokens=reg_tokens, bf16=False, method=method))
    backbone = build_eval_backbone(cfg)
    torch.save({"config": dataclasses.asdict(cfg),
                "teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    return backbone


def test_cli_writes_the_pca_figure_for_our_checkpoint_and_published_weights(tmp_path, tiny_folder, capsys):
    backbone = _our_checkpoint(tmp_path / "checkpoint.pt")
    torch.manual_seed(3)                                    # a ViT in DINO's published layout
    from dino_lite.models import build_backbone
    torch.save(build_backbone("vit_mini", patch_size=8, img_size=32, depth=1).state_dict(),
               tmp_path / "dino_vitmini8.pth")
    for ckpt in ("checkpoint.pt", "dino_vitmini8.pth"):
        out = tmp_path / ckpt.split(".")[0]
        main(["attention", "--checkpoint", str(tmp_path / ckpt), "--images",
              str(tiny_folder / "images"), "--limit", "4", "--pca", "--out", str(out), "--json"])
        lines = capsys.readouterr().out.splitlines()
        assert f"figure: {out / 'pca.png'}" in lines
        res = json.loads(lines[-1])
        assert res["images"] == 4 and (out / "pca.png").stat().st_size > 1000
        assert not (out / "attention.png").exists()
    from dino_lite.attention import load_image_folder            # the library on the same images
    x = load_image_folder(tiny_folder / "images", 32, limit=4)[0]
    main(["attention", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--images",
          str(tiny_folder / "images"), "--limit", "4", "--pca", "--out", str(tmp_path / "o"), "--json"])
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    np.testing.assert_allclose(res["explained"], pca_rgb(backbone.eval(), x)["explained"], rtol=1e-4)


def test_cli_random_init_with_foreground(tmp_path, capsys):
    main(["attention", "--preset", "cpu-demo", "--random-init", *sum((["--set", f"{k}={v}"]
          for k, v in TINY.items()), []), "--images", "shapes", "--limit", "3", "--pca",
          "--foreground", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "of the patches kept as foreground" in out and (tmp_path / "pca.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--set", "arch=resnet18", "--pca"], "a ResNet has no patch tokens"),
    (["--foreground"], "--foreground is a step of the PCA view: add --pca"),
    (["--pca", "--video"], "--pca and --video are two different figures"),
    (["--pca", "--masks", "m"], "--pca draws the PCA view of patch features; it scores no --masks"),
])
def test_cli_errors(tmp_path, capsys, extra, message):
    err = cli_error(capsys, ["attention", "--preset", "cpu-demo", "--random-init", "--set",
                             "depth=1", "--images", "shapes", "--limit", "2", "--out",
                             str(tmp_path), *extra])
    assert err.startswith("error: ") and message in err


def test_explorer_switches_to_the_pca_view_fitted_over_all_its_images():
    pytest.importorskip("ipywidgets")
    from dino_lite.explorer import AttentionExplorer
    vit, random = tiny_vit(seed=1), tiny_vit(seed=2)
    images = torch.randn(3, 3, 32, 32)
    e = AttentionExplorer(vit, images, random_model=random)
    assert e.shown["view"] == "attention"
    e.view.value = "PCA"
    e.image.value = 1
    assert e.shown["view"] == "PCA" and e.shown["image"] == 1
    np.testing.assert_allclose(e.shown["pca"].numpy(), pca_rgb(vit, images)["rgb"][1].numpy(), atol=1e-6)
    titles = [ax.get_title() for ax in e.fig.axes]
    assert titles[1:] == ["trained: PCA of patches", "random init: PCA of patches"]
    e.view.value = "attention"
    assert e.shown["view"] == "attention" and "map" in e.shown


def test_attention_says_when_the_method_never_trained_the_cls_attention(tmp_path, tiny_folder, capsys):
    """A SplitMask checkpoint's CLS attention got no gradient (its loss reads patch tokens only):
    the command draws the maps and says so, and its JSON records it; DINO's does not warn."""
    for method in ("splitmask", "dino"):
        _our_checkpoint(tmp_path / f"{method}.pt", reg_tokens=0, method=method)
        main(["attention", "--checkpoint", str(tmp_path / f"{method}.pt"), "--images",
              str(tiny_folder / "images"), "--limit", "2", "--out", str(tmp_path / method), "--json"])
        captured = capsys.readouterr()
        res = json.loads(captured.out.splitlines()[-1])
        assert res["cls_attention_trained"] == (method == "dino")
        assert ("never reads the CLS token's output" in captured.err) == (method == "splitmask")
        assert (tmp_path / method / "attention.png").exists()

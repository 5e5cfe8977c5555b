"""checkpoint.py: a failed write (a full disk) leaves nothing behind and says why; temporary files
of killed writes are cleaned up; empty files are named as such; backbones load from our
checkpoints and from official DINO / timm files, whatever their key prefixes."""

import argparse
import errno
import subprocess
import sys

import pytest
import torch

from dino_lite import checkpoint
from dino_lite.checkpoint import (CheckpointError, backbone_from_checkpoint, infer_config,
                                  load_backbone_state, load_checkpoint, save_checkpoint,
                                  strip_prefixes)
from dino_lite.models import build_backbone


def test_a_full_disk_removes_the_partial_file_and_names_path_and_free_space(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def full_disk(obj, f):                   # writes part of the file, then the disk is full
        with open(f, "wb") as fh:
            fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {path}: the disk is full "
                                              rf"\(\d+ MiB free on {tmp_path}\)"):
        save_checkpoint({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]   # no partial file
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1                                # the last one is kept


def test_temp_files_of_killed_writes_are_removed_at_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                       # a pid that no longer runs
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / f".checkpoint.pt.tmp{dead.pid}"
    live = tmp_path / f".checkpoint.pt.tmp{subprocess.os.getppid()}"   # a running writer's
    other = tmp_path / ".other.pt.tmp1"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_checkpoint({"step": 3}, path)
    assert not stale.exists() and live.exists() and other.exists()
    assert load_checkpoint(path)["step"] == 3


def test_an_empty_checkpoint_file_is_named_as_such(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*d\.pt: \S"):
        load_checkpoint(tmp_path / "d.pt")


def test_torch_save_writes_plain_tensors(tmp_path):
    save_checkpoint({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))


@pytest.mark.parametrize("prefix", ["", "module.", "backbone.", "module.backbone."])
def test_backbone_weights_load_with_any_prefix(prefix):
    src = build_backbone("vit_mini", patch_size=8, img_size=32, depth=1)
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    sd[prefix.replace("backbone.", "") + "head.mlp.0.weight"] = torch.zeros(2, 2)   # a DINO head key
    dst = build_backbone("vit_mini", patch_size=8, img_size=32, depth=1)
    load_backbone_state(dst, sd)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_mismatched_weights_name_the_keys(tmp_path):
    """Loading weights that do not fit names the missing and unexpected keys, in memory and
    from a file, and a file holding no backbone says so."""
    src = build_backbone("vit_mini", patch_size=8, img_size=32, depth=2)
    dst = build_backbone("vit_mini", patch_size=8, img_size=32, depth=1)
    with pytest.raises(KeyError, match="unexpected.*blocks.1"):
        load_backbone_state(dst, src.state_dict())
    assert strip_prefixes({"module.backbone.x": 1}) == {"x": 1}
    sd = _vit_tiny16().state_dict()
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    del sd["norm.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"missing \['norm.weight'\].*unexpected \['blocks.0.attn.extra'\]"):
        backbone_from_checkpoint(tmp_path / "bad.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(KeyError, match="no backbone state dict"):
        backbone_from_checkpoint(tmp_path / "odd.pth")


def _vit_tiny16():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", patch_size=16, img_size=224)


def test_official_full_checkpoint_loads_into_our_backbone(tmp_path):
    """The layout of dino_*_full_checkpoint.pth: DDP student, teacher with head, argparse args."""
    ref = _vit_tiny16()
    sd = ref.state_dict()
    head = {"head.mlp.0.weight": torch.zeros(8, 192), "head.last_layer.weight_g": torch.ones(1, 8)}
    torch.save({"student": {f"module.backbone.{k}": v for k, v in sd.items()},
                "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head},
                "epoch": 100, "args": argparse.Namespace(arch="vit_tiny", patch_size=16),
                "dino_loss": {"center": torch.zeros(1, 8)}}, tmp_path / "full.pth")
    backbone, cfg = backbone_from_checkpoint(tmp_path / "full.pth")
    assert (cfg.arch, cfg.patch_size, cfg.global_size) == ("vit_tiny", 16, 224)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(backbone(x), ref.eval()(x), atol=1e-5)


def test_official_backbone_and_timm_state_dicts_load(tmp_path):
    sd = _vit_tiny16().state_dict()
    torch.save(sd, tmp_path / "dino_vittiny16_pretrain.pth")            # official backbone-only
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    for name in ("dino_vittiny16_pretrain.pth", "ddp.pth"):
        backbone, cfg = backbone_from_checkpoint(tmp_path / name)
        assert cfg.arch == "vit_tiny" and cfg.depth == 12
    assert infer_config({k: v for k, v in sd.items()}).image_size == 224


@pytest.mark.parametrize("content, kind", [(torch.zeros(3), "Tensor"), ([1, 2], "list"),
                                            ({"teacher": torch.zeros(2), "config": {}}, "teacher")])
def test_a_file_holding_no_checkpoint_is_named(tmp_path, capsys, content, kind):
    """A .pt file holding a tensor or a list raised a RuntimeError / AttributeError traceback."""
    from dino_lite.checkpoint import CheckpointError
    from dino_lite.cli import main
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=f"odd.pt.*{kind}"):
        backbone_from_checkpoint(tmp_path / "odd.pt")
    with pytest.raises(SystemExit) as e:
        main(["knn", "--checkpoint", str(tmp_path / "odd.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "odd.pt" in err and "Traceback" not in err

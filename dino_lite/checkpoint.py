"""Checkpoints: written atomically, read without unpickling code, loaded into backbones by key.

Besides our own ``checkpoint.pt``, :func:`backbone_from_checkpoint` reads the official DINO
releases (backbone-only ``dino_*_pretrain.pth``, or ``*_full_checkpoint.pth`` holding student,
teacher and ``args``) and timm's ``vit_*.dino`` state dicts: the architecture is read off the
tensor shapes, and ``module.`` / ``backbone.`` prefixes are stripped.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
from pathlib import Path

import torch

from .config import Config, make_config
from .models import VIT_SIZES, build_eval_backbone
from .rundir import pid_alive

PREFIXES = ("module.", "backbone.", "_orig_mod.")


class CheckpointKeyError(KeyError):
    """Weights whose keys do not fit; the message names them (printed plainly, unlike KeyError)."""

    def __str__(self):
        return str(self.args[0])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or written; the message names the file and the reason."""


# the keys of a dino_lite training checkpoint (what `--resume` needs)
TRAINING_KEYS = ("student", "teacher", "optimizer", "loss", "step", "total_steps", "config")


def _temp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def clean_temp_files(path) -> list[Path]:
    """Remove the temporary files that writes of ``path`` killed half-way left behind (named
    ``.NAME.tmpPID`` next to it, by a process that no longer runs); returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name[len(f".{path.name}.tmp"):]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename: never half-written.

    A write that fails (a full disk) removes its temporary file and raises :class:`CheckpointError`
    naming the path and the free space; the previous checkpoint at ``path`` is left as it was.
    Temporary files of earlier writes that were killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_temp_files(path)
    tmp = _temp_name(path, os.getpid())
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:   # torch's zip writer reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else (getattr(e, "strerror", None) or str(e))
        raise CheckpointError(f"cannot write checkpoint {path}: {why} ({free / 2**20:.0f} MiB free "
                              f"on {path.parent}); the previous checkpoint, if any, is unchanged")\
            from e
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data only, no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: empty file (0 bytes)")
    try:   # the official full checkpoints store their argparse.Namespace of arguments
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).strip() or type(e).__name__}")\
            from e


def load_training_checkpoint(path) -> dict:
    """A dino_lite training checkpoint (what ``--resume`` continues from); anything else (a
    backbone-only or timm state dict, an official release) raises :class:`CheckpointError`."""
    ckpt = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        keys = list(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a dino_lite training checkpoint (missing {missing}; "
                              f"it holds {keys}); it cannot be resumed")
    return ckpt


def strip_prefixes(state_dict: dict, prefixes=PREFIXES) -> dict:
    """Remove DDP's ``module.``, DINO's ``backbone.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefixes):
            key = key[next(len(p) for p in prefixes if key.startswith(p)):]
        out[key] = value
    return out


def load_backbone_state(backbone: torch.nn.Module, state_dict: dict, strict: bool = True):
    """Load a (possibly prefixed) backbone state dict; name missing and unexpected keys on failure.

    Keys of a DINO projection head (``head.*``) that the backbone lacks are ignored.
    """
    own = backbone.state_dict()
    sd = {k: v for k, v in strip_prefixes(state_dict).items()
          if k in own or not k.startswith("head.")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointKeyError(f"backbone weights do not match: missing {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''} unexpected {unexpected[:8]}"
                       f"{' ...' if len(unexpected) > 8 else ''}")
    return backbone.load_state_dict(sd, strict=strict)


def infer_config(state_dict: dict) -> Config:
    """The ``imagenet-*`` config whose backbone has the shapes of ``state_dict`` (stripped keys):
    ViT width, depth, patch size and image size, or a ResNet-50."""
    sd = state_dict
    if "patch_embed.proj.weight" in sd:
        width, _, patch, _ = sd["patch_embed.proj.weight"].shape
        archs = {w: name for name, (w, _, _) in VIT_SIZES.items()}
        if width not in archs:
            raise CheckpointKeyError(f"no ViT of width {width} here; known widths {sorted(archs)}")
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        side = math.isqrt(sd["pos_embed"].shape[1] - 1) * patch
        return make_config("imagenet-vits16", {
            "arch": archs[width], "patch_size": patch, "depth": depth, "image_size": side,
            "global_size": side, "local_size": 96 if 96 % patch == 0 else patch * 6})
    if "layer4.2.conv3.weight" in sd and "layer4.0.downsample.0.weight" in sd:
        return make_config("imagenet-resnet50")
    raise CheckpointKeyError("cannot tell the architecture of these weights: expected a ViT "
                   "(patch_embed.proj.weight, pos_embed, blocks.N.*) or a ResNet-50 (layer4.*); "
                   f"first keys: {list(sd)[:6]}")


def _unwrap(obj: dict) -> dict:
    """The backbone's tensors inside a checkpoint of any of the known layouts."""
    for key in ("teacher", "state_dict", "model"):          # full checkpoints, common wrappers
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointKeyError(f"no backbone state dict found; top-level keys: {list(obj)[:8]}")
    return {k: v for k, v in strip_prefixes(obj).items() if not k.startswith("head.")}


def _require_dict(obj, path) -> dict:
    """``obj`` if it is a dict (every checkpoint layout is one), else a :class:`CheckpointError`
    naming what the file holds (``torch.save`` takes any object: a tensor, a list, ...)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or a state "
                              "dict (a dict of weights)")
    return obj


def backbone_from_checkpoint(path):
    """A ready-to-evaluate backbone and its config from ``path``: a dino_lite checkpoint (teacher),
    an official DINO backbone or full checkpoint, or a timm ``.dino`` state dict."""
    obj = _require_dict(load_checkpoint(path), path)
    if "config" in obj and "teacher" in obj:
        return teacher_backbone_from_checkpoint(path, obj)
    sd = _unwrap(obj)
    cfg = infer_config(sd)
    backbone = build_eval_backbone(cfg)
    try:
        load_backbone_state(backbone, sd)
    except CheckpointKeyError as e:
        raise CheckpointKeyError(f"{path}: {e}") from None
    return backbone.eval(), cfg


def teacher_backbone_from_checkpoint(path, ckpt=None):
    """The trained teacher backbone of a dino_lite checkpoint, with the config it was trained with."""
    ckpt = _require_dict(load_checkpoint(path) if ckpt is None else ckpt, path)
    if "config" not in ckpt or "teacher" not in ckpt:
        raise CheckpointKeyError(f"{path} is not a dino_lite training checkpoint (no 'config'/'teacher' keys)")
    for key in ("config", "teacher"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path}: its '{key}' entry holds a {type(ckpt[key]).__name__}, "
                                  "not a dict; it is not a dino_lite checkpoint")
    cfg = Config.from_dict(ckpt["config"])
    backbone = build_eval_backbone(cfg)
    load_backbone_state(backbone, {k: v for k, v in ckpt["teacher"].items()
                                   if k.startswith("backbone.")})
    return backbone.eval(), cfg

"""Checkpoints: written atomically, read without unpickling code, loaded into backbones by key."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import Config
from .models import build_eval_backbone

PREFIXES = ("module.", "backbone.", "_orig_mod.")


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data only, no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


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
        raise KeyError(f"backbone weights do not match: missing {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''} unexpected {unexpected[:8]}"
                       f"{' ...' if len(unexpected) > 8 else ''}")
    return backbone.load_state_dict(sd, strict=strict)


def teacher_backbone_from_checkpoint(path):
    """The trained teacher backbone of a dino_lite checkpoint, with the config it was trained with."""
    ckpt = load_checkpoint(path)
    if "config" not in ckpt or "teacher" not in ckpt:
        raise KeyError(f"{path} is not a dino_lite training checkpoint (no 'config'/'teacher' keys)")
    cfg = Config.from_dict(ckpt["config"])
    backbone = build_eval_backbone(cfg)
    load_backbone_state(backbone, {k: v for k, v in ckpt["teacher"].items()
                                   if k.startswith("backbone.")})
    return backbone.eval(), cfg

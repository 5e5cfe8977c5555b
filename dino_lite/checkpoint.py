"""Checkpoints: written atomically, read without unpickling code, loaded into backbones by key.

Besides our own ``checkpoint.pt``, :func:`backbone_from_checkpoint` reads the weights users
have, whatever their key names: the official DINO releases (backbone-only
``dino_*_pretrain.pth``, or ``*_full_checkpoint.pth`` holding student, teacher and ``args``),
timm's ``vit_*.dino`` and ``vit_*_dinov2`` state dicts, the official DINOv2 ViTs
(``dinov2_vits14_pretrain.pth``, with LayerScale, a ``mask_token`` and, in the ``_reg4``
variants, register tokens) and Hugging Face's ``facebook/dino-vit*`` (transformers' ``ViTModel``
names, ``model.safetensors`` or ``pytorch_model.bin``, or the folder holding one). Everything is
renamed to timm's ViT names (DINOv2's through timm's own ``checkpoint_filter_fn``), the
architecture is read off the tensor shapes, and ``module.`` / ``backbone.`` prefixes are
stripped. :func:`resolve_checkpoint` also takes ``hf:REPO`` and torch.hub names such as
``dinov2_vits14``, downloaded only when ``huggingface_hub`` is installed and the hub is reachable.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import shutil
from pathlib import Path

import torch

from .config import Config, make_config
from .evaluate import build_eval_backbone, use_fused_attention
from .models import VIT_SIZES, backbone_for
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


# what a Hugging Face model folder (a hub snapshot, or save_pretrained's output) holds, in the
# order they are tried
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data only, no code.

    ``.safetensors`` files are read with safetensors (tensors only by design); a folder stands
    for the Hugging Face weights file inside it (:data:`HF_WEIGHT_FILES`).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in HF_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise FileNotFoundError(f"checkpoint folder {path} holds none of {list(HF_WEIGHT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: empty file (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: "
                                  f"{str(e).strip() or type(e).__name__}") from e
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


def _grid_tokens(n: int) -> tuple[int, bool]:
    """Side of the square patch grid of a position embedding with ``n`` entries, and whether
    it also holds the CLS token's (DINO, official DINOv2) or not (timm's ViTs with registers)."""
    side = math.isqrt(n)
    if side * side == n:
        return side, False
    side = math.isqrt(n - 1)
    if side * side == n - 1:
        return side, True
    raise CheckpointKeyError(f"a position embedding of {n} entries is no square grid of patches "
                             "(with or without a CLS entry)")


def infer_config(state_dict: dict) -> Config:
    """The ``imagenet-*`` config whose backbone has the shapes of ``state_dict`` (stripped keys,
    timm or official DINO / DINOv2 names): ViT width, depth, patch size and position grid,
    LayerScale and register tokens, or a ResNet-50.

    The model is built at its position embedding's grid (``global_size``: 224 px for DINO, 518 px
    for DINOv2); DINOv2 is evaluated at 224 px (``image_size``, as in its k-NN results), the
    position embedding interpolated as timm does for other sizes.
    """
    sd = state_dict
    if "patch_embed.proj.weight" in sd:
        width, _, patch, _ = sd["patch_embed.proj.weight"].shape
        archs = {w: name for name, (w, _, _) in VIT_SIZES.items()}
        if width not in archs:
            raise CheckpointKeyError(f"no ViT of width {width} here; known widths {sorted(archs)}")
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        side = _grid_tokens(sd["pos_embed"].shape[1])[0] * patch
        regs = sd.get("register_tokens", sd.get("reg_token"))
        layer_scale = 1e-5 if "blocks.0.ls1.gamma" in sd else None      # DINOv2's initial value
        image_size = side if side <= 224 else 224 // patch * patch
        return make_config("imagenet-vits16", {
            "arch": archs[width], "patch_size": patch, "depth": depth, "image_size": image_size,
            "global_size": side, "local_size": 96 if 96 % patch == 0 else patch * (96 // patch + 1),
            "layer_scale": layer_scale, "reg_tokens": 0 if regs is None else int(regs.shape[1])})
    if "layer4.2.conv3.weight" in sd and "layer4.0.downsample.0.weight" in sd:
        return make_config("imagenet-resnet50")
    raise CheckpointKeyError("cannot tell the architecture of these weights: expected a ViT "
                   "(patch_embed.proj.weight, pos_embed, blocks.N.*; or transformers' "
                   "embeddings.*, encoder.layer.N.*) or a ResNet-50 (layer4.*); "
                   f"first keys: {list(sd)[:6]}")


# transformers' ViTModel names (facebook/dino-vit*) -> timm's, per block and for the rest; the
# query, key and value projections are concatenated into timm's qkv
_HF_BLOCK = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
             "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
# parts of a transformers checkpoint that are no part of the backbone
_HF_DROP = ("pooler.", "classifier.", "embeddings.mask_token")


def is_hf_vit(state_dict: dict) -> bool:
    """Whether ``state_dict`` has transformers' ViT names (optionally under ``vit.``)."""
    return any(k.removeprefix("vit.") == "embeddings.patch_embeddings.projection.weight"
               for k in state_dict)


def hf_vit_to_timm(state_dict: dict) -> dict:
    """transformers' ``ViTModel`` / ``ViTFor*`` state dict in timm's ViT names. Keys it does not
    know keep their names, so that loading names them."""
    out, qkv = {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("vit.")
        if key.startswith(_HF_DROP):
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        parts = key.split(".")
        if parts[:2] == ["encoder", "layer"] and len(parts) > 3:
            block, rest, kind = int(parts[2]), ".".join(parts[3:-1]), parts[-1]
            if rest.startswith("attention.attention."):         # query / key / value
                qkv.setdefault((block, kind), {})[rest.split(".")[-1]] = value
                continue
            if rest in _HF_BLOCK:
                out[f"blocks.{block}.{_HF_BLOCK[rest]}.{kind}"] = value
                continue
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointKeyError(f"block {block}: the attention {kind} has {sorted(parts)}, "
                                     "expected query, key and value")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]])
    return out


def _unwrap(obj: dict) -> dict:
    """The backbone's tensors inside a checkpoint of any of the known layouts."""
    for key in ("teacher", "state_dict", "model"):          # full checkpoints, common wrappers
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointKeyError(f"no backbone state dict found; top-level keys: {list(obj)[:8]}")
    sd = {k: v for k, v in strip_prefixes(obj).items() if not k.startswith("head.")}
    return hf_vit_to_timm(sd) if is_hf_vit(sd) else sd


def _require_dict(obj, path) -> dict:
    """``obj`` if it is a dict (every checkpoint layout is one), else a :class:`CheckpointError`
    naming what the file holds (``torch.save`` takes any object: a tensor, a list, ...)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or a state "
                              "dict (a dict of weights)")
    return obj


def backbone_from_checkpoint(path):
    """A ready-to-evaluate backbone and its config from ``path``: a dino_lite checkpoint (teacher),
    or any published weights :func:`resolve_checkpoint` finds and the module doc lists."""
    path = resolve_checkpoint(path)
    obj = _require_dict(load_checkpoint(path), path)
    if "config" in obj and "teacher" in obj:
        return teacher_backbone_from_checkpoint(path, obj)
    sd = _unwrap(obj)
    cfg = infer_config(sd)
    # the attention kernel is timed at the evaluation size: at DINOv2's 518 px grid the timing
    # probe alone (a batch of 1370-token attention) would take minutes and gigabytes
    fused = use_fused_attention(dataclasses.replace(cfg, global_size=cfg.image_size))
    backbone = backbone_for(cfg, fused, drop_path=0.0)
    if "pos_embed" in sd:
        # timm's own conversions: DINOv2's mask token dropped, its register tokens and the CLS
        # entry of its position embedding moved where timm's ViT with registers keeps them
        from timm.models.vision_transformer import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, backbone)
    try:
        load_backbone_state(backbone, sd)
    except CheckpointKeyError as e:
        raise CheckpointKeyError(f"{path}: {e}") from None
    return backbone.eval(), cfg


# torch.hub names of the published weights: (file, where it is published)
_FB = "https://dl.fbaipublicfiles.com"
HUB_WEIGHTS = {
    "dino_vits16": f"{_FB}/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vits8": f"{_FB}/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_vitb16": f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitb8": f"{_FB}/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    **{f"dinov2_vit{s}14{r}": f"{_FB}/dinov2/dinov2_vit{s}14/dinov2_vit{s}14{r}{'4' if r else ''}_pretrain.pth"
       for s in ("s", "b") for r in ("", "_reg")},
}


def resolve_checkpoint(spec) -> Path:
    """The local file (or Hugging Face folder) a ``--checkpoint`` value names.

    An existing path is itself. ``hf:OWNER/REPO`` (``facebook/dino-vits16``,
    ``timm/vit_small_patch14_dinov2.lvd142m``, ...) is the repository's weights file, from the
    Hugging Face cache or downloaded with ``huggingface_hub``; a :data:`HUB_WEIGHTS` name
    (``dinov2_vits14``, ``dinov2_vits14_reg``, ``dino_vits16``, ...) is the file torch.hub keeps
    in ``<torch hub dir>/checkpoints``, downloaded there if missing. Offline, the error says
    where to put the file by hand.
    """
    path = Path(spec)
    if path.exists():
        return path
    spec = str(spec)
    if spec.startswith("hf:"):
        return _from_hugging_face(spec[3:])
    if spec in HUB_WEIGHTS:
        return _from_torch_hub(spec, HUB_WEIGHTS[spec])
    raise FileNotFoundError(f"checkpoint {spec} does not exist (a file or folder; or hf:OWNER/REPO, "
                            f"or one of {', '.join(HUB_WEIGHTS)})")


def _from_hugging_face(repo: str) -> Path:
    by_hand = (f"download {' or '.join(HF_WEIGHT_FILES)} from https://huggingface.co/{repo} and "
               f"pass its path to --checkpoint")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"hf:{repo} needs the huggingface_hub package (pip install "
                              f"huggingface_hub); or {by_hand}") from None
    errors = []
    for name in HF_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as e:        # offline, no such file in the repository, no such repository
            errors.append(f"{name}: {type(e).__name__}")
    raise CheckpointError(f"cannot get hf:{repo} (offline, or not a model repository: "
                          f"{'; '.join(errors)}); {by_hand}")


def _from_torch_hub(name: str, url: str) -> Path:
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as e:            # offline, proxy, full disk
        raise CheckpointError(f"cannot download {name} ({type(e).__name__}: {e}); download {url} "
                              f"by hand and put it at {target}, or pass its path to --checkpoint")\
            from None
    return target


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

"""Backbones (timm ViTs, torchvision ResNets), the DINO projection head and the multi-crop wrapper."""

from __future__ import annotations

import copy
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import DropPath
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .baselines import predictor_mlp

# the backbones: each ViT's (width, depth, heads), then the torchvision ResNets
VIT_SIZES = {"vit_mini": (128, 6, 4), "vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6),
             "vit_base": (768, 12, 12)}
ARCHS = (*VIT_SIZES, "resnet18", "resnet50")
STEMS = ("patch", "conv")          # a ViT's patch embedding: linear (the paper's) or convolutional


def conv_stem(width: int, patch_size: int) -> nn.Sequential:
    """A convolutional patch embedding (Xiao et al. 2021, "Early convolutions help transformers
    see better"): stride-2 3x3 convolutions until the patch stride, then a 1x1 projection.

    It replaces the single strided ``patch x patch`` convolution and makes small ViTs trained
    from scratch on small data optimise far faster (docs/RESULTS.md); tokens still map
    one-to-one to image patches, so attention maps read the same way.
    """
    n = patch_size.bit_length() - 1
    if patch_size < 2 or 2 ** n != patch_size:
        raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch_size}")
    layers, c_in = [], 3
    for i in range(n):
        c_out = max(16, width // 2 ** (n - 1 - i))
        layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, width, 1))
    return nn.Sequential(*layers)


def build_backbone(arch="vit_small", *, patch_size=16, img_size=224, depth=None, drop_path=0.0,
                   fused_attention=True, stem="patch", qk_norm=False, layer_scale=None,
                   reg_tokens=0):
    """A backbone mapping images to one feature vector each; ``.embed_dim`` is its width.

    ViTs come from timm with ``dynamic_img_size`` so global and local crops of different sizes
    share the position embedding (interpolated); the output is the final-norm CLS token.
    ``fused_attention=False`` selects timm's explicit softmax attention, which on CPU is ~2.6x
    faster than the fused kernel for the short sequences of small images (benchmarks/).
    ``stem="conv"`` swaps the linear patch embedding for :func:`conv_stem`. ``qk_norm=True``
    LayerNorms queries and keys before their dot product (Dehghani et al. 2023), which bounds the
    attention logits: without it, longer CPU runs drive most heads onto a single patch
    ("attention entropy collapse", Zhai et al. 2023) and the attention maps stop covering objects.
    DINOv2's ViTs add ``layer_scale`` (each residual branch multiplied by a learnt per-channel
    scale, initialised at this value) and ``reg_tokens`` register tokens after CLS; as in timm's
    DINOv2 models, the position embedding of a ViT with registers covers the patches only.
    ResNets drop their classifier; for images under 100 px the stem keeps full resolution.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if arch in VIT_SIZES:
        width, default_depth, heads = VIT_SIZES[arch]
        model = timm.create_model(
            "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=img_size,
            patch_size=patch_size, embed_dim=width, depth=depth or default_depth, num_heads=heads,
            drop_path_rate=drop_path, dynamic_img_size=True, qk_norm=qk_norm,
            init_values=layer_scale, reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0)
        if stem == "conv":
            model.patch_embed.proj = conv_stem(width, patch_size)
        for blk in model.blocks:
            blk.attn.fused_attn = fused_attention
        model.embed_dim = width
        return model
    model = getattr(torchvision.models, arch)(weights=None)     # a ResNet
    if img_size < 100:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.embed_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 normalisation -> weight-normalised linear layer to K prototypes.

    With ``norm_last_layer`` the weight norm g of the last layer is fixed at 1, so every logit is
    a cosine similarity between the image's bottleneck vector and one prototype.
    """

    def __init__(self, in_dim, out_dim, *, hidden_dim=2048, bottleneck_dim=256, nlayers=3,
                 norm_last_layer=True, use_bn=False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x):
        x = self.mlp(x)
        # Logits are cosines in [-1, 1] later divided by a temperature as low as 0.04: bf16's
        # 8-bit mantissa would add +-0.2 noise to the teacher's softmax, so this part stays fp32.
        with torch.autocast(x.device.type, enabled=False):
            return self.last_layer(F.normalize(x.float(), dim=-1))


def vit_tokens(vit, images, mask=None, mask_token=None):
    """A timm ViT's final-normed tokens, ``[batch, 1 + patches, D]`` (CLS first): its
    ``forward_features``, with one addition for masked image modelling (BEiT, iBOT): where
    ``mask`` (``[batch, patches]`` bool) is set, the patch embedding is replaced by
    ``mask_token`` before the position embedding is added, so the network must infer that
    patch from its context."""
    x = vit.patch_embed(images)                         # [batch, h, w, D] (dynamic_img_size)
    if mask is not None:
        x = torch.where(mask.view(x.shape[:-1]).unsqueeze(-1), mask_token.to(x.dtype), x)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
    return vit.norm(vit.blocks(x))


def vit_visible_tokens(vit, images, keep):
    """A timm ViT's final-normed tokens over a subset of patches, ``[batch, 1 + k, D]`` (CLS
    first): the encoder of SplitMask (and MAE). ``keep`` (``[batch, k]`` long, the same k for
    every image) lists each image's visible patches; the others are dropped *after* the position
    embedding is added, so each kept token carries its own position, and the blocks never see a
    placeholder for the dropped ones."""
    x = vit._pos_embed(vit.patch_embed(images))        # [batch, prefix + patches, D]
    prefix = vit.num_prefix_tokens
    patches = torch.gather(x[:, prefix:], 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    x = vit.norm_pre(torch.cat([x[:, :prefix], patches], dim=1))
    return vit.norm(vit.blocks(x))


class CropOutputs(NamedTuple):
    """What :class:`MultiCropWrapper` computes for a list of crops."""
    output: tuple[torch.Tensor, ...]     # the head's (or predictor's) [batch, K], one per crop
    features: tuple[torch.Tensor, ...]   # the backbone's [batch, D], one per crop
    patches: torch.Tensor | None         # the head's [n, K] at the n patches to predict (iBOT)


class MultiCropWrapper(nn.Module):
    """Backbone + head (+ optional predictor) over a list of crops: one backbone pass per run
    of same-size crops. Returns :class:`CropOutputs`, one tensor per crop in the order given.

    ``predictor`` (BYOL) maps the head's output to a prediction of the other network's.
    ``mask_token=True`` (iBOT's masked patch prediction, ViTs) adds the learnt ``[1, 1, D]``
    token that stands in for hidden patches. It acts on the first run of same-size crops, the
    global crops, through two ``[crops x batch, patches]`` bool tensors: ``hide`` replaces those
    patches by the mask token, and ``predict`` selects the patch tokens whose head outputs come
    back as ``patches``.
    """

    def __init__(self, backbone, head, predictor=None, mask_token=False):
        super().__init__()
        self.backbone, self.head, self.predictor = backbone, head, predictor
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim)) if mask_token else None

    def forward(self, crops, hide=None, predict=None) -> CropOutputs:
        feats, patch_logits, start = [], None, 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            if start == 0 and (hide is not None or predict is not None):
                tokens = vit_tokens(self.backbone, torch.cat(crops[:end]), hide, self.mask_token)
                feats.append(tokens[:, 0])
                if predict is not None:
                    patch_logits = self.head(tokens[:, self.backbone.num_prefix_tokens:][predict])
            else:
                feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        feats = torch.cat(feats)
        out = self.head(feats)
        if self.predictor is not None:
            with torch.autocast(out.device.type, enabled=False):
                out = self.predictor(out)
        return CropOutputs(out.chunk(len(crops)), feats.chunk(len(crops)), patch_logits)


def build_student_teacher(cfg, fused_attention: bool = True):
    """Student and teacher networks; the teacher starts as a copy of the student (without its
    predictor: only the student predicts) and never receives gradients. ``fused_attention``
    picks timm's attention kernel."""
    backbone = backbone_for(cfg, fused_attention)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, hidden_dim=cfg.head_hidden,
                    bottleneck_dim=cfg.head_bottleneck, nlayers=cfg.head_layers,
                    norm_last_layer=cfg.norm_last_layer, use_bn=cfg.head_bn)
    predictor = predictor_mlp(cfg.out_dim, cfg.head_hidden) if cfg.predictor else None
    student = MultiCropWrapper(backbone, head, predictor, mask_token=bool(cfg.ibot))
    teacher = MultiCropWrapper(copy.deepcopy(backbone), copy.deepcopy(head), mask_token=bool(cfg.ibot))
    teacher.requires_grad_(False)
    for m in teacher.modules():           # the teacher averages the student; it does not drop paths
        if isinstance(m, DropPath):
            m.drop_prob = 0.0
    return student, teacher


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float):
    """EMA step: theta_t <- m * theta_t + (1 - m) * theta_s, for every teacher parameter
    (matched by name; the student's predictor has no teacher counterpart). m = 0 copies."""
    student_params = dict(student.named_parameters())
    t_params = dict(teacher.named_parameters())
    s_params = [student_params[name].detach() for name in t_params]
    torch._foreach_mul_(list(t_params.values()), momentum)
    torch._foreach_add_(list(t_params.values()), s_params, alpha=1.0 - momentum)


def backbone_for(cfg, fused_attention: bool, drop_path: float | None = None):
    """The backbone ``cfg`` describes, at its global crop size; ``drop_path`` defaults to the
    config's."""
    return build_backbone(cfg.arch, patch_size=cfg.patch_size, img_size=cfg.global_size,
                          depth=cfg.depth, drop_path=cfg.drop_path if drop_path is None else drop_path,
                          fused_attention=fused_attention, stem=cfg.stem, qk_norm=cfg.qk_norm,
                          layer_scale=cfg.layer_scale, reg_tokens=cfg.reg_tokens)


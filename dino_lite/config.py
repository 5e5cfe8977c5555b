"""Training configuration: one dataclass, a few named presets, and ``KEY=VALUE`` overrides.

Presets hold no machine paths: a preset that trains on one of the shared data sets names it
``shared:NAME``, which :func:`make_config` resolves (:func:`dino_lite.data.resolve_data`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields

from .data import (DOWNLOAD_ENV, SHARED, SHARED_DATA_ENV, download_root,  # noqa: F401 (importers)
                   find_data, resolve_data, shared_data_root)
from .methods import REGISTRY, get_method
from .models import ARCHS, STEMS, VIT_SIZES  # noqa: F401 (VIT_SIZES: for importers)
from .tokenizers import KINDS as TOKENIZERS  # noqa: F401 (for importers)

OPTIMIZERS = ("adamw", "sgd")
METHODS = tuple(REGISTRY)
# the optimisation each method was published with: it replaces the preset's values (a preset's
# optimiser settings were tuned for DINO) but never a value given explicitly (make_config)
METHOD_DEFAULTS: dict[str, dict] = {name: method.defaults for name, method in REGISTRY.items()}


@dataclass
class Config:
    # data
    data: str = "shapes"               # "shapes", a folder with train/ and val/ (or test/), or cifar10/stl10/imagenette
    image_size: int = 64               # size images are resized to for evaluation (global crop size by default)
    global_size: int = 64              # global crop side (px)
    local_size: int = 32               # local crop side (px)
    n_local: int = 6                   # local crops per image; 0 turns multi-crop off (2 global crops)
    global_scale: tuple = (0.4, 1.0)
    local_scale: tuple = (0.05, 0.4)
    colour_jitter: tuple = (0.4, 0.4, 0.2, 0.1)   # brightness, contrast, saturation, hue (p = 0.8)
    invert: float = 0.0                # probability of inverting each colour channel of a view (0: off)
    rotation: float = 0.0              # each view turned by a random angle in [-r, r] degrees (0: off)
    # model
    arch: str = "vit_tiny"             # vit_mini | vit_tiny | vit_small | vit_base | resnet18 | resnet50
    patch_size: int = 8
    depth: int | None = None           # ViT depth override (None: the architecture's own)
    stem: str = "patch"                # ViT patch embedding: "patch" (linear, the paper's) or "conv"
    qk_norm: bool = False              # LayerNorm on queries and keys (not in the paper)
    layer_scale: float | None = None   # LayerScale's initial value (DINOv2: 1e-5; None: no LayerScale)
    reg_tokens: int = 0                # register tokens beside CLS (DINOv2 with registers: 4)
    drop_path: float = 0.1
    out_dim: int = 65536               # K, the number of prototypes
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    head_bn: bool = False              # BatchNorm between the head's hidden layers (use_bn_in_head)
    norm_last_layer: bool = True       # freeze the weight norm of the last layer at 1
    freeze_last_layer: float = 1.0     # epochs during which the last layer gets no update
    # optimisation
    optimizer: str = "adamw"           # adamw (ViTs) | sgd (momentum 0.9; the reference ResNet-50 run)
    batch_size: int = 64               # global batch, split evenly over the processes
    accumulate: int = 1                # gradient accumulation: each step in N micro-batches of batch_size / N
    epochs: int = 100
    lr: float = 0.0005                 # at batch 256; scaled linearly with the global batch
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    momentum_teacher: float = 0.996
    # loss
    out_temp_student: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0
    center_momentum: float = 0.9
    koleo: float = 0.0                 # weight of the KoLeo term on the student's global-crop features (DINOv2; 0: off)
    ibot: float = 0.0                  # weight of iBOT's masked patch prediction loss (ViTs; 0: off)
    mask_prob: float = 0.5             # share of global crops the student sees with masked patches
    mask_ratio: tuple = (0.1, 0.5)     # range of the share of a masked crop's patches hidden
    # ablation switches: each paper row of the DINO / BYOL / MoCo v2 / SwAV table is a setting
    teacher: str = "momentum"          # momentum (EMA, DINO) | student_copy | previous_iteration | previous_epoch
    centering: str = "center"          # center (DINO) | sinkhorn_knopp (SwAV, 3 iterations) | none
    sharpening: bool = True            # False: the teacher uses the student's temperature
    loss: str = "ce"                   # ce (DINO) | mse (BYOL, normalised outputs) | infonce (MoCo v2)
    predictor: bool = False            # BYOL's MLP predictor on the student's output
    # the method: DINO, or a masked image model (BEiT, SplitMask; docs/masked-image-modelling.md)
    method: str = "dino"               # dino | beit | splitmask | mae (its optimiser: METHOD_DEFAULTS)
    adam_betas: tuple = (0.9, 0.999)   # AdamW betas (BEiT and SplitMask: (0.9, 0.98))
    tokenizer: str = "random_projection"   # patch targets: random_projection | random_patches | kmeans
    vocab_size: int = 8192             # V, the tokenizer's codebook size
    tokenizer_images: int = 512        # training images whose patches fit random_patches / kmeans
    beit_mask_ratio: float = 0.4       # BEiT: share of patches hidden by block-wise masking
    split: str = "block"               # SplitMask: block (50/50 halves) | uniform (75% masking, a quarter each)
    decoder_depth: int = 2             # SplitMask and MAE: transformer blocks of the shallow decoder
    infonce_temp: float = 0.2          # SplitMask: temperature of the InfoNCE between the two halves
    data_fraction: float = 1.0         # pre-train on this seeded share of the training images (smalldata)
    # machinery
    bf16: bool | str = "auto"          # bfloat16 autocast: auto (GPUs; CPUs where measured faster) | true | false
    fused_attention: str = "auto"      # auto | on | off: auto = fused on GPU, the faster one measured on CPU
    # settings a CPU run takes when it computes in fp32 (no native bf16): a cheaper recipe that
    # learns in the same minutes; keys set explicitly (preset overrides, --set) are left out
    fp32_variant: dict = field(default_factory=dict)
    compile: bool = False              # torch.compile the backbones (GPU runs; keys stay unchanged)
    num_workers: int = 2
    threads: int | str = "auto"        # torch's CPU threads: auto (all cores, fewer while other processes load them; dino_lite.threads) | N
    seed: int = 0
    minutes: float | None = None       # time budget: schedules laid out over the steps that fit
    max_steps: int | None = None
    name: str = "custom"
    notes: str = field(default="", compare=False)

    def for_precision(self, bf16: bool, device_type: str = "cpu") -> "Config":
        """The config a run uses once its precision is known: with :attr:`fp32_variant` applied
        when a CPU computes in fp32 (the same config otherwise)."""
        if bf16 or device_type != "cpu" or not self.fp32_variant:
            return self
        return dataclasses.replace(self, **self.fp32_variant)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def validate(self) -> "Config":
        """Raise ValueError for settings no run can train with: the loop's here, the method's
        in its own ``validate`` (:mod:`dino_lite.methods`)."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for k in ("global_size", "local_size", "image_size", "batch_size", "epochs", "patch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"depth must be >= 1 (or none for the architecture's own), got {self.depth}")
        if self.threads != "auto" and not (type(self.threads) is int and self.threads >= 1):
            raise ValueError(f"threads must be auto or a number of threads >= 1, got {self.threads!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for k in ("seed", "num_workers", "n_local", "min_lr", "weight_decay", "weight_decay_end",
                  "clip_grad", "warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer",
                  "drop_path"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("global_scale", "local_scale"):
            v = getattr(self, k)
            if not isinstance(v, (tuple, list)) or len(v) != 2 or not 0 < v[0] <= v[1] <= 1:
                raise ValueError(f"{k} is the (min, max) share of the image a crop covers, "
                                 f"0 < min <= max <= 1, e.g. {k}=0.4,1.0; got {v}")
        if self.arch.startswith("vit"):
            for k in ("global_size", "local_size", "image_size"):
                if getattr(self, k) % self.patch_size:
                    raise ValueError(f"{k}={getattr(self, k)} is not a multiple of patch_size={self.patch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be auto, true or false, got {self.bf16!r}")
        if self.fused_attention not in ("auto", "on", "off"):
            raise ValueError(f"fused_attention must be auto, on or off, got {self.fused_attention!r}")
        if not isinstance(self.colour_jitter, (tuple, list)) or len(self.colour_jitter) != 4 or min(self.colour_jitter) < 0 or self.colour_jitter[3] > 0.5:
            raise ValueError("colour_jitter is (brightness, contrast, saturation, hue), all >= 0 and "
                             f"hue <= 0.5, got {self.colour_jitter}")
        if not 0 <= self.invert <= 1:
            raise ValueError(f"invert is a probability in [0, 1], got {self.invert}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation is a largest angle in degrees in [0, 180], got {self.rotation}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas is (beta1, beta2), each in [0, 1), got {self.adam_betas}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.layer_scale is not None and not self.layer_scale > 0:
            raise ValueError(f"layer_scale is LayerScale's initial value, > 0 (or none), got {self.layer_scale}")
        if not (type(self.reg_tokens) is int and self.reg_tokens >= 0):
            raise ValueError(f"reg_tokens must be an integer >= 0, got {self.reg_tokens!r}")
        if (self.layer_scale is not None or self.reg_tokens) and not self.arch.startswith("vit"):
            raise ValueError(f"layer_scale and reg_tokens are ViT settings, got arch={self.arch!r}")
        unknown = set(self.fp32_variant) - {f.name for f in fields(self)} - {"fp32_variant", "name"}
        if unknown or "fp32_variant" in self.fp32_variant:
            raise ValueError(f"fp32_variant holds config keys, got unknown {sorted(unknown)}")
        if self.fp32_variant:
            dataclasses.replace(self, **self.fp32_variant, fp32_variant={}).validate()
        if type(self.accumulate) is not int or self.accumulate < 1:
            raise ValueError(f"accumulate (micro-batches per step) must be an integer >= 1, got "
                             f"{self.accumulate!r}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} does not split into accumulate="
                             f"{self.accumulate} equal micro-batches")
        for k in ("minutes", "max_steps"):      # None: no time budget, no step cap
            if getattr(self, k) is not None and not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        get_method(self.method).validate(self)
        return self


_IMAGENET = dict(
    data="imagenet", image_size=224, global_size=224, local_size=96, n_local=8,
    arch="vit_small", patch_size=16, drop_path=0.1, out_dim=65536, head_hidden=2048,
    head_bottleneck=256, norm_last_layer=True, freeze_last_layer=1, batch_size=1024,
    epochs=100, lr=0.0005, min_lr=1e-6, warmup_epochs=10, weight_decay=0.04,
    weight_decay_end=0.4, clip_grad=3.0, momentum_teacher=0.996, teacher_temp=0.04,
    warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0, center_momentum=0.9,
    global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), num_workers=10)

PRESETS: dict[str, dict] = {
    # The `make demo` run: the embedded dataset on a 2-core CPU in a few minutes.
    "cpu-demo": dict(
        data="shapes", image_size=64, global_size=64, local_size=32, n_local=4, arch="vit_mini",
        patch_size=8, depth=4, stem="conv", qk_norm=True, drop_path=0.0, out_dim=4096,
        head_hidden=512, head_bn=True, batch_size=64, epochs=30, lr=0.004, warmup_epochs=1.5,
        momentum_teacher=0.95, teacher_temp=0.04, warmup_teacher_temp=0.04, freeze_last_layer=0,
        local_scale=(0.15, 0.5), colour_jitter=(0.4, 0.4, 0.2, 0.5), minutes=4, num_workers=0,
        # in fp32: cheaper crops, and evaluation at the size the network was trained at
        fp32_variant=dict(global_size=48, local_size=24, image_size=48),
        notes="CPU recipe (differs from the paper: conv stem, BN head, momentum 0.95, "
              "hue jitter 0.5, K 4096, QK-norm); see docs/RESULTS.md"),
    "cifar10": dict(
        data="cifar10", image_size=32, global_size=32, local_size=16, n_local=4, arch="vit_tiny",
        patch_size=4, depth=6, drop_path=0.0, out_dim=1024, head_hidden=512, batch_size=64,
        epochs=100, lr=0.002, warmup_epochs=2, momentum_teacher=0.99, freeze_last_layer=0,
        num_workers=1),
    "tinyimagenet": dict(
        data=SHARED + "tinyimagenet-dev20", image_size=64, global_size=64, local_size=32,
        n_local=4, arch="vit_mini", patch_size=8, depth=4, stem="conv", drop_path=0.0,
        out_dim=1024, head_hidden=512, head_bn=True, batch_size=32, epochs=100, lr=0.004,
        warmup_epochs=5, momentum_teacher=0.98, freeze_last_layer=0, local_scale=(0.15, 0.5),
        koleo=0.1, ibot=1.0, num_workers=0, fp32_variant=dict(global_size=48, local_size=24),
        notes="the cpu-demo recipe on 64 px photos, batch 32, teacher momentum 0.98, plus "
              "DINOv2's KoLeo 0.1 and iBOT's masked patch prediction (weight 1), loader in the "
              "main process (2 cores: 15% more steps)"),
    # The paper's ViT-S/16 recipe, unchanged (reference defaults; 16 GPUs x 64 = batch 1024).
    "imagenet-vits16": _IMAGENET,
    # The same recipe for the paper's other backbones (ViT-S/8, ViT-B/16, ViT-B/8).
    "imagenet-vits8": {**_IMAGENET, "patch_size": 8},
    "imagenet-vitb16": {**_IMAGENET, "arch": "vit_base"},
    "imagenet-vitb8": {**_IMAGENET, "arch": "vit_base", "patch_size": 8},
    # The reference ResNet-50 command: SGD, weight decay 1e-4 throughout, tighter crop scales.
    "imagenet-resnet50": {**_IMAGENET, "arch": "resnet50", "optimizer": "sgd", "drop_path": 0.0,
                          "weight_decay": 1e-4, "weight_decay_end": 1e-4,
                          "global_scale": (0.14, 1.0), "local_scale": (0.05, 0.14)},
    # BEiT's pre-training at the paper's scale: 224 px, one crop of scale (0.08, 1), batch 2048,
    # 800 epochs; the method's own recipe (METHOD_DEFAULTS) gives the optimiser. Also SplitMask's:
    # `train --preset imagenet-beit-vitb16 --method splitmask`.
    "imagenet-beit-vits16": {**_IMAGENET, "method": "beit", "n_local": 0, "batch_size": 2048,
                             "epochs": 800, "global_scale": (0.08, 1.0), "vocab_size": 8192},
    "imagenet-beit-vitb16": {**_IMAGENET, "method": "beit", "arch": "vit_base", "n_local": 0,
                             "batch_size": 2048, "epochs": 800, "global_scale": (0.08, 1.0),
                             "vocab_size": 8192},
}


def _parse_value(name: str, text: str):
    typ = str({f.name: f.type for f in fields(Config)}[name])
    if text.lower() in ("none", "null") and "None" in typ:
        return None
    if "bool" in typ:
        if "str" in typ and text.lower() == "auto":
            return "auto"
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} expects true/false{'/auto' if 'str' in typ else ''}, got {text!r}")
    if "int" in typ and "str" in typ and text.lower() == "auto":
        return "auto"
    if "dict" in typ:
        if text.lower() in ("none", "{}", ""):
            return {}
        return {k.strip(): _parse_value(k.strip(), v) for k, v in
                (item.split(":", 1) for item in text.strip("{} ").split(";"))}
    try:
        if "tuple" in typ:
            return tuple(float(x) for x in text.strip("()[] ").split(","))
        if "int" in typ and "float" not in typ:
            return int(text)
        if "float" in typ:
            return float(text)
    except ValueError:
        kind = ("comma-separated numbers" if "tuple" in typ else
                "an integer" if "float" not in typ else "a number")
        raise ValueError(f"{name} expects {kind}, got {text!r}") from None
    return text


def parse_sets(sets, preset: str = "cpu-demo") -> dict:
    """``["key=value", ...]`` -> ``{key: value}``, each value parsed by its field's type."""
    names, parsed = {f.name for f in fields(Config)}, {}
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown config key {key!r}; see `python -m dino_lite config --preset {preset}`")
        try:
            parsed[key] = _parse_value(key, text.strip())
        except ValueError as e:
            raise ValueError(f"--set {key}={text.strip()}: {e}") from None
    return parsed


def make_config(preset: str = "cpu-demo", overrides: dict | None = None,
                sets: list[str] | None = None) -> Config:
    """Resolve a preset, then the method's defaults (:data:`METHOD_DEFAULTS`; the method is the
    one given, else the preset's, else DINO), then ``overrides`` (a dict), then ``sets``
    (``["key=value", ...]``). Explicit values always win over the method's defaults."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[preset], "name": preset}
    explicit = {**(overrides or {}), **parse_sets(sets, preset)}
    method = get_method(explicit.get("method", values.get("method", "dino")))
    values.update(method.defaults)
    values.update(explicit)
    # what the caller asked for explicitly wins over the preset's fp32 variant
    values["fp32_variant"] = {k: v for k, v in values.get("fp32_variant", {}).items()
                              if k not in explicit}
    if "data" in values:
        values["data"] = resolve_data(values["data"])
    return Config.from_dict(values).validate()


def train_config(preset: str, sets=(), **given) -> Config:
    """The config a training run uses: the preset, then the ``given`` options that are not None
    (``data``, ``epochs``, ``minutes``, ``max_steps``, ``seed``), then ``sets``
    (``["key=value", ...]``). Asking for a length (``epochs`` or ``max_steps``) without
    ``minutes`` drops the preset's time budget."""
    cfg = make_config(preset, {k: v for k, v in given.items() if v is not None}, list(sets))
    if (given.get("epochs") is not None or given.get("max_steps") is not None) \
            and given.get("minutes") is None:
        cfg.minutes = None
    return cfg

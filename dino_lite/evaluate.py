"""Evaluation on frozen features: weighted k-NN and the linear probe (fine-tuning: finetune.py).

Under ``torchrun`` feature extraction is sharded: each rank embeds every ``world``-th image and
the features are gathered back in dataset order, so every rank holds the same full arrays.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import PRESETS, Config, parse_sets
from .data import build_dataset, eval_transform
from .models import backbone_for
from .precision import Precision, choose, for_config


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_in_order(x, n):
    """All-gather rank shards taken as ``range(rank, n, world)`` and interleave them back."""
    rank, world = _world()
    if world == 1:
        return x
    size = -(-n // world)
    padded = torch.zeros((size,) + tuple(x.shape[1:]), dtype=x.dtype)
    padded[:len(x)] = x
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    parts = [torch.empty_like(padded, device=device) for _ in range(world)]
    dist.all_gather(parts, padded.to(device))
    return torch.stack([p.cpu() for p in parts], 1).reshape((size * world,) + tuple(x.shape[1:]))[:n]


def embed(backbone, x, pool="cls"):
    """Features of a batch: the CLS token (``"cls"``), or CLS concatenated with the mean patch
    token (``"cls+avg"``, the reference linear protocol for ViT-S). CNNs return their pooled map."""
    if pool == "cls" or not hasattr(backbone, "forward_features"):
        return backbone(x)
    tokens = backbone.forward_features(x)
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1)


def uses_fused_attention(backbone) -> bool:
    """Whether ``backbone``'s attention layers run the fused kernel (timm's ``fused_attn``)."""
    return any(getattr(m, "fused_attn", False) for m in backbone.modules())


def evaluation_precision(backbone, cfg: Config | None = None) -> Precision:
    """bf16 or fp32 for evaluating ``backbone``: ``cfg.bf16`` where forced, else this machine's
    decision (precision.py: the same in every process), with the kernel the backbone runs."""
    device = next(backbone.parameters()).device
    return choose(cfg.bf16 if cfg is not None else "auto",
                  "on" if uses_fused_attention(backbone) else "off", device.type,
                  width=getattr(backbone, "embed_dim", 128))


def set_fused_attention(backbone, fused: bool):
    """Switch every attention layer of ``backbone`` to the fused kernel or explicit softmax
    (the weights are the same; only how softmax(QK^T)V is computed changes)."""
    for m in backbone.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return backbone


@torch.no_grad()
def extract_features(backbone, dataset, batch_size=256, num_workers=0, bf16=None, progress=False,
                     desc="features", pool="cls", normalize=True):
    """Backbone features (L2-normalised by default) and labels for every image of ``dataset``;
    ``bf16=None`` autocasts to bf16 only where this machine computes it natively (precision.py)."""
    backbone.eval()
    device = next(backbone.parameters()).device
    if bf16 is None:
        bf16 = evaluation_precision(backbone).bf16
    rank, world = _world()
    shard = dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(shard, batch_size, num_workers=num_workers)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress or rank > 0, leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f = embed(backbone, x.to(device), pool).float()
        feats.append((F.normalize(f, dim=-1) if normalize else f).cpu())
        labels.append(torch.as_tensor(y))
    return _gather_in_order(torch.cat(feats), len(dataset)), _gather_in_order(torch.cat(labels), len(dataset))


@torch.no_grad()
def knn_classify(train_feats, train_labels, test_feats, k=20, temperature=0.07, num_classes=None,
                 chunk=1024):
    """Weighted k-NN: each of the k most cosine-similar training images votes exp(sim / T).

    Works for any number of test images (even one) and caps k at the training-set size.
    Returns the predicted label of every test image.
    """
    if len(train_feats) == 0:
        raise ValueError("k-NN needs at least one training feature")
    if k < 1:
        raise ValueError(f"k-NN needs k >= 1 neighbours, got k={k}")
    if not temperature > 0:
        raise ValueError(f"the k-NN vote temperature must be > 0, got {temperature}")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_feats))
    preds = []
    for start in range(0, len(test_feats), chunk):
        sim = test_feats[start:start + chunk] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def eval_splits(cfg: Config, data=None, transform=None):
    """The (train, test) datasets of ``data`` (default ``cfg.data``) at ``cfg.image_size``: the
    test split always with the evaluation transform, the training split with ``transform``."""
    data = data or cfg.data
    tf = transform or eval_transform(cfg.image_size)
    return (build_dataset(data, train=True, transform=tf, image_size=cfg.image_size),
            build_dataset(data, train=False, transform=eval_transform(cfg.image_size),
                          image_size=cfg.image_size))


def knn_accuracy(backbone, cfg: Config, data=None, k=20, temperature=0.07, progress=False,
                 max_train=None):
    """k-NN top-1 (0 to 1) of ``backbone`` on the train/test splits of ``data`` (default cfg.data)."""
    train_set, test_set = eval_splits(cfg, data)
    if max_train is not None and len(train_set) > max_train:
        g = torch.Generator().manual_seed(0)
        train_set = torch.utils.data.Subset(train_set, torch.randperm(len(train_set), generator=g)[:max_train].tolist())
    bf16 = evaluation_precision(backbone, cfg).bf16
    ftr, ltr = extract_features(backbone, train_set, progress=progress, desc="train features", bf16=bf16)
    fte, lte = extract_features(backbone, test_set, progress=progress, desc="test features", bf16=bf16)
    preds = knn_classify(ftr, ltr, fte, k, temperature)
    return float((preds == lte).float().mean())


def linear_accuracy(backbone, cfg: Config, data=None, epochs=100, lr=0.1, progress=False) -> float:
    """Linear-probe top-1 (0 to 1): frozen backbone, CLS + mean patch token, cached features."""
    train_set, test_set = eval_splits(cfg, data)
    bf16 = evaluation_precision(backbone, cfg).bf16
    ftr, ltr = extract_features(backbone, train_set, progress=progress, desc="train features",
                                pool="cls+avg", normalize=False, bf16=bf16)
    fte, lte = extract_features(backbone, test_set, progress=progress, desc="test features",
                                pool="cls+avg", normalize=False, bf16=bf16)
    return linear_probe(ftr, ltr, fte, lte, epochs=epochs, lr=lr)


def knn_and_linear_accuracy(backbone, cfg: Config, data=None, epochs=100, lr=0.1,
                            progress=False) -> dict:
    """Both protocols from one pass over the data: ``knn_top1`` on the L2-normalised CLS token
    and ``linear_top1`` on CLS + mean patch token (the CLS token is the first half)."""
    train_set, test_set = eval_splits(cfg, data)
    feats, bf16 = {}, evaluation_precision(backbone, cfg).bf16
    for split, dataset in (("train", train_set), ("test", test_set)):
        feats[split] = extract_features(backbone, dataset, progress=progress, pool="cls+avg",
                                        normalize=False, desc=f"{split} features", bf16=bf16)
    (ftr, ltr), (fte, lte) = feats["train"], feats["test"]
    dim = backbone.embed_dim if hasattr(backbone, "forward_features") else ftr.shape[1]
    preds = knn_classify(F.normalize(ftr[:, :dim], dim=-1), ltr, F.normalize(fte[:, :dim], dim=-1))
    return {"knn_top1": float((preds == lte).float().mean()),
            "linear_top1": linear_probe(ftr, ltr, fte, lte, epochs=epochs, lr=lr)}


# what may change when a trained network is evaluated: how it computes and at which size it
# sees the images; everything else was fixed when it was trained
EVALUATION_KEYS = ("bf16", "fused_attention", "image_size", "threads", "num_workers")


def for_evaluation(cfg: Config, sets=()) -> Config:
    """The config to evaluate a trained network with: its training config, with the machine's
    own precision (``auto``, not the training run's) and the evaluation keys given in ``sets``
    applied. Any other key is refused: it would be silently ignored otherwise."""
    given = parse_sets(sets, cfg.name if cfg.name in PRESETS else "cpu-demo")
    fixed = sorted(set(given) - set(EVALUATION_KEYS))
    if fixed:
        raise ValueError(f"--set {', '.join(fixed)}: fixed when the checkpoint was trained; with "
                         f"--checkpoint only {', '.join(EVALUATION_KEYS)} can be set")
    values = {"bf16": "auto", "fused_attention": "auto", **given}
    return dataclasses.replace(cfg, **values).validate()


def use_fused_attention(cfg) -> bool:
    """``auto``: the attention kernel measured faster on this machine (fused on GPUs; see
    :mod:`dino_lite.precision`); ``on`` / ``off`` force it."""
    return for_config(cfg).fused_attention


def build_eval_backbone(cfg):
    """The backbone alone, shaped by ``cfg``, for evaluation and attention maps."""
    return backbone_for(cfg, use_fused_attention(cfg), drop_path=0.0)


def random_init_backbone(cfg: Config, seed: int | None = None):
    """A randomly initialised backbone of the same preset: the baseline every number is read against."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    return build_eval_backbone(cfg).eval()


def linear_probe(train_feats, train_labels, test_feats, test_labels, epochs=100, lr=0.1,
                 weight_decay=0.0, batch_size=256, seed=0) -> float:
    """Top-1 (0 to 1) of a linear classifier trained on frozen features (the paper's linear eval).

    The features are computed once and cached, so the 100 epochs of SGD (momentum 0.9, cosine
    learning rate, as in the reference) take seconds on a CPU.
    """
    if epochs < 1:
        raise ValueError(f"the linear probe needs epochs >= 1, got {epochs}")
    g = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6       # standardise: one lr fits all
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    clf = torch.nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(xtr) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(batch_size):
            loss = F.cross_entropy(clf(xtr[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return float((clf(xte).argmax(1) == test_labels).float().mean())

"""Frozen-feature evaluation: weighted k-NN on L2-normalised CLS features (the paper's protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config
from .data import build_dataset, eval_transform
from .models import build_eval_backbone


@torch.no_grad()
def extract_features(backbone, dataset, batch_size=256, num_workers=0, bf16=True, progress=False,
                     desc="features"):
    """L2-normalised backbone features and labels for every image of ``dataset``."""
    backbone.eval()
    device = next(backbone.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size, num_workers=num_workers)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f = backbone(x.to(device))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_classify(train_feats, train_labels, test_feats, k=20, temperature=0.07, num_classes=None,
                 chunk=1024):
    """Weighted k-NN: each of the k most cosine-similar training images votes exp(sim / T).

    Works for any number of test images (even one) and caps k at the training-set size.
    Returns the predicted label of every test image.
    """
    if len(train_feats) == 0:
        raise ValueError("k-NN needs at least one training feature")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_feats))
    preds = []
    for start in range(0, len(test_feats), chunk):
        sim = test_feats[start:start + chunk] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(backbone, cfg: Config, data=None, k=20, temperature=0.07, progress=False,
                 max_train=None):
    """k-NN top-1 (0 to 1) of ``backbone`` on the train/test splits of ``data`` (default cfg.data)."""
    data = data or cfg.data
    tf = eval_transform(cfg.image_size)
    train_set = build_dataset(data, train=True, transform=tf, image_size=cfg.image_size)
    test_set = build_dataset(data, train=False, transform=tf, image_size=cfg.image_size)
    if max_train is not None and len(train_set) > max_train:
        g = torch.Generator().manual_seed(0)
        train_set = torch.utils.data.Subset(train_set, torch.randperm(len(train_set), generator=g)[:max_train].tolist())
    ftr, ltr = extract_features(backbone, train_set, progress=progress, desc="train features")
    fte, lte = extract_features(backbone, test_set, progress=progress, desc="test features")
    preds = knn_classify(ftr, ltr, fte, k, temperature)
    return float((preds == lte).float().mean())


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

"""Shared fixtures: a tiny image-folder dataset rendered from the embedded shapes generator."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """train/ (96 images) and val/ (12 images) of 3 shape classes at 32 px, plus masks/."""
    from dino_lite.shapes import CLASSES, render
    root = tmp_path_factory.mktemp("tiny")
    counts = {"train": 0, "val": 0}
    for split, n in (("train", 96), ("val", 12)):
        i = 0
        while counts[split] < n:
            img, label, mask = render(0, "train" if split == "train" else "test", i, 32)
            i += 1
            if label > 2:
                continue
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{split}{i}.png")
            if split == "val":
                (root / "masks").mkdir(exist_ok=True)
                (root / "images").mkdir(exist_ok=True)
                Image.fromarray(img).save(root / "images" / f"{split}{i}.png")
                Image.fromarray(mask.astype("uint8") * 255).save(root / "masks" / f"{split}{i}.png")
            counts[split] += 1
    return root


def tiny_config(data, **overrides):
    """A configuration small enough for a unit test to train in seconds."""
    from dino_lite.config import make_config
    values = dict(data=str(data), image_size=32, global_size=32, local_size=16, n_local=2,
                  arch="vit_mini", patch_size=8, depth=2, out_dim=64, head_hidden=64,
                  head_bottleneck=32, batch_size=16, epochs=2, minutes=None, num_workers=0,
                  warmup_epochs=0.5)
    values.update(overrides)
    return make_config("cpu-demo", values)

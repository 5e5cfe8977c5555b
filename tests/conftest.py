"""Shared fixtures and helpers: a tiny image-folder dataset rendered from the embedded shapes
generator, tiny configurations and models, and torchrun."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("MPLBACKEND", "Agg")
# the per-machine timings that pick the attention kernel (dino_lite.precision) are stored in a
# folder of the test session's own, not the user's cache
os.environ.setdefault("DINO_LITE_CACHE", tempfile.mkdtemp(prefix="dino_lite_cache_"))
# a fixed thread count, also in the trainings tests start as subprocesses: adaptive threads
# (dino_lite.threads) would make runs that tests compare bit for bit depend on the machine's load
os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]                  # the checkout
SHARED_DATA = ROOT.parent / "shared" / "data"


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


def is_share_of(value, n):
    """Whether ``value`` is k / n for a whole k in [0, n]: a top-1 score over ``n`` images
    (the tiny data set's validation split has 12)."""
    return 0 <= value <= 1 and abs(value * n - round(value * n)) < 1e-6


def torchrun(args, timeout=300):
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (a script and its arguments, or ``-m
    MODULE ...``) with one thread per process and this checkout importable."""
    exe = Path(sys.executable).with_name("torchrun")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run([str(exe), "--standalone", "--nproc_per_node=2", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# `--set` values that make a masked-image-modelling run (BEiT, SplitMask) tiny: fp32, patch stem
TINY_MIM = ["image_size=32", "global_size=32", "local_size=16", "depth=2", "batch_size=16",
            "num_workers=0", "vocab_size=64", "stem=patch", "bf16=false", "warmup_epochs=0.5"]


def mim_train_args(method, data, out, steps, *sets):
    """The command line (``main``'s argv) of a tiny ``train --method METHOD`` run."""
    args = ["train", "--method", method, "--preset", "cpu-demo", "--data", str(data),
            "--max-steps", str(steps), "--out", str(out)]
    return args + [a for s in TINY_MIM + list(sets) for a in ("--set", s)]


def tiny_mim_model(kind, split="block", vocab=32):
    """A seeded 2-block BEiT or SplitMask on 32 px images (a 4 x 4 patch grid)."""
    from dino_lite.methods.beit import BEiT
    from dino_lite.models import build_backbone
    from dino_lite.methods.splitmask import SplitMask
    from dino_lite.tokenizers import Tokenizer
    torch.manual_seed(0)
    backbone = build_backbone("vit_mini", patch_size=8, img_size=32, depth=2, drop_path=0.0)
    tok = Tokenizer(vocab, 8).fit(torch.Generator().manual_seed(0))
    if kind == "beit":
        return BEiT(backbone, tok, (4, 4), 0.4)
    return SplitMask(backbone, tok, (4, 4), split, 2, 0.2)


def random_init(preset, sets=()):
    """``(backbone, cfg)`` as the evaluation commands build them for ``--preset PRESET
    --random-init [--set ...]``: the preset's precision, the seeded random initialisation."""
    from dino_lite.config import make_config
    from dino_lite.evaluate import random_init_backbone
    from dino_lite.precision import for_config
    cfg = make_config(preset, sets=list(sets))
    cfg = cfg.for_precision(for_config(cfg, "cpu").bf16, "cpu")
    return random_init_backbone(cfg), cfg


def cli_error(capsys, argv):
    """Run the command line in-process; returns its `error:` message (exit code 2 asserted)."""
    from dino_lite.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2, e.value.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def train_resume_and_knn(method, data, out, capsys, *sets):
    """A tiny ``train --method METHOD`` run of 4 steps into ``out/a``, the same run interrupted
    after 2 steps and resumed into ``out/b`` (asserted to log the same losses), and ``knn`` on
    the first run's checkpoint (asserted to be a score over the 12 test images). Returns the
    first run's checkpoint path and its log."""
    import json
    import math
    import dino_lite.train as tr
    from dino_lite.cli import main
    from dino_lite.config import make_config
    main(mim_train_args(method, data, out / "a", 4, *sets))
    log = tr.read_log(out / "a")
    assert [r["step"] for r in log] == [0, 1, 2, 3] and all(math.isfinite(r["loss"]) for r in log)
    cfg = make_config("cpu-demo", {"method": method, "data": str(data), "max_steps": 4,
                                    "minutes": None}, [*TINY_MIM, *sets])

    def stop(rec):
        if rec["step"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, out / "b", progress=False, on_step=stop)
    tr.train(cfg, out / "b", resume=True, progress=False)
    assert [r["loss"] for r in tr.read_log(out / "b")] == [r["loss"] for r in log]
    capsys.readouterr()
    main(["knn", "--checkpoint", str(out / "a" / tr.CHECKPOINT), "--json"])
    assert is_share_of(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn_top1"], 12)
    return out / "a" / tr.CHECKPOINT, log

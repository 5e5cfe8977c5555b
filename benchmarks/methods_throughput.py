"""Training images/s of DINO, BEiT and SplitMask on the same backbone, side by side in one run.

Each method trains on the same preset (backbone, crop size, global batch) with its own objective:
DINO on 2 global + the preset's local crops, BEiT and SplitMask on one global crop per image.
Every step is a full training step (augmentation, forward, backward, AdamW) on a fixed batch of
random uint8 crops, so only compute is timed. For the masked models it also times the encoder
alone (forward + backward): BEiT's one pass over all patches (mask tokens included) against
SplitMask's two passes over half of them each, which is what SplitMask's split costs or saves.

    python benchmarks/methods_throughput.py [--preset cpu-demo] [--set key=value ...] [--steps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dino_lite.config import make_config
from dino_lite.models import vit_tokens, vit_visible_tokens
from dino_lite.train import DINOTrainer

METHODS = ("dino", "beit", "splitmask")


def _views(cfg):
    b = cfg.batch_size
    g = torch.Generator().manual_seed(0)
    crops = [(cfg.global_size, 2)] + ([(cfg.local_size, cfg.n_local)] if cfg.n_local else [])
    return [torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g)
            for s, n in crops for _ in range(n)]


def _mean_seconds(fn, steps):
    fn(0)                                          # warm-up
    start = time.perf_counter()
    for i in range(steps):
        fn(i + 1)
    return (time.perf_counter() - start) / steps


def measure(method, preset, sets, steps, out="/tmp/dino_lite_methods_benchmark"):
    cfg = make_config(preset, {"method": method, "data": "fake", "minutes": None, "max_steps": 10 ** 6},
                      sets)
    t = DINOTrainer(cfg, out, progress=False)
    views = _views(cfg)
    step = _mean_seconds(lambda i: t.train_step(views, i, t.student, t.teacher, t.loss_fn, t.optimizer),
                         steps)
    row = {"method": method, "precision": t.precision.name, "batch": cfg.batch_size,
           "crops": len(views) if method == "dino" else 1, "ms_per_step": 1000 * step,
           "images_per_s": cfg.batch_size / step}
    if method != "dino":                          # the encoder's share: full sequence vs two halves
        model, images = t.student, torch.randn(cfg.batch_size, 3, cfg.global_size, cfg.global_size)
        g = torch.Generator().manual_seed(0)
        masks = model.draw_masks(g, cfg.batch_size)

        def encoder(_):
            with t.autocast():
                if method == "beit":
                    out = vit_tokens(model.backbone, images, masks[0], model.mask_token).float().sum()
                else:
                    out = sum(vit_visible_tokens(model.backbone, images,
                                                 m.nonzero()[:, 1].view(len(m), -1)).float().sum()
                              for m in masks)
            out.backward()
        row["encoder_ms"] = 1000 * _mean_seconds(encoder, steps)
    return row, t.precision


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}")
    rows = []
    for method in args.methods.split(","):
        row, precision = measure(method, args.preset, args.set, args.steps)
        print(f"{method}: {precision}")
        rows.append(row)
    print(f"\n| method | precision | crops/image | ms/step | images/s | encoder fwd+bwd ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        enc = f"{r['encoder_ms']:.0f}" if "encoder_ms" in r else "-"
        print(f"| {r['method']} | {r['precision']} | {r['crops']} | {r['ms_per_step']:.0f} | "
              f"{r['images_per_s']:.1f} | {enc} |")
    by = {r["method"]: r for r in rows}
    if "beit" in by and "splitmask" in by:
        print(f"\nSplitMask / BEiT: step time x{by['splitmask']['ms_per_step'] / by['beit']['ms_per_step']:.2f}, "
              f"encoder time x{by['splitmask']['encoder_ms'] / by['beit']['encoder_ms']:.2f} "
              "(two half-token passes against one full pass)")
    if args.json:
        print(json.dumps({"preset": args.preset, "sets": args.set, "rows": rows}))


if __name__ == "__main__":
    main()

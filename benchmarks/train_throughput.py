"""Training throughput of a preset on this machine: images/s and achieved FLOP/s per variant.

One run measures every variant on the same batch, so the printed ratios compare like with like:

* bf16 autocast vs fp32;
* timm's explicit softmax attention vs the fused kernel (scaled_dot_product_attention);
* the data path (multi-crop + batched photometric augmentation) on its own.

It also times a large matmul in fp32 and bf16, the machine's practical peak, and reports the
training step's FLOPs (counted by ``torch.utils.flop_counter``) as a share of that peak.

    python benchmarks/train_throughput.py [--preset cpu-demo] [--set key=value ...] [--steps 5] [--json]

Without ``--set`` it measures the issue's reference configuration (REFERENCE below) on the
``cpu-demo`` preset's data path; the crops are random uint8 tensors, so only compute is timed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dino_lite.config import make_config
from dino_lite.train import DINOTrainer

# ViT-tiny (192 wide, 12 blocks, 3 heads), 64 px global / 32 px local crops at patch 8,
# 2 global + 6 local crops, batch 32, head 2048 -> 256 -> K = 4096.
REFERENCE = ["arch=vit_tiny", "depth=12", "patch_size=8", "stem=patch", "head_bn=false",
             "global_size=64", "local_size=32", "image_size=64", "n_local=6", "batch_size=32",
             "head_hidden=2048", "head_bottleneck=256", "out_dim=4096"]


def matmul_peak(dtype, n=2048, repeats=5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_time(trainer, views, steps) -> float:
    """Mean seconds per training step on a fixed batch (after one warm-up step)."""
    t = trainer
    t.train_step(views, 0, t.student, t.teacher, t.loss_fn, t.optimizer)
    start = time.perf_counter()
    for i in range(steps):
        t.train_step(views, i + 1, t.student, t.teacher, t.loss_fn, t.optimizer)
    return (time.perf_counter() - start) / steps


def step_flops(trainer, views) -> int:
    """FLOPs of one full training step (forward, backward, loss), as counted by PyTorch."""
    t = trainer
    with FlopCounterMode(display=False) as counter:
        t.train_step(views, 0, t.student, t.teacher, t.loss_fn, t.optimizer)
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides (default: the reference configuration)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sets = args.set or REFERENCE
    results = {"preset": args.preset, "overrides": sets, "threads": torch.get_num_threads(),
               "matmul_gflops": {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}}
    variants = {"bf16 + explicit attention (default)": ["bf16=true", "fused_attention=off"],
                "bf16 + fused attention": ["bf16=true", "fused_attention=on"],
                "fp32 + explicit attention": ["bf16=false", "fused_attention=off"],
                "fp32 + fused attention": ["bf16=false", "fused_attention=on"]}
    fixed = dict(minutes=None, max_steps=1000, num_workers=0)
    base = make_config(args.preset, fixed, sets)
    trainer = DINOTrainer(base, "/tmp/dino_lite_benchmark", progress=False)
    batch = base.batch_size

    start = time.perf_counter()
    loader = iter(trainer.loader)
    for _ in range(3):
        next(loader)
    results["data_images_per_s"] = 3 * batch / (time.perf_counter() - start)

    g = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (batch, 3, base.global_size, base.global_size), dtype=torch.uint8, generator=g)
             for _ in range(2)]
    views += [torch.randint(0, 256, (batch, 3, base.local_size, base.local_size), dtype=torch.uint8, generator=g)
              for _ in range(base.n_local)]
    results["variants"] = {}
    for name, extra in variants.items():
        cfg = make_config(args.preset, fixed, sets + extra)
        t = DINOTrainer(cfg, "/tmp/dino_lite_benchmark", progress=False)
        seconds = step_time(t, views, args.steps)
        flops = step_flops(t, views)
        peak = results["matmul_gflops"]["bf16" if cfg.bf16 else "fp32"]
        results["variants"][name] = {"images_per_s": batch / seconds, "ms_per_step": seconds * 1000,
                                     "gflop_per_image": flops / batch / 1e9,
                                     "share_of_bf16_peak": flops / seconds / 1e9 / results["matmul_gflops"]["bf16"],
                                     "share_of_own_dtype_peak": flops / seconds / 1e9 / peak}

    default = results["variants"]["bf16 + explicit attention (default)"]["images_per_s"]
    print(f"preset {args.preset} + {' '.join(sets)}: batch {batch}, {torch.get_num_threads()} threads")
    print(f"matmul peak: fp32 {results['matmul_gflops']['fp32']:.0f} GFLOP/s, "
          f"bf16 {results['matmul_gflops']['bf16']:.0f} GFLOP/s")
    print(f"data path alone: {results['data_images_per_s']:.0f} images/s")
    for name, r in results["variants"].items():
        print(f"{name:38s} {r['images_per_s']:7.1f} images/s  {r['ms_per_step']:6.0f} ms/step  "
              f"{r['gflop_per_image']:5.2f} GFLOP/image  {r['share_of_bf16_peak']:6.1%} of bf16 peak  "
              f"default / this = {default / r['images_per_s']:.2f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Training throughput of a preset on this machine: images/s and achieved FLOP/s per variant.

One run measures every variant on the same batch, so the printed ratios compare like with like:

* bf16 autocast vs fp32 (a dtype this CPU only emulates is skipped, with a line saying so);
* timm's explicit softmax attention vs the fused kernel (scaled_dot_product_attention);
* the data path (multi-crop + batched photometric augmentation) on its own.

It also times a large matmul in fp32 and bf16, the machine's practical peaks, and reports the
training step's FLOPs (counted by ``torch.utils.flop_counter``) as a share of its own dtype's
peak, with the CPU's name and capability and what ``bf16=auto`` chooses on it.

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
from dino_lite.precision import for_config
from dino_lite.train import DINOTrainer

# ViT-tiny (192 wide, 12 blocks, 3 heads), 64 px global / 32 px local crops at patch 8,
# 2 global + 6 local crops, batch 32, head 2048 -> 256 -> K = 4096.
REFERENCE = ["arch=vit_tiny", "depth=12", "patch_size=8", "stem=patch", "head_bn=false",
             "global_size=64", "local_size=32", "image_size=64", "n_local=6", "batch_size=32",
             "head_hidden=2048", "head_bottleneck=256", "out_dim=4096"]


def matmul_peak(dtype, n=2048, repeats=5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (best of ``repeats``). A 512 x 512 probe first:
    where the dtype is emulated (bf16 without AVX-512 BF16: ~1 GFLOP/s) the big one would take
    minutes, and the probe's figure is the answer."""
    small = torch.randn(512, 512, dtype=dtype)
    probe = 2 * 512 ** 3 / min(_timed(lambda: small @ small) for _ in range(2)) / 1e9
    if probe < 10:
        return probe
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def cpu_name() -> str:
    """The processor's model name (Linux), for the record beside every number."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


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
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results = {"preset": args.preset, "overrides": sets, "threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name(),
               "matmul_gflops": peaks}
    fixed = dict(minutes=None, max_steps=1000, num_workers=0)
    base = make_config(args.preset, fixed, sets + ["fp32_variant=none"])
    chosen = for_config(base)
    results["auto"] = chosen.to_dict()
    variants = {f"{dtype} + {attn} attention": [f"bf16={dtype == 'bf16'}",
                                                f"fused_attention={'on' if attn == 'fused' else 'off'}"]
                for dtype in ("bf16", "fp32") for attn in ("explicit", "fused")}
    auto_name = f"{chosen.name} + {'fused' if chosen.fused_attention else 'explicit'} attention"
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
    results["variants"], skipped = {}, []
    for name, extra in variants.items():
        dtype = name.split()[0]
        if peaks[dtype] < 0.1 * max(peaks.values()):      # emulated: minutes per step
            skipped.append(f"{name}: skipped, {dtype} matmuls run at {peaks[dtype]:.1f} GFLOP/s here "
                           f"(emulated; a step would take minutes)")
            continue
        cfg = make_config(args.preset, fixed, sets + extra + ["fp32_variant=none"])
        t = DINOTrainer(cfg, "/tmp/dino_lite_benchmark", progress=False)
        seconds = step_time(t, views, args.steps)
        flops = step_flops(t, views)
        results["variants"][name] = {"images_per_s": batch / seconds, "ms_per_step": seconds * 1000,
                                     "gflop_per_image": flops / batch / 1e9,
                                     "share_of_own_dtype_peak": flops / seconds / 1e9 / peaks[dtype]}

    auto = results["variants"][auto_name]
    print(f"CPU: {results['cpu']}, capability {results['cpu_capability']}, {torch.get_num_threads()} threads")
    print(f"matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    print(f"{chosen}")
    print(f"preset {args.preset} + {' '.join(sets)}: batch {batch}")
    print(f"data path alone: {results['data_images_per_s']:.0f} images/s")
    print(f"chosen ({auto_name}): {auto['images_per_s']:.1f} images/s, "
          f"{auto['share_of_own_dtype_peak']:.1%} of its own matmul peak")
    for name, r in results["variants"].items():
        print(f"{name:28s} {r['images_per_s']:7.1f} images/s  {r['ms_per_step']:6.0f} ms/step  "
              f"{r['gflop_per_image']:5.2f} GFLOP/image  {r['share_of_own_dtype_peak']:6.1%} of its dtype's peak  "
              f"chosen / this = {auto['images_per_s'] / r['images_per_s']:.2f}")
    for line in skipped:
        print(line)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

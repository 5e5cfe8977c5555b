"""Throughput of the real training loop: images/s, ms/step and peak memory of ``train()``.

Unlike ``train_throughput.py`` (compute only, on fixed random crops), this runs the trainer end
to end, data loader included, for ``--steps`` steps on any preset and data spec, and times the
steps after ``--warmup``. It is the GPU measurement of the scale-out issue:

    python benchmarks/train_steps.py --preset imagenet-vits16 --data fake --steps 300 \\
        --set batch_size=128 --set num_workers=14 [--set compile=true] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from dino_lite.config import make_config
from dino_lite.train import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--data", default=None, help="data spec (default: the preset's)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    over = {"max_steps": args.steps, "minutes": None, **({"data": args.data} if args.data else {})}
    cfg = make_config(args.preset, over, args.set)
    cuda = torch.cuda.is_available()
    stamps = []

    def on_step(rec):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, progress=False, on_step=on_step)
    timed = stamps[args.warmup:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    result = {"preset": args.preset, "data": cfg.data, "sets": args.set, "steps": args.steps,
              "batch": cfg.batch_size, "crops": f"2x{cfg.global_size} + {cfg.n_local}x{cfg.local_size}",
              "ms_per_step": round(per_step * 1000, 1),
              "images_per_s": round(cfg.batch_size / per_step, 1),
              "device": torch.cuda.get_device_name() if cuda else "cpu",
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    print(f"{result['images_per_s']} images/s, {result['ms_per_step']} ms/step, peak memory "
          f"{result['peak_memory_gib']} GiB on {result['device']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
